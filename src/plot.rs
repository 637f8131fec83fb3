//! PNG charts of training runs: learning curves, a comparison of several runs, and a
//! confusion matrix.
//!
//! Everything is pure Rust: [`plotters`] draws into an in-memory RGB buffer, the [`png`]
//! crate encodes it, and text is rasterised with [`ab_glyph`] from a font compiled into
//! the binary, so the charts come out the same on a machine with no system fonts and no
//! fontconfig.
//!
//! Conventions shared by all charts:
//! - Epochs are 1-based: element `i` of a per-epoch slice is epoch `i + 1`.
//! - Accuracies are fractions in `[0, 1]` (correct / total); the axes show percent.
//! - Non-finite values (NaN, ±inf) are skipped; a line breaks there.
//! - No input makes these functions panic: empty slices give an empty chart saying
//!   "no data", all-equal values get a padded axis. Errors name the file being written.

use std::path::Path;

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

/// DejaVu Sans 2.37 (Debian `fonts-dejavu-core`), subset to Latin-1, Greek and a few
/// punctuation and math signs: 27 KB. Other characters draw as blanks. License: the
/// Bitstream Vera and Arev fonts licenses (DejaVu's changes are public domain), which allow
/// embedding, subsetting and redistribution with their notice: see
/// `assets/DejaVuSans-LICENSE.txt`. Made with fonttools (`apt-get install fonttools`):
///
/// ```text
/// pyftsubset /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf --no-hinting --legacy-kern \
///   --unicodes="U+0020-007E,U+00A0-00FF,U+0391-03A9,U+03B1-03C9,U+2013,U+2014,U+2018,U+2019,U+201C,U+201D,U+2022,U+2026,U+2190-2193,U+2212,U+2248,U+221E,U+2264,U+2265" \
///   --layout-features='' --drop-tables+=MATH,GSUB,GPOS,GDEF,FFTM \
///   --output-file=assets/DejaVuSans-subset.ttf
/// ```
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Size in pixels (width, height) of `curves.png`.
pub const CURVES_SIZE: (u32, u32) = (1000, 450);
/// Size in pixels (width, height) of `comparison.png`.
pub const COMPARISON_SIZE: (u32, u32) = (800, 500);
/// Size in pixels (width, height) of `confusion.png`.
pub const CONFUSION_SIZE: (u32, u32) = (700, 650);

/// The most classes [`confusion_png`] draws.
pub const MAX_CLASSES: usize = 256;

/// Line colours: the Okabe–Ito colour-blind-safe palette.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),   // blue
    RGBColor(213, 94, 0),    // vermillion
    RGBColor(0, 158, 115),   // bluish green
    RGBColor(204, 121, 167), // reddish purple
    RGBColor(230, 159, 0),   // orange
    RGBColor(86, 180, 233),  // sky blue
    RGBColor(110, 110, 110), // grey
    RGBColor(0, 0, 0),       // black
];
pub(crate) const INK: RGBColor = RGBColor(25, 25, 25);
pub(crate) const MUTED: RGBColor = RGBColor(95, 95, 95);
pub(crate) const AXIS: RGBColor = RGBColor(80, 80, 80);

/// One training run's per-epoch history. Epochs are 1-based: element `i` is epoch `i + 1`.
///
/// Losses are the trainer's mean per-example loss over the epoch (unitless; for a
/// distilled student the training loss is the distillation objective). Accuracies are
/// fractions in `[0, 1]`. The slices may have different lengths, and any may be empty
/// (that line is then left out); NaN entries are skipped.
#[derive(Clone, Copy, Debug)]
pub struct Curves<'a> {
    /// Chart title, e.g. the run's name.
    pub title: &'a str,
    /// Mean training loss per epoch.
    pub train_loss: &'a [f64],
    /// Mean validation loss per epoch.
    pub val_loss: &'a [f64],
    /// Training accuracy per epoch, a fraction in `[0, 1]`.
    pub train_acc: &'a [f64],
    /// Validation accuracy per epoch, a fraction in `[0, 1]`.
    pub val_acc: &'a [f64],
}

/// Writes `curves.png` ([`CURVES_SIZE`], 1000 x 450 px): two panels side by side, each
/// with training and validation lines. x axis: epoch (1-based). Left panel, y axis: loss
/// (mean per-example loss, unitless). Right panel, y axis: accuracy in percent (the
/// inputs are fractions in `[0, 1]`).
pub fn curves_png(path: &Path, c: &Curves) -> Result<()> {
    render(path, CURVES_SIZE, |root| {
        let body = titled(root, c.title)?;
        let (left, right) = body.split_horizontally(CURVES_SIZE.0 / 2);
        let train = PALETTE[0];
        let val = PALETTE[1];
        let loss = [
            Series::new("train", c.train_loss, 1.0, train),
            Series::new("validation", c.val_loss, 1.0, val),
        ];
        line_panel(&left, "Loss", "loss", &loss, None, Corner::UpperRight)?;
        let acc = [
            Series::new("train", c.train_acc, 100.0, train),
            Series::new("validation", c.val_acc, 100.0, val),
        ];
        let pct = Some((0.0, 100.0));
        line_panel(
            &right,
            "Accuracy",
            "accuracy (%)",
            &acc,
            pct,
            Corner::LowerRight,
        )
    })
}

/// Writes `comparison.png` ([`COMPARISON_SIZE`], 800 x 500 px): the validation accuracy
/// per epoch of several runs overlaid (e.g. teacher, student, distilled student). x axis:
/// epoch (1-based); y axis: validation accuracy in percent (the inputs are fractions in
/// `[0, 1]`). Each run is `(name, val_acc)`; runs may have different lengths. Runs that
/// share a name (the seeds of one model) share a colour and one legend entry, which
/// gives the best accuracy (the mean ± sd of each run's best when there are several),
/// so the spread over seeds shows as a bundle of lines.
pub fn comparison_png(path: &Path, title: &str, runs: &[(&str, &[f64])]) -> Result<()> {
    let best = |acc: &[f64]| {
        acc.iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f64::NEG_INFINITY, f64::max)
    };
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in runs {
        if !names.contains(name) {
            names.push(name);
        }
    }
    render(path, COMPARISON_SIZE, |root| {
        let body = titled(root, title)?;
        let mut labelled = Vec::new();
        let series: Vec<Series> = runs
            .iter()
            .map(|&(name, acc)| {
                let group = names.iter().position(|n| *n == name).unwrap_or(0);
                let label = if labelled.contains(&name) {
                    String::new()
                } else {
                    labelled.push(name);
                    let bests: Vec<f64> = runs
                        .iter()
                        .filter(|r| r.0 == name)
                        .map(|r| best(r.1))
                        .filter(|b| b.is_finite())
                        .collect();
                    match crate::report::mean_sd(&bests) {
                        _ if bests.is_empty() => format!("{name} (no data)"),
                        (mean, None) => format!("{name} (best {:.2} %)", mean * 100.0),
                        (mean, Some(sd)) => format!(
                            "{name} (best {:.2} ± {:.2} %, {} runs)",
                            mean * 100.0,
                            sd * 100.0,
                            bests.len()
                        ),
                    }
                };
                Series {
                    label,
                    values: acc,
                    scale: 100.0,
                    color: PALETTE[group % PALETTE.len()],
                }
            })
            .collect();
        let pct = Some((0.0, 100.0));
        line_panel(
            &body,
            "",
            "validation accuracy (%)",
            &series,
            pct,
            Corner::LowerRight,
        )
    })
}

/// Writes `confusion.png` ([`CONFUSION_SIZE`], 700 x 650 px): a confusion-matrix heat
/// map, classes x classes (the data's [`crate::data::DataSpec`]). Rows (y axis, top to
/// bottom) are the true class and columns (x axis, left to right) the predicted class,
/// both in the order of `class_names`; `counts[true][predicted]` is a number of
/// examples, printed in its cell when it fits.
/// A cell's shade is its share of its row (so the diagonal shows per-class recall); the
/// subtitle gives the overall accuracy. Missing rows or cells count as zero; classes
/// without a name are shown by index. More than [`MAX_CLASSES`] classes is an error.
pub fn confusion_png(
    path: &Path,
    title: &str,
    class_names: &[&str],
    counts: &[Vec<u64>],
) -> Result<()> {
    render(path, CONFUSION_SIZE, |root| {
        confusion(root, title, class_names, counts)
    })
}

// ---------------------------------------------------------------------------------------
// Rendering and text.

/// A [`BitMapBackend`] whose text is drawn by [`ab_glyph`] with the embedded font.
///
/// plotters' own `ab_glyph` feature drops each glyph's left side bearing, which spaces
/// letters unevenly, so text is rasterised here instead; plotters itself is built with
/// no font feature at all. Font family and style requests are ignored (one face).
pub(crate) struct Canvas<'b> {
    inner: BitMapBackend<'b>,
    font: FontRef<'static>,
}

type BackendError<'b> = DrawingErrorKind<<BitMapBackend<'b> as DrawingBackend>::ErrorType>;

/// A laid-out line of text: glyphs positioned with the top of the line at y = 0.
struct Line {
    glyphs: Vec<ab_glyph::Glyph>,
    width: f32,
    height: f32,
}

impl Canvas<'_> {
    fn layout(&self, text: &str, size: f64) -> Line {
        let px = if size.is_finite() && size > 0.0 {
            size as f32
        } else {
            1.0
        };
        let scaled = self.font.as_scaled(PxScale::from(px));
        let ascent = scaled.ascent().round();
        let mut glyphs = Vec::with_capacity(text.len());
        let mut x = 0.0f32;
        let mut prev = None;
        for c in text.chars().filter(|c| !c.is_control()) {
            let id = scaled.glyph_id(c);
            if let Some(p) = prev {
                x += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(px, point(x, ascent)));
            x += scaled.h_advance(id);
            prev = Some(id);
        }
        Line {
            glyphs,
            width: x,
            height: scaled.ascent() - scaled.descent(),
        }
    }
}

impl<'b> DrawingBackend for Canvas<'b> {
    type ErrorType = <BitMapBackend<'b> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), BackendError<'b>> {
        self.inner.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), BackendError<'b>> {
        self.inner.present()
    }
    fn draw_pixel(&mut self, p: BackendCoord, c: BackendColor) -> Result<(), BackendError<'b>> {
        self.inner.draw_pixel(p, c)
    }
    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), BackendError<'b>> {
        self.inner.draw_line(from, to, style)
    }
    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), BackendError<'b>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), BackendError<'b>> {
        self.inner.draw_path(path, style)
    }
    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), BackendError<'b>> {
        self.inner.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), BackendError<'b>> {
        self.inner.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), BackendError<'b>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    /// Like plotters' default: the anchor applies to the unrotated text box, which is then
    /// rotated about `pos`.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), BackendError<'b>> {
        let color = style.color();
        if color.alpha <= 0.0 || text.is_empty() {
            return Ok(());
        }
        let line = self.layout(text, style.size());
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0.0,
            HPos::Center => -line.width / 2.0,
            HPos::Right => -line.width,
        }
        .round() as i32;
        let dy = match anchor.v_pos {
            VPos::Top => 0.0,
            VPos::Center => -line.height / 2.0,
            VPos::Bottom => -line.height,
        }
        .round() as i32;
        let transform = style.transform();
        let (w, h) = self.get_size();
        let mut pixels = Vec::new();
        for glyph in line.glyphs {
            if let Some(outline) = self.font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                let (x0, y0) = (bounds.min.x as i32 + dx, bounds.min.y as i32 + dy);
                outline.draw(|gx, gy, coverage| {
                    if coverage > 0.0 {
                        let (tx, ty) = transform.transform(x0 + gx as i32, y0 + gy as i32);
                        let (x, y) = (pos.0 + tx, pos.1 + ty);
                        if x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                            pixels.push(((x, y), coverage.min(1.0)));
                        }
                    }
                });
            }
        }
        for (p, coverage) in pixels {
            let alpha = color.alpha * f64::from(coverage);
            self.inner.draw_pixel(
                p,
                BackendColor {
                    alpha,
                    rgb: color.rgb,
                },
            )?;
        }
        Ok(())
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), BackendError<'b>> {
        let line = self.layout(text, style.size());
        Ok((line.width.ceil() as u32, line.height.ceil() as u32))
    }
}

pub(crate) type Area<'b> = DrawingArea<Canvas<'b>, Shift>;

/// Renders into an RGB buffer of `size`, then writes it as a PNG file at `path` (creating
/// its parent directories).
pub(crate) fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area) -> Result<()>,
) -> Result<()> {
    let png = (|| -> Result<Vec<u8>> {
        let font = FontRef::try_from_slice(FONT)
            .map_err(|e| anyhow!("loading the embedded chart font: {e}"))?;
        let mut rgb = vec![255u8; size.0 as usize * size.1 as usize * 3];
        {
            let inner = BitMapBackend::with_buffer(&mut rgb, size);
            let root = Canvas { inner, font }.into_drawing_area();
            root.fill(&WHITE)?;
            draw(&root)?;
            root.present()?;
        }
        encode_png(&rgb, size)
    })();
    png.and_then(|bytes| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(std::fs::write(path, bytes)?)
    })
    .with_context(|| format!("writing chart {}", path.display()))
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// A text style of `size` pixels (line height) in the embedded font.
pub(crate) fn font(size: f64) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", size).into_font()).color(&INK)
}

pub(crate) fn anchored(style: TextStyle<'static>, h: HPos, v: VPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, v))
}

/// Draws `title` centred across the top of `root` and returns the area below it. A title
/// too wide for the image is set smaller, down to 14 px, then shortened with "…".
pub(crate) fn titled<'b>(root: &Area<'b>, title: &str) -> Result<Area<'b>> {
    if title.is_empty() {
        return Ok(root.margin(10, 0, 0, 0));
    }
    let title: String = title.chars().take(300).collect();
    let max_w = root.dim_in_pixel().0.saturating_sub(24);
    let mut size = 23.0;
    while size > 14.0 && root.estimate_text_size(&title, &font(size))?.0 > max_w {
        size -= 1.0;
    }
    let title = fit(root, &title, &font(size), max_w);
    Ok(root.titled(&title, font(size))?)
}

/// Formats an axis tick value with no trailing zeros ("0.5", "80", "1e-7").
fn tick_label(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-4) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Line charts.

/// One line of a line chart: per-epoch values, multiplied by `scale` when drawn.
struct Series<'a> {
    label: String,
    values: &'a [f64],
    scale: f64,
    color: RGBColor,
}

impl<'a> Series<'a> {
    /// A series labelled `label`, or "`label` (no data)" when no value is finite.
    fn new(label: &str, values: &'a [f64], scale: f64, color: RGBColor) -> Self {
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
    fn segments(&self) -> Vec<Vec<(f64, f64)>> {
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
fn value_range(values: impl Iterator<Item = f64>, clamp: Option<(f64, f64)>) -> (f64, f64) {
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
enum Corner {
    UpperRight,
    LowerRight,
    UpperLeft,
    LowerLeft,
}

/// A line chart in `area`: x = epoch, one line per series, markers on short runs, and a
/// legend in whichever corner covers the fewest data points (`preferred` on a tie).
fn line_panel(
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
fn legend(
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

// ---------------------------------------------------------------------------------------
// Confusion matrix.

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

/// `text`, shortened with "…" until it is at most `max_w` pixels wide in `style`.
pub(crate) fn fit(area: &Area, text: &str, style: &TextStyle, max_w: u32) -> String {
    let width = |s: &str| area.estimate_text_size(s, style).map_or(0, |(w, _)| w);
    if width(text) <= max_w {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let s: String = chars.iter().collect::<String>() + "…";
        if width(&s) <= max_w {
            return s;
        }
    }
    String::new()
}

fn confusion(root: &Area, title: &str, class_names: &[&str], counts: &[Vec<u64>]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh path in the system temp dir, unique to this process and test.
    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kdtrain-plot-test-{}-{name}", std::process::id()))
    }

    /// Checks that `path` is a PNG of `size` that decodes; returns its length in bytes and
    /// deletes it.
    fn check_png(path: &Path, size: (u32, u32)) -> usize {
        let bytes = std::fs::read(path).unwrap();
        std::fs::remove_file(path).unwrap();
        assert!(bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]));
        let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), size);
        // Something besides the white background was drawn.
        assert!(buf.iter().any(|&b| b < 128));
        bytes.len()
    }

    const NAMES: [&str; 10] = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];

    fn decay(n: usize, start: f64, end: f64, tau: f64) -> Vec<f64> {
        (0..n)
            .map(|i| end + (start - end) * (-(i as f64) / tau).exp())
            .collect()
    }

    #[test]
    fn curves_typical() {
        let (tl, vl) = (decay(30, 2.3, 0.2, 8.0), decay(30, 2.2, 0.4, 9.0));
        let (ta, va) = (decay(30, 0.12, 0.98, 7.0), decay(30, 0.1, 0.91, 8.0));
        let c = Curves {
            title: "student",
            train_loss: &tl,
            val_loss: &vl,
            train_acc: &ta,
            val_acc: &va,
        };
        let p = tmp("curves.png");
        curves_png(&p, &c).unwrap();
        assert!(check_png(&p, CURVES_SIZE) < 200_000);
    }

    #[test]
    fn comparison_typical() {
        let t = decay(40, 0.1, 0.93, 6.0);
        let s = decay(25, 0.1, 0.86, 6.0);
        let d = decay(25, 0.1, 0.89, 5.0);
        let p = tmp("comparison.png");
        let runs = [
            ("teacher", &t[..]),
            ("student", &s[..]),
            ("distilled student", &d[..]),
        ];
        comparison_png(&p, "Validation accuracy", &runs).unwrap();
        assert!(check_png(&p, COMPARISON_SIZE) < 200_000);
    }

    #[test]
    fn confusion_typical() {
        let counts: Vec<Vec<u64>> = (0..10u64)
            .map(|r| {
                (0..10u64)
                    .map(|c| {
                        if r == c {
                            850 + r * 10
                        } else {
                            (r * 7 + c * 3) % 23
                        }
                    })
                    .collect()
            })
            .collect();
        let p = tmp("confusion.png");
        confusion_png(&p, "Confusion matrix", &NAMES, &counts).unwrap();
        assert!(check_png(&p, CONFUSION_SIZE) < 200_000);
    }

    #[test]
    fn curves_edge_cases() {
        let nan = [f64::NAN, 0.5, f64::NAN, f64::INFINITY, 0.7, 0.8];
        let e: [f64; 0] = [];
        let cases = [
            (
                "empty",
                Curves {
                    title: "",
                    train_loss: &e,
                    val_loss: &e,
                    train_acc: &e,
                    val_acc: &e,
                },
            ),
            (
                "one",
                Curves {
                    title: "1",
                    train_loss: &[0.4],
                    val_loss: &[0.5],
                    train_acc: &[0.9],
                    val_acc: &[0.8],
                },
            ),
            (
                "nan",
                Curves {
                    title: "nan",
                    train_loss: &nan,
                    val_loss: &[f64::NAN; 3],
                    train_acc: &nan,
                    val_acc: &e,
                },
            ),
            (
                "flat",
                Curves {
                    title: "flat",
                    train_loss: &[0.5; 5],
                    val_loss: &[0.5; 5],
                    train_acc: &[1.0; 4],
                    val_acc: &[0.0; 4],
                },
            ),
            (
                "wild",
                Curves {
                    title: "wild",
                    train_loss: &[1e300, -1e300, 1e-300],
                    val_loss: &[f64::MAX, f64::MIN],
                    train_acc: &[-3.0, 7.0],
                    val_acc: &e,
                },
            ),
        ];
        for (name, c) in &cases {
            let p = tmp(&format!("curves-{name}.png"));
            curves_png(&p, c).unwrap();
            check_png(&p, CURVES_SIZE);
        }
    }

    #[test]
    fn comparison_edge_cases() {
        let nan = [f64::NAN, 0.5, f64::NAN, 0.7];
        let long: Vec<f64> = (0..500).map(|i| (i as f64 / 500.0).sqrt()).collect();
        type Runs<'a> = Vec<(&'a str, &'a [f64])>;
        let cases: [(&str, Runs); 5] = [
            ("none", vec![]),
            ("empty", vec![("a", &[]), ("b", &[f64::NAN])]),
            ("one", vec![("a", &[0.3])]),
            ("flat", vec![("a", &[0.5; 3]), ("b", &nan)]),
            ("many", (0..12).map(|_| ("run", &long[..])).collect()),
        ];
        for (name, runs) in &cases {
            let p = tmp(&format!("comparison-{name}.png"));
            comparison_png(&p, name, runs).unwrap();
            check_png(&p, COMPARISON_SIZE);
        }
    }

    #[test]
    fn confusion_edge_cases() {
        let long = ["a class name far too long to fit beside the matrix", "b"];
        type Matrix = Vec<Vec<u64>>;
        let cases: [(&str, &[&str], Matrix); 7] = [
            ("empty", &[], vec![]),
            ("zeros", &NAMES, vec![vec![0; 10]; 10]),
            (
                "ragged",
                &NAMES[..2],
                vec![vec![5, 1], vec![], vec![0, 0, 3, 9]],
            ),
            (
                "huge",
                &["a", "b"],
                vec![vec![u64::MAX, u64::MAX], vec![0, u64::MAX]],
            ),
            ("long", &long, vec![vec![1, 2], vec![3, 4]]),
            ("big", &[], vec![vec![1; 120]; 120]),
            (
                "a very long title naming runs/2026-01-01T00-00-00/distilled/model.safetensors on the test set: accuracy 0.9876",
                &NAMES,
                vec![vec![3; 10]; 10],
            ),
        ];
        for (name, names, counts) in &cases {
            let p = tmp(&format!("confusion-{name}.png"));
            confusion_png(&p, name, names, counts).unwrap();
            check_png(&p, CONFUSION_SIZE);
        }
        let p = tmp("confusion-too-many.png");
        let err = confusion_png(&p, "x", &[], &vec![vec![]; MAX_CLASSES + 1]).unwrap_err();
        assert!(
            format!("{err:#}").contains("confusion-too-many.png"),
            "{err:#}"
        );
        assert!(!p.exists());
    }

    #[test]
    fn error_names_the_path() {
        let p = Path::new("/proc/kdtrain/not/writable/curves.png");
        let c = Curves {
            title: "x",
            train_loss: &[1.0],
            val_loss: &[],
            train_acc: &[],
            val_acc: &[],
        };
        let err = format!("{:#}", curves_png(p, &c).unwrap_err());
        assert!(
            err.contains("/proc/kdtrain/not/writable/curves.png"),
            "{err}"
        );
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(80.0), "80");
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(-0.0), "0");
        assert_eq!(tick_label(2.5e-7), "2.5e-7");
    }
}
