//! The confusion matrix: true class by predicted class, each cell shaded by its share of
//! its row.

use super::*;

/// Colour of a cell holding `share` (0..=1) of its row: near-white to dark blue.
pub(crate) fn heat(share: f64) -> RGBColor {
    let t = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let lerp = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
    RGBColor(lerp(247, 8), lerp(251, 48), lerp(255, 107))
}

pub(super) fn confusion(
    root: &Area,
    title: &str,
    class_names: &[&str],
    counts: &[Vec<u64>],
) -> Result<()> {
    let n = counts
        .iter()
        .map(Vec::len)
        .chain([counts.len(), class_names.len()])
        .max()
        .unwrap_or(0);
    if n > MAX_CLASSES {
        return Err(anyhow!(
            "{n} classes is more than a confusion chart shows ({MAX_CLASSES})"
        ));
    }
    let cell = |r: usize, c: usize| {
        counts
            .get(r)
            .and_then(|row| row.get(c))
            .copied()
            .unwrap_or(0)
    };
    let total: u128 = counts.iter().flatten().map(|&v| u128::from(v)).sum();
    let correct: u128 = (0..n).map(|i| u128::from(cell(i, i))).sum();

    let body = titled(root, title)?;
    let subtitle = if total > 0 {
        format!(
            "accuracy {:.2} % of {total} examples · shade = share of the true class's row",
            correct as f64 * 100.0 / total as f64
        )
    } else {
        "no examples".to_string()
    };
    let (sub, body) = body.split_vertically(24);
    let (sw, _) = sub.dim_in_pixel();
    let sub_style = anchored(font(14.0).color(&MUTED), HPos::Center, VPos::Top);
    sub.draw_text(&subtitle, &sub_style, (sw as i32 / 2, 0))?;
    if n == 0 {
        return Ok(());
    }

    // Layout: names left of the rows and under the columns, rotated there when they are
    // wider than a column; square cells, centred.
    let label_style = font(14.0);
    let max_label = 150;
    let names: Vec<String> = (0..n)
        .map(|i| {
            let name: String = class_names
                .get(i)
                .map_or_else(|| i.to_string(), |s| s.chars().take(60).collect());
            fit(&body, &name, &label_style, max_label)
        })
        .collect();
    let widest = names
        .iter()
        .map(|s| {
            body.estimate_text_size(s, &label_style)
                .map_or(0, |(w, _)| w)
        })
        .max()
        .unwrap_or(0);
    let text_h = body
        .estimate_text_size("Ag", &label_style)
        .map_or(16, |(_, h)| h);
    let (bw, bh) = body.dim_in_pixel();
    let desc = 26; // room for "true class" / "predicted class"
    let y_area = widest + 10 + desc;
    let margin = 20;
    let avail_w = bw.saturating_sub(y_area + 2 * margin);
    let rotate = widest + 8 > avail_w / n as u32;
    let x_area = if rotate { widest } else { text_h } + 10 + desc;
    let avail_h = bh.saturating_sub(x_area + 2 * margin);
    let side = avail_w.min(avail_h).max(n as u32);
    let extra_w = bw.saturating_sub(y_area + side);
    let extra_h = bh.saturating_sub(x_area + side);

    let mut chart = ChartBuilder::on(&body)
        .margin_left(extra_w / 2)
        .margin_right(extra_w - extra_w / 2)
        .margin_top(extra_h / 2)
        .margin_bottom(extra_h - extra_h / 2)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(0.0..n as f64, 0.0..n as f64)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc("predicted class")
        .y_desc("true class")
        .axis_desc_style(font(15.0))
        .axis_style(AXIS)
        .draw()?;

    // Cells: row r (true class r) is drawn at the top for r = 0.
    let (pw, ph) = chart.plotting_area().dim_in_pixel();
    let (cw, ch) = (f64::from(pw) / n as f64, f64::from(ph) / n as f64);
    let count_style = font((ch * 0.34).clamp(9.0, 15.0));
    let mut cells = Vec::with_capacity(n * n);
    let mut texts = Vec::new();
    for r in 0..n {
        let row_total: u128 = (0..n).map(|c| u128::from(cell(r, c))).sum();
        let y = (n - 1 - r) as f64;
        for c in 0..n {
            let v = cell(r, c);
            let share = if row_total > 0 {
                v as f64 / row_total as f64
            } else {
                0.0
            };
            let (x0, x1) = (c as f64, c as f64 + 1.0);
            cells.push(Rectangle::new(
                [(x0, y), (x1, y + 1.0)],
                heat(share).filled(),
            ));
            let label = v.to_string();
            let fits = body
                .estimate_text_size(&label, &count_style)
                .is_ok_and(|(w, h)| f64::from(w) < cw - 3.0 && f64::from(h) < ch);
            if fits {
                let color: &'static RGBColor = if share > 0.5 { &WHITE } else { &INK };
                let style = anchored(count_style.clone().color(color), HPos::Center, VPos::Center);
                texts.push(Text::new(label, (c as f64 + 0.5, y + 0.5), style));
            }
        }
    }
    chart.draw_series(cells)?;
    chart.draw_series(texts)?;
    if cw >= 4.0 {
        let grid = WHITE.stroke_width(1);
        let nf = n as f64;
        let lines = (1..n).flat_map(|i| {
            let i = i as f64;
            [vec![(i, 0.0), (i, nf)], vec![(0.0, i), (nf, i)]]
        });
        chart.draw_series(lines.map(|pts| PathElement::new(pts, grid)))?;
    }

    // Class names, in root pixel coordinates.
    let (ox, oy) = root.get_base_pixel();
    for (i, name) in names.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        let (px, py) = (px - ox, py - oy + 8);
        let style = if rotate {
            anchored(label_style.clone(), HPos::Right, VPos::Center)
                .transform(FontTransform::Rotate270)
        } else {
            anchored(label_style.clone(), HPos::Center, VPos::Top)
        };
        root.draw_text(name, &style, (px, py))?;
        let (qx, qy) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
        let style = anchored(label_style.clone(), HPos::Right, VPos::Center);
        root.draw_text(name, &style, (qx - ox - 8, qy - oy))?;
    }
    Ok(())
}
