//! Pixel helpers shared by the readers: channel conversion (luma by ITU-R 601, grey
//! repeated to RGB) and an area-average resize, all on channel-major `[C, H, W]` u8
//! images.

use rayon::prelude::*;

/// Luma of one RGB pixel, ITU-R 601 as PIL's `convert("L")` and torchvision's
/// `Grayscale`: `0.299 R + 0.587 G + 0.114 B`, rounded.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000) as u8
}

/// One channel-major image of `from` channels (1, 3 or 4; a 4th, alpha, is dropped) as
/// `to` channels (1 or 3): colour to luma ([`luma`]), grey repeated. `img` holds
/// `from * plane` bytes (shorter input gives a shorter output, never a panic).
pub fn convert_channels(img: &[u8], plane: usize, from: usize, to: usize) -> Vec<u8> {
    let planes: Vec<&[u8]> = img.chunks(plane.max(1)).take(from).collect();
    match (planes.len(), to) {
        (1, 1) => planes[0].to_vec(),
        (1, _) => planes[0].repeat(3),
        (n, 1) if n >= 3 => planes[0]
            .iter()
            .zip(planes[1])
            .zip(planes[2])
            .map(|((&r, &g), &b)| luma(r, g, b))
            .collect(),
        (n, _) if n >= 3 => planes[..3].concat(),
        _ => img.to_vec(),
    }
}

/// [`convert_channels`] for every image of a split of `n` images.
pub fn convert_split(pixels: &[u8], n: usize, plane: usize, from: usize, to: usize) -> Vec<u8> {
    if from == to || n == 0 {
        return pixels.to_vec();
    }
    let per = plane * from;
    let out: Vec<Vec<u8>> = pixels
        .par_chunks(per.max(1))
        .map(|img| convert_channels(img, plane, from, to))
        .collect();
    out.concat()
}

/// For each output index along an axis of `src` pixels scaled to `dst`, the source
/// pixels it overlaps and the overlap, as a fraction of the output pixel (the weights
/// sum to 1). Output pixel `o` covers `[o·src/dst, (o+1)·src/dst)` of the source axis.
fn area_weights(src: usize, dst: usize) -> Vec<Vec<(usize, f64)>> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|o| {
            let lo = o as f64 * scale;
            let hi = (o + 1) as f64 * scale;
            let first = lo.floor() as usize;
            let last = (hi.ceil() as usize).min(src);
            (first..last.max(first + 1).min(src))
                .filter_map(|i| {
                    let w = (hi.min(i as f64 + 1.0) - lo.max(i as f64)) / scale;
                    (w > 1e-12).then_some((i, w))
                })
                .collect()
        })
        .collect()
}

/// Area-average resize of one channel-major image `[c, h, w]` to `[c, nh, nw]`: every
/// output pixel is the mean of the source area it covers, each source pixel weighted by
/// its overlap (OpenCV's `INTER_AREA`; for a downscale by whole factors, the mean of
/// each block; for an upscale, the nearest pixel, blended where an output pixel straddles
/// two). Rounded to the nearest integer. Separable: rows, then columns, in f64.
pub fn resize_area(img: &[u8], c: usize, h: usize, w: usize, nh: usize, nw: usize) -> Vec<u8> {
    if (h, w) == (nh, nw) {
        return img.to_vec();
    }
    let (wx, wy) = (area_weights(w, nw), area_weights(h, nh));
    let mut out = Vec::with_capacity(c * nh * nw);
    let mut tmp = vec![0f64; h * nw];
    for plane in img.chunks(h * w).take(c) {
        if plane.len() < h * w {
            break;
        }
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for (x, ws) in wx.iter().enumerate() {
                tmp[y * nw + x] = ws.iter().map(|&(i, k)| row[i] as f64 * k).sum();
            }
        }
        for ws in &wy {
            for x in 0..nw {
                let v: f64 = ws.iter().map(|&(j, k)| tmp[j * nw + x] * k).sum();
                // The epsilon keeps an exact .5 mean (of whole factors) from rounding down
                // through the f64 error of weights such as 1/3.
                out.push((v + 0.5 + 1e-9).floor().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// [`resize_area`] for every image of a split (`n` images of `[c, h, w]`), in parallel.
pub fn resize_split(
    pixels: &[u8],
    n: usize,
    c: usize,
    (h, w): (usize, usize),
    (nh, nw): (usize, usize),
) -> Vec<u8> {
    if (h, w) == (nh, nw) || n == 0 {
        return pixels.to_vec();
    }
    let per = c * h * w;
    let out: Vec<Vec<u8>> = pixels
        .par_chunks(per.max(1))
        .map(|img| resize_area(img, c, h, w, nh, nw))
        .collect();
    out.concat()
}

/// A byte count for messages: `512 B`, `3.4 MiB`, `1.2 GiB`.
pub fn human_bytes(b: u128) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", b as f64 / 1_048_576.0),
        _ => format!("{:.1} GiB", b as f64 / 1_073_741_824.0),
    }
}

/// Checks a `data.resize` target: both sides at least 1.
pub fn check_resize(resize: Option<(usize, usize)>) -> Result<(), crate::error::UsageError> {
    match resize {
        Some((h, w)) if h == 0 || w == 0 => Err(crate::error::UsageError(format!(
            "data.resize = [{h}, {w}]: both sides must be at least 1; fix it or drop data.resize"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_is_itu_601() {
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(10, 20, 30), 18); // 2.99 + 11.74 + 3.42 = 18.15
    }

    #[test]
    fn channel_conversion() {
        // Two pixels, RGB planes.
        let rgb = [255, 0, /* G */ 0, 255, /* B */ 0, 0];
        assert_eq!(convert_channels(&rgb, 2, 3, 1), vec![76, 150]);
        assert_eq!(convert_channels(&[7, 9], 2, 1, 3), vec![7, 9, 7, 9, 7, 9]);
        // RGBA drops alpha.
        let rgba = [1, 2, 3, 4, 5, 6, 200, 200];
        assert_eq!(convert_channels(&rgba, 2, 4, 3), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(convert_split(&[1, 2, 3, 4], 2, 2, 1, 3).len(), 12);
    }

    #[test]
    fn area_resize_of_whole_factors_is_the_block_mean() {
        // 4x4 -> 2x2: the mean of each 2x2 block.
        let img: Vec<u8> = (0..16).map(|i| i * 10).collect();
        let out = resize_area(&img, 1, 4, 4, 2, 2);
        // Block (0,0): 0, 10, 40, 50 -> 25.
        assert_eq!(out, vec![25, 45, 105, 125]);
        // 2x3 -> 1x1: (1+2+3+4+5+6)/6 = 3.5 rounds to 4.
        assert_eq!(resize_area(&[1, 2, 3, 4, 5, 6], 1, 2, 3, 1, 1), vec![4]);
        // 3x3 -> 1x1 of two channels.
        let two: Vec<u8> = [vec![9; 9], (0..9).collect()].concat();
        assert_eq!(resize_area(&two, 2, 3, 3, 1, 1), vec![9, 4]);
        // Upscale 1x2 -> 2x4 replicates.
        assert_eq!(
            resize_area(&[10, 20], 1, 1, 2, 2, 4),
            vec![10, 10, 20, 20, 10, 10, 20, 20]
        );
        // A non-integer factor: 3 -> 2, output 0 covers [0, 1.5): (30 + 60/2) / 1.5 = 40.
        assert_eq!(resize_area(&[30, 60, 90], 1, 1, 3, 1, 2), vec![40, 80]);
        // A short buffer gives a short output, not a panic.
        assert!(resize_area(&[1, 2, 3], 1, 4, 4, 2, 2).is_empty());
        assert_eq!(
            resize_split(&img.repeat(3), 3, 1, (4, 4), (2, 2)),
            out.repeat(3)
        );
    }
}
