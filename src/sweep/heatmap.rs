//! `heatmap.png` of a sweep: mean validation accuracy over seeds on a temperature × alpha
//! grid, one panel per objective, the best cell outlined. Drawn with [`crate::plot`]'s
//! canvas (embedded font, no system fonts needed).

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use crate::plot::{AXIS, Area, INK, MUTED, anchored, fit, font, heat, render, titled};

/// One grid point of the heatmap.
#[derive(Debug, Clone)]
pub struct Cell {
    pub objective: String,
    /// The y axis; `None` (mse) is one row "-".
    pub temperature: Option<f64>,
    /// The x axis; `None` (lskd, dist) is one column "-".
    pub alpha: Option<f64>,
    /// Mean validation accuracy in [0, 1]; `None` when no seed finished (drawn grey).
    pub value: Option<f64>,
}

/// Width of one panel and the image height, pixels.
const PANEL: (u32, u32) = (480, 490);

/// Sorted distinct values, `None` last.
fn axis(v: impl Iterator<Item = Option<f64>>) -> Vec<Option<f64>> {
    let mut out: Vec<Option<f64>> = Vec::new();
    for x in v {
        if !out
            .iter()
            .any(|y| y.map(f64::to_bits) == x.map(f64::to_bits))
        {
            out.push(x);
        }
    }
    out.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    out
}

fn label(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Writes the heatmap of `cells` to `path`; `best` is the index of the cell to outline,
/// `baseline` the student alone's mean validation accuracy in [0, 1] (in the subtitle).
/// Colours run from the lowest to the highest mean over all panels.
///
/// # Errors
/// Naming the file, when it cannot be drawn or written.
pub fn heatmap_png(
    path: &Path,
    cells: &[Cell],
    best: Option<usize>,
    baseline: Option<f64>,
) -> Result<()> {
    let mut objectives: Vec<&str> = Vec::new();
    for c in cells {
        if !objectives.contains(&c.objective.as_str()) {
            objectives.push(&c.objective);
        }
    }
    let panels = objectives.len().max(1) as u32;
    let size = (PANEL.0 * panels, PANEL.1);
    render(path, size, |root| {
        let title = "Mean validation accuracy (%) over seeds; best cell outlined";
        let body = titled(root, title)?;
        let subtitle = match baseline {
            Some(v) => format!("student alone: {:.2}", v * 100.0),
            None => "no student-alone jobs".to_string(),
        };
        let (sub, body) = body.split_vertically(22);
        let (sw, _) = sub.dim_in_pixel();
        sub.draw_text(
            &subtitle,
            &anchored(font(14.0).color(&MUTED), HPos::Center, VPos::Top),
            (sw as i32 / 2, 0),
        )?;
        if cells.is_empty() {
            let (w, h) = body.dim_in_pixel();
            body.draw_text(
                "no distill jobs",
                &anchored(font(16.0).color(&MUTED), HPos::Center, VPos::Center),
                (w as i32 / 2, h as i32 / 2),
            )?;
            return Ok(());
        }
        let values: Vec<f64> = cells.iter().filter_map(|c| c.value).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let areas = body.split_evenly((1, objectives.len()));
        for (area, obj) in areas.iter().zip(&objectives) {
            let mine: Vec<(usize, &Cell)> = cells
                .iter()
                .enumerate()
                .filter(|(_, c)| c.objective == *obj)
                .collect();
            panel(area, obj, &mine, (lo, hi), best)?;
        }
        Ok(())
    })
}

fn panel(
    area: &Area,
    objective: &str,
    cells: &[(usize, &Cell)],
    (lo, hi): (f64, f64),
    best: Option<usize>,
) -> Result<()> {
    let xs = axis(cells.iter().map(|(_, c)| c.alpha));
    let ys = axis(cells.iter().map(|(_, c)| c.temperature));
    let (nx, ny) = (xs.len(), ys.len());
    let mut chart = ChartBuilder::on(area)
        .caption(objective, font(18.0))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..nx as f64, 0.0..ny as f64)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .x_desc("alpha (weight of the hard-label CE)")
        .y_desc("temperature T")
        .axis_desc_style(font(15.0))
        .axis_style(AXIS)
        .draw()?;
    let (pw, ph) = chart.plotting_area().dim_in_pixel();
    let ch = f64::from(ph) / ny as f64;
    let cw = f64::from(pw) / nx as f64;
    let value_style = font((ch * 0.28).clamp(9.0, 16.0));
    for &(i, c) in cells {
        let x = xs
            .iter()
            .position(|v| v.map(f64::to_bits) == c.alpha.map(f64::to_bits))
            .unwrap_or(0) as f64;
        let y = ys
            .iter()
            .position(|v| v.map(f64::to_bits) == c.temperature.map(f64::to_bits))
            .unwrap_or(0) as f64;
        let share = match c.value {
            Some(v) if hi > lo => (v - lo) / (hi - lo),
            Some(_) => 0.5,
            None => f64::NAN,
        };
        let fill = if share.is_nan() {
            RGBColor(220, 220, 220)
        } else {
            heat(0.1 + 0.8 * share)
        };
        chart.draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], fill.filled())])?;
        let text = c
            .value
            .map_or_else(|| "no run".to_string(), |v| format!("{:.2}", v * 100.0));
        let color: &'static RGBColor = if share > 0.55 { &WHITE } else { &INK };
        let text = fit(area, &text, &value_style, (cw - 4.0).max(1.0) as u32);
        chart.draw_series([Text::new(
            text,
            (x + 0.5, y + 0.5),
            anchored(value_style.clone().color(color), HPos::Center, VPos::Center),
        )])?;
        if best == Some(i) {
            let inset = 0.04;
            chart.draw_series([Rectangle::new(
                [(x + inset, y + inset), (x + 1.0 - inset, y + 1.0 - inset)],
                RGBColor(230, 159, 0).stroke_width(4),
            )])?;
        }
    }
    let (ox, oy) = area.get_base_pixel();
    let tick = font(14.0);
    for (i, v) in xs.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        area.draw_text(
            &label(*v),
            &anchored(tick.clone(), HPos::Center, VPos::Top),
            (px - ox, py - oy + 6),
        )?;
    }
    for (i, v) in ys.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(0.0, i as f64 + 0.5));
        area.draw_text(
            &label(*v),
            &anchored(tick.clone(), HPos::Right, VPos::Center),
            (px - ox - 6, py - oy),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_panels_and_handles_empty() {
        let dir = tempfile_dir();
        let cells = vec![
            Cell {
                objective: "kd".into(),
                temperature: Some(2.0),
                alpha: Some(0.5),
                value: Some(0.8),
            },
            Cell {
                objective: "kd".into(),
                temperature: Some(4.0),
                alpha: Some(0.5),
                value: None,
            },
            Cell {
                objective: "dist".into(),
                temperature: Some(1.0),
                alpha: None,
                value: Some(0.82),
            },
        ];
        let p = dir.join("h.png");
        heatmap_png(&p, &cells, Some(2), Some(0.81)).unwrap();
        let img = crate::plot::test_image::Image::read(&p);
        // Two panels (kd, dist) side by side.
        assert_eq!((img.w, img.h), (2 * PANEL.0, PANEL.1));
        let (kd, dist) = (0..PANEL.0, PANEL.0..2 * PANEL.0);
        // The lowest mean (kd, T 2: 80%) in the lightest shade, the highest (dist: 82%)
        // in the darkest, the cell with no finished run grey; each in its own panel.
        let (low, high, grey) = (heat(0.1), heat(0.9), RGBColor(220, 220, 220));
        let outline = RGBColor(230, 159, 0);
        assert!(img.pixels(low, kd.clone()).len() > 5000);
        assert!(img.pixels(grey, kd.clone()).len() > 5000);
        assert!(img.pixels(high, kd.clone()).is_empty());
        assert!(img.pixels(high, dist.clone()).len() > 5000);
        assert!(img.pixels(low, dist.clone()).is_empty());
        // The best cell (index 2, dist) is outlined, and only it.
        assert!(img.pixels(outline, dist).len() > 500);
        assert!(img.pixels(outline, kd).is_empty());
        let e = dir.join("e.png");
        heatmap_png(&e, &[], None, None).unwrap();
        let img = crate::plot::test_image::Image::read(&e);
        assert_eq!(img.w, PANEL.0);
        assert_eq!(img.count(low) + img.count(high), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kdtrain-heatmap-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
