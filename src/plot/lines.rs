//! Line charts: per-epoch series on shared axes, with a legend.

use super::*;

/// One line of a line chart: per-epoch values, multiplied by `scale` when drawn.
pub(super) struct Series<'a> {
    pub(super) label: String,
    pub(super) values: &'a [f64],
    pub(super) scale: f64,
    pub(super) color: RGBColor,
}

impl<'a> Series<'a> {
    /// A series labelled `label`, or "`label` (no data)" when no value is finite.
    pub(super) fn new(label: &str, values: &'a [f64], scale: f64, color: RGBColor) -> Self {
        let label = if values.iter().any(|v| (v * scale).is_finite()) {
            label.to_string()
        } else {
            format!("{label} (no data)")
        };
        Series {
            label,
            values,
            scale,
            color,
        }
    }

    /// The finite points `(epoch, value * scale)`, split into runs of consecutive epochs.
    pub(super) fn segments(&self) -> Vec<Vec<(f64, f64)>> {
        let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut current = Vec::new();
        for (i, v) in self.values.iter().enumerate() {
            let y = v * self.scale;
            if y.is_finite() {
                current.push(((i + 1) as f64, y));
            } else if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
        out
    }
}

/// An axis range that holds all `values` with a margin, is never empty, and stays within
/// `clamp` when the data does.
pub(super) fn value_range(
    values: impl Iterator<Item = f64>,
    clamp: Option<(f64, f64)>,
) -> (f64, f64) {
    let fallback = clamp.unwrap_or((0.0, 1.0));
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return fallback;
    }
    let span = hi - lo;
    let (mut a, mut b) = if span.is_finite() && span > 1e-9 * lo.abs().max(hi.abs()).max(1.0) {
        (lo - 0.07 * span, hi + 0.07 * span)
    } else {
        let pad = (lo.abs().max(hi.abs()) * 0.05).max(0.5);
        (lo - pad, hi + pad)
    };
    if let Some((min, max)) = clamp
        && lo >= min
        && hi <= max
    {
        a = a.max(min);
        b = b.min(max);
    }
    if a.is_finite() && b.is_finite() && b - a > 0.0 && (b - a).is_finite() {
        (a, b)
    } else {
        fallback
    }
}

/// A corner of the plotting area, for the legend.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Corner {
    UpperRight,
    LowerRight,
    UpperLeft,
    LowerLeft,
}

/// A line chart in `area`: x = epoch, one line per series, markers on short runs, and a
/// legend in whichever corner covers the fewest data points (`preferred` on a tie).
pub(super) fn line_panel(
    area: &Area,
    caption: &str,
    y_desc: &str,
    series: &[Series],
    clamp: Option<(f64, f64)>,
    preferred: Corner,
) -> Result<()> {
    let mut segments: Vec<Vec<Vec<(f64, f64)>>> = series.iter().map(Series::segments).collect();
    let epochs = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let last = epochs.max(1) as f64;
    let x_pad = ((last - 1.0) * 0.02).max(if epochs <= 1 { 0.5 } else { 0.0 });
    let x_range = (1.0 - x_pad)..(last + x_pad);
    let (y_lo, y_hi) = value_range(segments.iter().flatten().flatten().map(|p| p.1), clamp);
    let has_data = segments.iter().any(|s| !s.is_empty());
    // Only values too extreme for an axis (a span past f64::MAX) lie outside the range;
    // clip them, as plotters' coordinate maths overflows on points far outside it.
    for p in segments.iter_mut().flatten().flatten() {
        p.1 = p.1.clamp(y_lo, y_hi);
    }

    let mut builder = ChartBuilder::on(area);
    builder
        .margin(14)
        .margin_top(8)
        .x_label_area_size(46)
        .y_label_area_size(66);
    if !caption.is_empty() {
        builder.caption(caption, font(18.0));
    }
    let mut chart = builder.build_cartesian_2d(x_range, y_lo..y_hi)?;
    // Epoch ticks: whole epochs within 1..=last only.
    let x_fmt = |x: &f64| {
        let whole = (x - x.round()).abs() < 1e-9 && *x >= 1.0 && *x <= last;
        if whole {
            format!("{}", x.round() as i64)
        } else {
            String::new()
        }
    };
    let y_fmt = |y: &f64| tick_label(*y);
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(epochs.clamp(2, 12))
        .y_labels(8)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(font(13.0))
        .axis_desc_style(font(15.0))
        .max_light_lines(1)
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(225, 225, 225))
        .axis_style(AXIS)
        .draw()?;

    let markers_everywhere = epochs <= 40;
    for (s, segs) in series.iter().zip(&segments) {
        let line = s.color.stroke_width(2);
        for seg in segs {
            chart.draw_series(LineSeries::new(seg.iter().copied(), line))?;
        }
        for seg in segs
            .iter()
            .filter(|seg| markers_everywhere || seg.len() == 1)
        {
            let radius = if seg.len() == 1 { 4 } else { 3 };
            chart.draw_series(
                seg.iter()
                    .map(|&p| Circle::new(p, radius, s.color.filled())),
            )?;
        }
    }

    let plot = chart.plotting_area().strip_coord_spec();
    let (base_x, base_y) = chart.plotting_area().get_base_pixel();
    // Data points in plot-relative pixels, with lines densified, to place the legend.
    let steps = if epochs <= 200 { 8 } else { 1 };
    let mut occupied = Vec::new();
    for seg in segments.iter().flatten() {
        for pair in seg.windows(2) {
            for k in 0..steps {
                let t = f64::from(k) / f64::from(steps);
                let p = (
                    pair[0].0 + t * (pair[1].0 - pair[0].0),
                    pair[0].1 + t * (pair[1].1 - pair[0].1),
                );
                occupied.push(chart.backend_coord(&p));
            }
        }
        occupied.extend(seg.iter().map(|p| chart.backend_coord(p)));
    }
    let occupied: Vec<(i32, i32)> = occupied
        .iter()
        .map(|&(x, y)| (x - base_x, y - base_y))
        .collect();
    // Series without a label (further seeds of a labelled model) share its entry.
    let entries: Vec<(&str, RGBColor)> = series
        .iter()
        .filter(|s| !s.label.is_empty())
        .map(|s| (s.label.as_str(), s.color))
        .collect();
    legend(&plot, &entries, &occupied, preferred)?;

    if !has_data {
        let (w, h) = plot.dim_in_pixel();
        let style = anchored(font(17.0).color(&MUTED), HPos::Center, VPos::Center);
        plot.draw_text("no data", &style, (w as i32 / 2, h as i32 / 2))?;
    }
    Ok(())
}

/// Draws a legend box (line sample and label per entry) in a corner of `plot`.
pub(super) fn legend(
    plot: &Area,
    entries: &[(&str, RGBColor)],
    occupied: &[(i32, i32)],
    preferred: Corner,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let style = font(13.0);
    let (pw, ph) = plot.dim_in_pixel();
    let (pw, ph) = (pw as i32, ph as i32);
    let text_w = entries
        .iter()
        .map(|(label, _)| {
            plot.estimate_text_size(label, &style)
                .map_or(0, |(w, _)| w as i32)
        })
        .max()
        .unwrap_or(0);
    let (pad, sample, row) = (8, 24, 20);
    let (bw, bh) = (
        pad + sample + 8 + text_w + pad,
        pad + row * entries.len() as i32 + pad - 4,
    );
    let margin = 10;
    let origin = |corner: Corner| match corner {
        Corner::UpperRight => (pw - margin - bw, margin),
        Corner::LowerRight => (pw - margin - bw, ph - margin - bh),
        Corner::UpperLeft => (margin, margin),
        Corner::LowerLeft => (margin, ph - margin - bh),
    };
    let covered = |corner: Corner| {
        let (x, y) = origin(corner);
        occupied
            .iter()
            .filter(|&&(px, py)| px >= x - 4 && px <= x + bw + 4 && py >= y - 4 && py <= y + bh + 4)
            .count()
    };
    let mut corners = vec![preferred];
    for c in [
        Corner::UpperRight,
        Corner::LowerRight,
        Corner::UpperLeft,
        Corner::LowerLeft,
    ] {
        if c != preferred {
            corners.push(c);
        }
    }
    let best = corners
        .iter()
        .copied()
        .min_by_key(|&c| covered(c))
        .unwrap_or(preferred);
    let (x, y) = origin(best);

    plot.draw(&Rectangle::new(
        [(x, y), (x + bw, y + bh)],
        WHITE.mix(0.9).filled(),
    ))?;
    plot.draw(&Rectangle::new(
        [(x, y), (x + bw, y + bh)],
        RGBColor(200, 200, 200),
    ))?;
    for (i, (label, color)) in entries.iter().enumerate() {
        let cy = y + pad + row * i as i32 + row / 2 - 2;
        let sx = x + pad;
        plot.draw(&PathElement::new(
            vec![(sx, cy), (sx + sample, cy)],
            color.stroke_width(2),
        ))?;
        plot.draw(&Circle::new((sx + sample / 2, cy), 3, color.filled()))?;
        let text = anchored(style.clone(), HPos::Left, VPos::Center);
        plot.draw_text(label, &text, (sx + sample + 8, cy))?;
    }
    Ok(())
}
