//! The paired-gains chart of a `reproduce`: per comparison, each seed's gain as a dot,
//! the mean as a bar and its 95% interval as a whisker, against a zero line.

use anyhow::Result;
use plotters::prelude::*;

use super::{AXIS, Area, MUTED, PALETTE, font, tick_label, titled, value_range};
use crate::report::Gain;

/// Size in pixels (width, height) of `gains.png`.
pub const GAINS_SIZE: (u32, u32) = (800, 500);

/// Draws the chart of [`super::gains_png`] on `root`.
pub(super) fn gains(root: &Area, gains: &[Gain]) -> Result<()> {
    let body = titled(
        root,
        "Paired gain in test accuracy (points): seeds, mean, 95% interval",
    )?;
    let values = gains.iter().flat_map(|g| {
        let (lo, hi) = g
            .interval_95_points
            .unwrap_or((g.mean_points, g.mean_points));
        g.gains_points.iter().copied().chain([lo, hi, 0.0])
    });
    let (y_lo, y_hi) = value_range(values, None);
    let n = gains.len().max(1);
    let mut chart = ChartBuilder::on(&body)
        .margin(14)
        .x_label_area_size(46)
        .y_label_area_size(66)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), y_lo..y_hi)?;
    let names: Vec<String> = gains
        .iter()
        .map(|g| format!("{} over {}", g.objective, g.baseline))
        .collect();
    let x_fmt = |x: &f64| {
        let i = x.round();
        match (x - i).abs() < 1e-9 && i >= 0.0 {
            true => names.get(i as usize).cloned().unwrap_or_default(),
            false => String::new(),
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&x_fmt)
        .y_desc("gain (points)")
        .y_labels(8)
        .y_label_formatter(&|y: &f64| tick_label(*y))
        .label_style(font(13.0))
        .axis_desc_style(font(15.0))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(246, 246, 246))
        .axis_style(AXIS)
        .draw()?;
    // Zero: no gain.
    chart.draw_series(LineSeries::new(
        [(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
        MUTED.stroke_width(1),
    ))?;
    for (i, g) in gains.iter().enumerate() {
        let x = i as f64;
        let color = PALETTE[i % PALETTE.len()];
        if let Some((lo, hi)) = g.interval_95_points {
            chart.draw_series(LineSeries::new([(x, lo), (x, hi)], color.stroke_width(2)))?;
            for y in [lo, hi] {
                chart.draw_series(LineSeries::new(
                    [(x - 0.06, y), (x + 0.06, y)],
                    color.stroke_width(2),
                ))?;
            }
        }
        chart.draw_series(LineSeries::new(
            [(x - 0.15, g.mean_points), (x + 0.15, g.mean_points)],
            color.stroke_width(4),
        ))?;
        let k = g.gains_points.len().max(1) as f64;
        chart.draw_series(g.gains_points.iter().enumerate().map(|(j, &v)| {
            // Spread the seeds a little sideways so that equal gains stay visible.
            let dx = 0.25 + 0.1 * (j as f64 / k);
            Circle::new((x + dx, v), 4, color.filled())
        }))?;
    }
    Ok(())
}
