//! Image files to model inputs: a PNG, JPEG, BMP, GIF or WebP of any size and colour becomes one image of
//! the model's [`DataSpec`], C x H x W values on the 0..255 scale: grey for a model of one
//! channel (a light object on a dark background, as in Fashion-MNIST), RGB for three.
//!
//! Decoding (PNG, JPEG, EXIF orientation, 16-bit samples) is the `image` crate's; this
//! module owns what comes after it, in this order:
//! 1. channels: for a grey model, grey images as they are, colour by ITU-R 601-2 luma
//!    (0.299 R + 0.587 G + 0.114 B, what PIL's `convert("L")` and torchvision's
//!    `Grayscale` use); for an RGB model, R, G and B (a grey image repeated in all
//!    three); 16-bit samples scaled by 255 / 65535;
//! 2. an alpha channel composited onto white, as an image viewer shows it;
//! 3. inversion (`--invert`, grey models): Fashion-MNIST shows a light object on a dark
//!    background, so with `auto` an image whose border (outermost rows and columns) is
//!    light on average (mean above 127.5) is inverted, 255 - v. An RGB model's input is
//!    inverted only with `yes`;
//! 4. padding to the spec's aspect ratio (a square for a square spec) with the background
//!    (the mean of the border after step 3, per channel), the image centred;
//! 5. resizing to H x W by area averaging: each output pixel is the mean of the input
//!    area it covers, weighted by overlap. An image scaled up by an integer factor k
//!    (each pixel a k x k block) therefore comes back exactly as itself.
//!
//! The caller divides by 255, as training does ([`crate::data::Examples::from_split`]).
//! Nothing here touches the model.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::data::DataSpec;

/// Images with more pixels than this are refused before decoding (width x height, read
/// from the file's header).
pub const MAX_PIXELS: u64 = 50_000_000;

/// Whether to invert grey values (`--invert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Invert {
    /// Always invert (dark object on a light background in, light on dark out).
    Yes,
    /// Never invert.
    No,
    /// Invert when the image's border is light on average (mean above 127.5 of 255).
    Auto,
}

/// One image made ready for the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `[C·H·W]` f32 values in [0, 255], channel-major, each channel row-major H x W.
    pub pixels: Vec<f32>,
    /// Whether the grey values were inverted (step 3).
    pub inverted: bool,
    /// Width and height of the decoded image, after EXIF orientation.
    pub original_size: (u32, u32),
}

/// The extensions read as images (compared without regard to case), by `predict` and
/// by the image-folder source.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// The formats read: those of [`IMAGE_EXTENSIONS`].
const FORMATS: [ImageFormat; 5] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Bmp,
    ImageFormat::Gif,
    ImageFormat::WebP,
];

/// Whether the first bytes of a file are a PNG, JPEG, BMP, GIF or WebP signature.
pub fn looks_like_image(head: &[u8]) -> bool {
    image::guess_format(head).is_ok_and(|f| FORMATS.contains(&f))
}

/// Whether a file name ends in one of [`IMAGE_EXTENSIONS`] (any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads, decodes and prepares one PNG, JPEG, BMP, GIF (its first frame) or WebP file
/// for a model of `spec` (steps 1 to 5
/// of the module doc).
///
/// # Errors
/// Every message names the file: the model takes other than 1 or 3 channels; it cannot be
/// opened; it is none of those formats (the first bytes are shown); its header gives more
/// than [`MAX_PIXELS`] pixels (checked before decoding) or a zero size; the data is
/// corrupt or truncated (the decoder's message).
pub fn load(path: &Path, invert: Invert, spec: &DataSpec) -> Result<Prepared> {
    let shown = path.display();
    if !matches!(spec.channels, 1 | 3) {
        bail!(
            "{shown}: this model takes {} images ({} channels); PNG and JPEG inputs are read \
             as grey (1 channel) or RGB (3)",
            spec.describe(),
            spec.channels
        );
    }
    let mut reader = ImageReader::open(path)
        .map_err(|e| anyhow!("cannot open {shown}: {e}"))?
        .with_guessed_format()
        .map_err(|e| anyhow!("cannot read {shown}: {e}"))?;
    match reader.format() {
        Some(f) if FORMATS.contains(&f) => {}
        _ => {
            let head = std::fs::read(path)
                .map(|b| b[..b.len().min(8)].to_vec())
                .unwrap_or_default();
            bail!(
                "{shown} is not a PNG, JPEG, BMP, GIF or WebP image (it starts with \
                 {head:02x?}); pass such files, a folder of them, or an IDX file"
            );
        }
    }
    // The pixel limit below is the real guard; this one only keeps a decoder from
    // allocating more than a 50-megapixel RGBA image at 16 bits needs.
    let mut limits = Limits::default();
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| {
        anyhow!("{shown}: cannot read the image header ({e}); is the file complete?")
    })?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        bail!(
            "{shown} is {w}x{h} = {:.1} megapixels, over the limit of {} megapixels; \
             scale it down first",
            pixels as f64 / 1e6,
            MAX_PIXELS / 1_000_000
        );
    }
    if pixels == 0 {
        bail!("{shown} is {w}x{h}: an image with no pixels");
    }
    // A broken EXIF block is no reason to refuse the pixels: keep them as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| anyhow!("{shown}: the image data is corrupt or truncated ({e})"))?;
    img.apply_orientation(orientation);
    Ok(prepare(&img, invert, spec))
}

/// Steps 1 to 5 of the module doc on a decoded image, to `spec`'s channels, height and
/// width.
pub fn prepare(img: &DynamicImage, invert: Invert, spec: &DataSpec) -> Prepared {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut planes = match spec.channels {
        1 => vec![grey_on_white(img)],
        _ => rgb_on_white(img),
    };
    let inverted = match (invert, spec.channels) {
        (Invert::Yes, _) => true,
        (Invert::No, _) | (Invert::Auto, 3..) => false,
        (Invert::Auto, _) => border_mean(&planes[0], w, h) > 127.5,
    };
    let mut pixels = Vec::with_capacity(planes.len() * (spec.width * spec.height) as usize);
    for plane in &mut planes {
        if inverted {
            for v in plane.iter_mut() {
                *v = 255.0 - *v;
            }
        }
        let background = border_mean(plane, w, h);
        pixels.extend(area_resize(
            plane,
            (w, h),
            background,
            (spec.width as usize, spec.height as usize),
        ));
    }
    Prepared {
        pixels,
        inverted,
        original_size: (w as u32, h as u32),
    }
}

/// R, G and B planes in [0, 255] (f32, each row-major), alpha composited onto white; a
/// grey image repeated in all three.
fn rgb_on_white(img: &DynamicImage) -> Vec<Vec<f32>> {
    let n = img.width() as usize * img.height() as usize;
    let mut planes: Vec<Vec<f32>> = (0..3).map(|_| Vec::with_capacity(n)).collect();
    let over_white = |v: f32, a: f32| a * v + (1.0 - a) * 255.0;
    match img {
        DynamicImage::ImageRgb8(b) => {
            for p in b.pixels() {
                for c in 0..3 {
                    planes[c].push(f32::from(p[c]));
                }
            }
        }
        DynamicImage::ImageRgba8(b) => {
            for p in b.pixels() {
                let a = f32::from(p[3]) / 255.0;
                for c in 0..3 {
                    planes[c].push(over_white(f32::from(p[c]), a));
                }
            }
        }
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_) => {
            let g = grey_on_white(img);
            planes = vec![g.clone(), g.clone(), g];
        }
        other => {
            for p in other.to_rgba32f().pixels() {
                let a = p[3].clamp(0.0, 1.0);
                for c in 0..3 {
                    planes[c].push(over_white((p[c] * 255.0).clamp(0.0, 255.0), a));
                }
            }
        }
    }
    planes
}

/// Grey values in [0, 255] (f32, row-major), alpha composited onto white. Grey 8-bit
/// samples are kept exactly; 16-bit ones are scaled by 255 / 65535; colour goes through
/// ITU-R 601-2 luma.
fn grey_on_white(img: &DynamicImage) -> Vec<f32> {
    const S16: f32 = 255.0 / 65535.0;
    let over_white = |v: f32, a: f32| a * v + (1.0 - a) * 255.0;
    let luma = |r: f32, g: f32, b: f32| 0.299 * r + 0.587 * g + 0.114 * b;
    match img {
        DynamicImage::ImageLuma8(b) => b.pixels().map(|p| f32::from(p[0])).collect(),
        DynamicImage::ImageLumaA8(b) => b
            .pixels()
            .map(|p| over_white(f32::from(p[0]), f32::from(p[1]) / 255.0))
            .collect(),
        DynamicImage::ImageLuma16(b) => b.pixels().map(|p| f32::from(p[0]) * S16).collect(),
        DynamicImage::ImageLumaA16(b) => b
            .pixels()
            .map(|p| over_white(f32::from(p[0]) * S16, f32::from(p[1]) / 65535.0))
            .collect(),
        DynamicImage::ImageRgb8(b) => b
            .pixels()
            .map(|p| luma(f32::from(p[0]), f32::from(p[1]), f32::from(p[2])))
            .collect(),
        DynamicImage::ImageRgba8(b) => b
            .pixels()
            .map(|p| {
                let v = luma(f32::from(p[0]), f32::from(p[1]), f32::from(p[2]));
                over_white(v, f32::from(p[3]) / 255.0)
            })
            .collect(),
        // 16-bit colour, float, and any layout a later `image` adds: through f32 RGBA.
        other => other
            .to_rgba32f()
            .pixels()
            .map(|p| {
                let v = luma(p[0], p[1], p[2]) * 255.0;
                over_white(v.clamp(0.0, 255.0), p[3].clamp(0.0, 1.0))
            })
            .collect(),
    }
}

/// Mean of the outermost rows and columns (each pixel counted once).
fn border_mean(grey: &[f32], w: usize, h: usize) -> f32 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for y in 0..h {
        let row = &grey[y * w..(y + 1) * w];
        if y == 0 || y == h - 1 {
            sum += row.iter().map(|&v| f64::from(v)).sum::<f64>();
            n += w;
        } else {
            sum += f64::from(row[0]);
            n += 1;
            if w > 1 {
                sum += f64::from(row[w - 1]);
                n += 1;
            }
        }
    }
    (sum / n as f64) as f32
}

/// For each of `out` output cells over an axis of `side` input pixels, the input pixels
/// it overlaps and by how much. Lengths are in units of 1/out of an input pixel, so they
/// are exact integers: input pixel p covers [p*out, (p+1)*out), output cell o covers
/// [o*side, (o+1)*side), and each cell's weights sum to `side`.
fn area_weights(side: usize, out: usize) -> Vec<Vec<(usize, u64)>> {
    (0..out)
        .map(|o| {
            let (lo, hi) = ((o * side) as u64, ((o + 1) * side) as u64);
            let first = lo as usize / out;
            let last = (hi as usize).div_ceil(out).min(side);
            (first..last)
                .filter_map(|p| {
                    let (a, b) = ((p * out) as u64, ((p + 1) * out) as u64);
                    let overlap = hi.min(b).saturating_sub(lo.max(a));
                    (overlap > 0).then_some((p, overlap))
                })
                .collect()
        })
        .collect()
}

/// Pads `grey` (`w` x `h`) to a centred `pw` x `ph` of the output's aspect ratio (a
/// square of side max(w, h) for a square output; the padded side rounded up) filled with
/// `background`, then resizes it to `out_w` x `out_h` by area averaging. The padding is
/// never materialised (a 50,000,000 x 1 image would need a square of 2.5e15 pixels).
fn area_resize(
    grey: &[f32],
    (w, h): (usize, usize),
    background: f32,
    (out_w, out_h): (usize, usize),
) -> Vec<f32> {
    // Widths and heights multiplied in u128: no overflow for any image under MAX_PIXELS.
    let (pw, ph) = if (w as u128) * (out_h as u128) >= (h as u128) * (out_w as u128) {
        (
            w,
            ((w as u128 * out_h as u128).div_ceil(out_w as u128) as usize).max(h),
        )
    } else {
        (
            ((h as u128 * out_w as u128).div_ceil(out_h as u128) as usize).max(w),
            h,
        )
    };
    let (x0, y0) = ((pw - w) / 2, (ph - h) / 2);
    let weights_x = area_weights(pw, out_w);
    let weights_y = area_weights(ph, out_h);
    let bg = f64::from(background);
    // Pass 1, along x: each image row becomes `out_w` sums of weighted values.
    let mut rows = vec![0.0f64; h * out_w];
    for y in 0..h {
        let src = &grey[y * w..(y + 1) * w];
        for (o, ws) in weights_x.iter().enumerate() {
            rows[y * out_w + o] = ws
                .iter()
                .map(|&(p, wt)| {
                    let v = if p >= x0 && p < x0 + w {
                        f64::from(src[p - x0])
                    } else {
                        bg
                    };
                    v * wt as f64
                })
                .sum();
        }
    }
    // Pass 2, along y: rows outside the image are background rows, whose x sums are
    // bg * pw.
    let norm = (pw as f64) * (ph as f64);
    let mut result = vec![0.0f32; out_w * out_h];
    for (oy, ws) in weights_y.iter().enumerate() {
        for ox in 0..out_w {
            let sum: f64 = ws
                .iter()
                .map(|&(p, wt)| {
                    let x = if p >= y0 && p < y0 + h {
                        rows[(p - y0) * out_w + ox]
                    } else {
                        bg * pw as f64
                    };
                    x * wt as f64
                })
                .sum();
            result[oy * out_w + ox] = (sum / norm) as f32;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageEncoder, Luma, Rgba, RgbaImage};

    fn fm() -> DataSpec {
        DataSpec::fashion_mnist()
    }

    fn rgb_spec(h: i64, w: i64) -> DataSpec {
        DataSpec {
            channels: 3,
            height: h,
            width: w,
            class_names: (0..5).map(|i| i.to_string()).collect(),
        }
    }

    /// An RGB model gets R, G and B planes, channel-major: a 4x4 image with one colour per
    /// quadrant, scaled up by 2 (each pixel a 2x2 block) and back down by the area
    /// average, comes back exactly; a grey image is repeated in the three planes; alpha
    /// goes onto white; `--invert auto` leaves colour alone.
    #[test]
    fn colour_models_get_rgb_planes() {
        let colour = |x: u32, y: u32| -> [u8; 3] {
            match (x < 2, y < 2) {
                (true, true) => [250, 10, 20],
                (false, true) => [5, 200, 30],
                (true, false) => [7, 8, 190],
                (false, false) => [90, 91, 92],
            }
        };
        let big = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb(colour(x / 2, y / 2)));
        let p = prepare(&DynamicImage::ImageRgb8(big), Invert::Auto, &rgb_spec(4, 4));
        assert!(!p.inverted);
        assert_eq!(p.pixels.len(), 3 * 16);
        for c in 0..3 {
            for y in 0..4u32 {
                for x in 0..4u32 {
                    let got = p.pixels[c * 16 + (y * 4 + x) as usize];
                    assert!(
                        (got - f32::from(colour(x, y)[c])).abs() < 1e-4,
                        "{c} {x} {y}"
                    );
                }
            }
        }
        // Grey into an RGB model: three equal planes.
        let g = GrayImage::from_fn(4, 4, |x, y| Luma([(x * 60 + y) as u8]));
        let p = prepare(&DynamicImage::ImageLuma8(g), Invert::No, &rgb_spec(4, 4));
        assert_eq!(&p.pixels[..16], &p.pixels[16..32]);
        assert_eq!(&p.pixels[..16], &p.pixels[32..]);
        assert_eq!(p.pixels[1], 60.0);
        // Half-transparent red over white.
        let a = RgbaImage::from_pixel(2, 2, Rgba([255, 0, 0, 128]));
        let p = prepare(&DynamicImage::ImageRgba8(a), Invert::No, &rgb_spec(2, 2));
        let half = 128.0 / 255.0;
        let want = [255.0, half * 0.0 + (1.0 - half) * 255.0];
        assert!((p.pixels[0] - want[0]).abs() < 1e-3);
        assert!((p.pixels[4] - want[1]).abs() < 1e-3, "{}", p.pixels[4]);
        // --invert yes inverts every plane.
        let p = prepare(
            &DynamicImage::ImageRgb8(image::RgbImage::from_pixel(2, 2, image::Rgb([10, 20, 30]))),
            Invert::Yes,
            &rgb_spec(2, 2),
        );
        assert!(p.inverted);
        assert_eq!(
            (p.pixels[0], p.pixels[4], p.pixels[8]),
            (245.0, 235.0, 225.0)
        );
    }

    fn pattern(seed: u32) -> GrayImage {
        GrayImage::from_fn(28, 28, |x, y| {
            // Dark border, varied interior: a stand-in for a Fashion-MNIST image.
            if x == 0 || y == 0 || x == 27 || y == 27 {
                Luma([3])
            } else {
                Luma([((x * 37 + y * 11 + seed * 7) % 256) as u8])
            }
        })
    }

    #[test]
    fn integer_upscale_comes_back_exactly() {
        let img = pattern(1);
        for k in [1u32, 2, 3, 7] {
            let big =
                image::imageops::resize(&img, 28 * k, 28 * k, image::imageops::FilterType::Nearest);
            let p = prepare(&DynamicImage::ImageLuma8(big), Invert::Auto, &fm());
            assert!(!p.inverted);
            let want: Vec<f32> = img.pixels().map(|v| f32::from(v[0])).collect();
            assert_eq!(p.pixels, want, "factor {k}");
        }
    }

    /// A spec of another height and width: an image of that shape scaled up by k comes
    /// back exactly; one of another aspect ratio is padded to the spec's; a model of
    /// three channels gets the grey image in each; two channels are refused, naming the
    /// file.
    #[test]
    fn other_sizes_follow_the_spec() {
        let spec = DataSpec {
            channels: 1,
            height: 6,
            width: 4,
            class_names: vec!["a".into()],
        };
        let img = GrayImage::from_fn(4, 6, |x, y| Luma([(x * 40 + y * 7) as u8]));
        for k in [1u32, 3] {
            let big =
                image::imageops::resize(&img, 4 * k, 6 * k, image::imageops::FilterType::Nearest);
            let p = prepare(&DynamicImage::ImageLuma8(big), Invert::No, &spec);
            let want: Vec<f32> = img.pixels().map(|v| f32::from(v[0])).collect();
            assert_eq!(p.pixels, want, "factor {k}");
        }
        // A constant 10 x 10 image padded to 10 x 15 with its own value stays constant.
        let flat = GrayImage::from_pixel(10, 10, Luma([90]));
        let p = prepare(&DynamicImage::ImageLuma8(flat), Invert::No, &spec);
        assert_eq!(p.pixels.len(), 24);
        assert!(
            p.pixels.iter().all(|&v| (v - 90.0).abs() < 1e-4),
            "{:?}",
            p.pixels
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("colour.png");
        img.save(&path).unwrap();
        let colour = DataSpec {
            channels: 3,
            ..spec.clone()
        };
        let p = load(&path, Invert::No, &colour).unwrap();
        let want: Vec<f32> = img.pixels().map(|v| f32::from(v[0])).collect();
        assert_eq!(p.pixels, [&want[..], &want, &want].concat());
        let two = DataSpec {
            channels: 2,
            ..spec
        };
        let e = load(&path, Invert::No, &two).unwrap_err().to_string();
        assert!(e.contains("colour.png") && e.contains("2x6x4"), "{e}");
    }

    #[test]
    fn area_average_of_a_non_integer_factor() {
        // 3 pixels to 2 cells: cell 0 = (v0 * 2 + v1 * 1) / 3 in units of 1/2 pixel.
        let w = area_weights(3, 2);
        assert_eq!(w, vec![vec![(0, 2), (1, 1)], vec![(1, 1), (2, 2)]]);
        // Each cell's weights sum to the input side.
        for (side, out) in [(28, 28), (29, 28), (100, 28), (5, 28), (1, 28)] {
            for ws in area_weights(side, out) {
                assert_eq!(ws.iter().map(|&(_, w)| w).sum::<u64>(), side as u64);
            }
        }
        // A constant image stays constant, also when padded.
        let grey = vec![80.0f32; 50 * 20];
        let r = area_resize(&grey, (50, 20), 80.0, (28, 28));
        assert!(r.iter().all(|&v| (v - 80.0).abs() < 1e-4), "{r:?}");
    }

    #[test]
    fn padding_uses_the_background_and_centres() {
        // A 28 x 14 white-on-black strip: padded rows (7 above, 7 below) are background.
        let img = GrayImage::from_fn(28, 14, |x, _| Luma([if x % 2 == 0 { 0 } else { 200 }]));
        let p = prepare(&DynamicImage::ImageLuma8(img), Invert::No, &fm());
        let bg: f32 = p.pixels[0];
        // border mean of the strip: alternating 0 and 200 on top/bottom rows, 0 and 200 on
        // the sides; the first padded row is all background.
        assert!(p.pixels[..28].iter().all(|&v| v == bg));
        assert_eq!(p.pixels[7 * 28 + 1], 200.0);
        assert_eq!(p.pixels[7 * 28], 0.0);
    }

    #[test]
    fn light_background_is_inverted_and_matches_its_inverse() {
        let img = pattern(2);
        let inv = GrayImage::from_fn(28, 28, |x, y| Luma([255 - img.get_pixel(x, y)[0]]));
        let a = prepare(&DynamicImage::ImageLuma8(img.clone()), Invert::Auto, &fm());
        let b = prepare(&DynamicImage::ImageLuma8(inv.clone()), Invert::Auto, &fm());
        assert!(!a.inverted && b.inverted);
        assert_eq!(a.pixels, b.pixels);
        // --invert no keeps the light one as it is; --invert yes inverts the dark one.
        assert!(!prepare(&DynamicImage::ImageLuma8(inv), Invert::No, &fm()).inverted);
        assert!(prepare(&DynamicImage::ImageLuma8(img), Invert::Yes, &fm()).inverted);
    }

    #[test]
    fn alpha_composites_onto_white_and_sixteen_bit_is_scaled() {
        // Fully transparent black = white; opaque grey 100 stays 100.
        let img = RgbaImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([100, 100, 100, 255])
            }
        });
        let g = grey_on_white(&DynamicImage::ImageRgba8(img));
        assert!(
            (g[0] - 255.0).abs() < 1e-3 && (g[1] - 100.0).abs() < 1e-3,
            "{g:?}"
        );
        let img16 =
            image::ImageBuffer::<Luma<u16>, Vec<u16>>::from_raw(2, 1, vec![0, 65535]).unwrap();
        assert_eq!(
            grey_on_white(&DynamicImage::ImageLuma16(img16)),
            vec![0.0, 255.0]
        );
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 3x2 image with EXIF orientation 6 (rotate 90 degrees clockwise to display).
        let dir = tempfile::tempdir().unwrap();
        let raw = GrayImage::from_raw(3, 2, vec![0, 40, 80, 120, 160, 200]).unwrap();
        let mut exif = b"II\x2a\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
        let mut bytes = Vec::new();
        let mut enc = image::codecs::png::PngEncoder::new(&mut bytes);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(raw.as_raw(), 3, 2, image::ExtendedColorType::L8)
            .unwrap();
        let path = dir.path().join("rotated.png");
        std::fs::write(&path, bytes).unwrap();
        let loaded = load(&path, Invert::No, &fm()).unwrap();
        assert_eq!(loaded.original_size, (2, 3));
        let upright = image::imageops::rotate90(&raw);
        let want = prepare(&DynamicImage::ImageLuma8(upright), Invert::No, &fm());
        assert_eq!(loaded.pixels, want.pixels);
    }

    #[test]
    fn bad_files_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let e = load(&text, Invert::Auto, &fm()).unwrap_err().to_string();
        assert!(
            e.contains("notes.txt") && e.contains("not a PNG, JPEG, BMP, GIF or WebP"),
            "{e}"
        );
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&[7u8; 64 * 64], 64, 64, image::ExtendedColorType::L8)
            .unwrap();
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
        let e = load(&cut, Invert::Auto, &fm()).unwrap_err().to_string();
        assert!(e.contains("cut.png") && e.contains("corrupt"), "{e}");
        let e = load(&dir.path().join("missing.png"), Invert::Auto, &fm())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.png"), "{e}");
    }

    #[test]
    fn huge_image_is_refused_from_its_header() {
        // A valid 10000 x 10000 PNG at 1 bit per pixel (12.5 MB of pixel data, a few KB
        // compressed): refused by its size, not by a failed decode.
        let mut png = Vec::new();
        let mut enc = png::Encoder::new(&mut png, 10_000, 10_000);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&vec![0u8; 1250 * 10_000]).unwrap();
        w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        std::fs::write(&path, &png).unwrap();
        let e = load(&path, Invert::Auto, &fm()).unwrap_err().to_string();
        assert!(
            e.contains("huge.png") && e.contains("100.0 megapixels"),
            "{e}"
        );
    }
}
