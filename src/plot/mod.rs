//! PNG charts of training runs: learning curves, a comparison of several runs, and a
//! confusion matrix. Here: the charts' entry points and sizes; [`canvas`] renders and
//! sets text, [`lines`] draws line charts, [`confusion`] the matrix.
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

mod canvas;
mod confusion;
mod gains;
mod lines;

pub(crate) use canvas::*;
pub(crate) use confusion::heat;
use confusion::*;
use lines::*;

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

/// Writes `gains.png` ([`gains::GAINS_SIZE`], 800 x 500 px): for each paired gain of a
/// `reproduce` (a distilled student over the student alone, same seed), one column: each
/// seed's gain as a dot, the mean as a thick bar, the 95% t-interval as a whisker, and a
/// line at zero. y axis: gain in percentage points of test accuracy.
pub fn gains_png(path: &Path, gains: &[crate::report::Gain]) -> Result<()> {
    render(path, gains::GAINS_SIZE, |root| {
        self::gains::gains(root, gains)
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

/// Decoded charts for the tests: which pixels have which colour.
#[cfg(test)]
pub(crate) mod test_image {
    use plotters::style::RGBColor;

    /// An RGB image read back from a PNG.
    pub(crate) struct Image {
        pub(crate) w: u32,
        pub(crate) h: u32,
        rgb: Vec<u8>,
    }

    impl Image {
        /// Decodes the PNG at `path` (RGB, 8 bits, as [`super::render`] writes).
        pub(crate) fn read(path: &std::path::Path) -> Image {
            let bytes = std::fs::read(path).unwrap();
            assert!(bytes.starts_with(&[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]));
            let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
                .read_info()
                .unwrap();
            let mut rgb = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut rgb).unwrap();
            assert_eq!(info.color_type, png::ColorType::Rgb);
            Image {
                w: info.width,
                h: info.height,
                rgb,
            }
        }

        /// The pixels `(x, y)` of exactly colour `c` with `x` in `xs`.
        pub(crate) fn pixels(&self, c: RGBColor, xs: std::ops::Range<u32>) -> Vec<(u32, u32)> {
            let mut out = Vec::new();
            for y in 0..self.h {
                for x in xs.start..xs.end.min(self.w) {
                    let i = ((y * self.w + x) * 3) as usize;
                    if self.rgb[i..i + 3] == [c.0, c.1, c.2] {
                        out.push((x, y));
                    }
                }
            }
            out
        }

        /// Whether any channel of any pixel is below 128 (something dark was drawn).
        pub(crate) fn has_dark(&self) -> bool {
            self.rgb.iter().any(|&b| b < 128)
        }

        /// How many pixels have exactly colour `c`.
        pub(crate) fn count(&self, c: RGBColor) -> usize {
            self.pixels(c, 0..self.w).len()
        }

        /// For a line of colour `c` within `xs`: its leftmost and rightmost columns, each
        /// with the mean row of the colour's pixels there (`(x, y)`, y down).
        pub(crate) fn ends(
            &self,
            c: RGBColor,
            xs: std::ops::Range<u32>,
        ) -> ((u32, f64), (u32, f64)) {
            self.ends_in(c, xs, 0..self.h)
        }

        /// [`Image::ends`] among the rows `ys` only (to leave a legend out).
        pub(crate) fn ends_in(
            &self,
            c: RGBColor,
            xs: std::ops::Range<u32>,
            ys: std::ops::Range<u32>,
        ) -> ((u32, f64), (u32, f64)) {
            let mut px = self.pixels(c, xs);
            px.retain(|p| ys.contains(&p.1));
            assert!(!px.is_empty(), "no pixel of {c:?}");
            let at = |x: u32| {
                let ys: Vec<f64> = px
                    .iter()
                    .filter(|p| p.0 == x)
                    .map(|p| f64::from(p.1))
                    .collect();
                ys.iter().sum::<f64>() / ys.len() as f64
            };
            let lo = px.iter().map(|p| p.0).min().unwrap();
            let hi = px.iter().map(|p| p.0).max().unwrap();
            ((lo, at(lo)), (hi, at(hi)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use test_image::Image;

    /// A fresh path in the system temp dir, unique to this process and test.
    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kdtrain-plot-test-{}-{name}", std::process::id()))
    }

    /// Checks that `path` is a PNG of `size` that decodes, with something besides the
    /// white background drawn; deletes it and returns it decoded, with its length in bytes.
    fn check_png(path: &Path, size: (u32, u32)) -> (Image, u64) {
        let img = Image::read(path);
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::remove_file(path).unwrap();
        assert_eq!((img.w, img.h), size);
        assert!(img.has_dark(), "nothing drawn");
        (img, len)
    }

    const NAMES: [&str; 10] = crate::data::cifar::CIFAR10_NAMES;

    fn decay(n: usize, start: f64, end: f64, tau: f64) -> Vec<f64> {
        (0..n)
            .map(|i| end + (start - end) * (-(i as f64) / tau).exp())
            .collect()
    }

    /// Which of the palette's six colours the chart uses (series and legend samples; the
    /// palette's grey and black also occur in anti-aliased text, so they are not asked).
    fn palette_used(img: &Image) -> Vec<usize> {
        (0..6).filter(|&i| img.count(PALETTE[i]) > 0).collect()
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
        let (img, len) = check_png(&p, CURVES_SIZE);
        assert!(len < 200_000);
        // Train in blue, validation in vermillion, in both panels, and nothing else.
        assert_eq!(palette_used(&img), vec![0, 1]);
        let half = CURVES_SIZE.0 / 2;
        let (left, right) = (0..half, half..CURVES_SIZE.0);
        for c in [PALETTE[0], PALETTE[1]] {
            // Loss falls (its first point is higher on the image than its last), accuracy
            // rises, and each line spans most of its panel's width (not a legend sample).
            let ((x0, y0), (x1, y1)) = img.ends(c, left.clone());
            assert!(
                y0 < y1 - 100.0 && x1 - x0 > half * 3 / 5,
                "loss {c:?}: {x0},{y0} {x1},{y1}"
            );
            let ((x0, y0), (x1, y1)) = img.ends(c, right.clone());
            assert!(
                y0 > y1 + 100.0 && x1 - x0 > half * 3 / 5,
                "acc {c:?}: {x0},{y0} {x1},{y1}"
            );
        }
        // At the last epoch the training loss (0.2) lies below the validation loss (0.4)
        // and the training accuracy (98%) above the validation accuracy (91%).
        let (_, (_, train_loss)) = img.ends(PALETTE[0], left.clone());
        let (_, (_, val_loss)) = img.ends(PALETTE[1], left);
        assert!(train_loss > val_loss + 10.0, "{train_loss} {val_loss}");
        let (_, (_, train_acc)) = img.ends(PALETTE[0], right.clone());
        let (_, (_, val_acc)) = img.ends(PALETTE[1], right);
        assert!(train_acc < val_acc - 5.0, "{train_acc} {val_acc}");
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
        let (img, len) = check_png(&p, COMPARISON_SIZE);
        assert!(len < 200_000);
        // One colour per run, in order, and no other.
        assert_eq!(palette_used(&img), vec![0, 1, 2]);
        // Where each line starts (anywhere) and ends (in the top half: the curves end
        // above 85%, and the legend sits in the lower right).
        let (all, top) = (0..COMPARISON_SIZE.0, 0..COMPARISON_SIZE.1 / 2);
        let end = |c| img.ends_in(c, all.clone(), top.clone()).1;
        // All three start at epoch 1 with 10%, where the last drawn (distilled) covers
        // the others' first markers.
        let d0 = img.ends(PALETTE[2], all.clone()).0.0;
        let ((t40, t_end), (s25, s_end), (d25, d_end)) =
            (end(PALETTE[0]), end(PALETTE[1]), end(PALETTE[2]));
        // The students end at epoch 25 of the teacher's 40.
        let at25 = f64::from(d0) + 24.0 / 39.0 * f64::from(t40 - d0);
        for x in [s25, d25] {
            assert!(
                (f64::from(x) - at25).abs() <= 4.0,
                "epoch 25 at x {x}, expected {at25}"
            );
        }
        // Final accuracies: teacher 93% above distilled 89% above student 86%.
        assert!(t_end < d_end && d_end < s_end, "{t_end} {d_end} {s_end}");
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
        let (img, len) = check_png(&p, CONFUSION_SIZE);
        assert!(len < 200_000);
        // Each diagonal cell is shaded by its share of the row: a block of that colour
        // (a cell is about 50 x 50 px, less its number).
        for (r, row) in counts.iter().enumerate() {
            let share = row[r] as f64 / row.iter().sum::<u64>() as f64;
            let n = img.count(heat(share));
            assert!(n > 1000, "row {r}: {n} pixels of heat({share})");
        }
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
        // Both colours, always: a series without data keeps its legend entry, labelled
        // "(no data)".
        let expected: [&[usize]; 5] = [&[0, 1], &[0, 1], &[0, 1], &[0, 1], &[0, 1]];
        for ((name, c), want) in cases.iter().zip(expected) {
            let p = tmp(&format!("curves-{name}.png"));
            curves_png(&p, c).unwrap();
            let (img, _) = check_png(&p, CURVES_SIZE);
            assert_eq!(palette_used(&img), want, "{name}");
            let half = CURVES_SIZE.0 / 2;
            // Flat series are horizontal lines across the panel (validation, drawn last,
            // covers the equal training loss).
            if *name == "flat" {
                let ((x0, y0), (x1, y1)) = img.ends(PALETTE[1], 0..half);
                assert!((y0 - y1).abs() < 1.0 && x1 - x0 > half / 2, "{name}");
            }
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
        // Runs that share a name share a colour: twelve seeds of one model are one
        // colour; no run at all, no colour.
        let expected: [&[usize]; 5] = [&[], &[0, 1], &[0], &[0, 1], &[0]];
        for ((name, runs), want) in cases.iter().zip(expected) {
            let p = tmp(&format!("comparison-{name}.png"));
            comparison_png(&p, name, runs).unwrap();
            let (img, _) = check_png(&p, COMPARISON_SIZE);
            assert_eq!(palette_used(&img), want, "{name}");
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
            let (img, _) = check_png(&p, CONFUSION_SIZE);
            let darkest = img.count(heat(1.0));
            match *name {
                // No cell: nothing shaded.
                "empty" => assert_eq!(img.count(heat(0.0)), 0, "{name}"),
                // Rows without examples are near-white throughout.
                "zeros" => assert!(img.count(heat(0.0)) > 10_000 && darkest == 0, "{name}"),
                // Row 0 of "huge" holds two halves, row 1 all of column 1.
                "huge" => assert!(img.count(heat(0.5)) > 1000 && darkest > 1000, "{name}"),
                // Every row of "big" is 120 equal shares.
                "big" => assert!(img.count(heat(1.0 / 120.0)) > 5000, "{name}"),
                _ => {}
            }
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
