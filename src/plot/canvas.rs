//! Rendering and text: a plotters backend whose text is set by `ab_glyph` with a font
//! compiled into the binary, PNG encoding, titles, and fitting text into a width.

use super::*;

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
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-subset.ttf");

/// A [`BitMapBackend`] whose text is drawn by [`ab_glyph`] with the embedded font.
///
/// plotters' own `ab_glyph` feature drops each glyph's left side bearing, which spaces
/// letters unevenly, so text is rasterised here instead; plotters itself is built with
/// no font feature at all. Font family and style requests are ignored (one face).
pub(crate) struct Canvas<'b> {
    inner: BitMapBackend<'b>,
    font: FontRef<'static>,
}

pub(super) type BackendError<'b> =
    DrawingErrorKind<<BitMapBackend<'b> as DrawingBackend>::ErrorType>;

/// A laid-out line of text: glyphs positioned with the top of the line at y = 0.
pub(super) struct Line {
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

pub(super) fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
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
pub(super) fn tick_label(v: f64) -> String {
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
