//! `predict` and `export` on the real Fashion-MNIST test set, with a student and a
//! teacher trained for one epoch here. The exports are run by the project's Python
//! (KDTRAIN_PYTHON, set for cargo by .cargo/config.toml): the README's own snippets,
//! followed by a few lines that feed the 10,000 test images and write the logits back.
//! Needs the data (Debian's dataset-fashion-mnist, or FASHION_MNIST_DIR) and the venv of
//! scripts/setup.sh; without them these tests fail rather than pass silently.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use image::{DynamicImage, GrayImage, Luma, Rgb, RgbImage};
use kdtrain::data::{Examples, read_split};
use tch::{Device, Tensor};

fn data_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("FASHION_MNIST_DIR")
            .unwrap_or_else(|_| kdtrain::data::DEBIAN_DIR.to_string()),
    )
}

/// The test split's file, gzipped or not.
fn data_file(stem: &str) -> PathBuf {
    let gz = data_dir().join(format!("{stem}.gz"));
    if gz.exists() {
        gz
    } else {
        data_dir().join(stem)
    }
}

fn test_images() -> PathBuf {
    data_file("t10k-images-idx3-ubyte")
}

/// A student and a teacher trained for one epoch on the real data, shared by the tests
/// (the folder lives as long as the test process).
struct Trained {
    dir: PathBuf,
}

impl Trained {
    fn ckpt(&self, model: &str) -> PathBuf {
        self.dir.join(model).join("model.safetensors")
    }

    /// Test accuracy that training reported in summary.json.
    fn summary_acc(&self, model: &str) -> f64 {
        let s: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.dir.join(model).join("summary.json")).unwrap(),
        )
        .unwrap();
        s["test_acc"].as_f64().unwrap()
    }
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let s = Sandbox::new();
        for model in ["student", "teacher"] {
            assert_ok(&s.raw(&[
                "train",
                model,
                "--epochs",
                "1",
                "--data-dir",
                data_dir().to_str().unwrap(),
                "--out-dir",
                dir.to_str().unwrap(),
                "--run-name",
                model,
                "--quiet",
            ]));
        }
        Trained { dir }
    })
}

/// The test set as kdtrain trains and evaluates on it: `[10000, 784]` f32 in [0, 1] and labels.
fn test_set() -> &'static (Vec<u8>, Vec<i64>) {
    static S: OnceLock<(Vec<u8>, Vec<i64>)> = OnceLock::new();
    S.get_or_init(|| {
        let (split, _, _) =
            read_split(&test_images(), &data_file("t10k-labels-idx1-ubyte")).unwrap();
        (split.pixels, split.labels)
    })
}

/// kdtrain's logits for the test set through the library (evaluate's path: the
/// checkpoint's network on `Examples::from_split`), `[10000, 10]` row-major.
fn library_logits(ckpt: &Path) -> Vec<f32> {
    let (split, _, _) = read_split(&test_images(), &data_file("t10k-labels-idx1-ubyte")).unwrap();
    let ex = Examples::from_split(&split, Device::Cpu);
    let model = kdtrain::predict::load_network(ckpt, Device::Cpu).unwrap();
    let logits = model.logits(&ex.images);
    Vec::<f32>::try_from(logits.flatten(0, -1)).unwrap()
}

fn argmax_rows(logits: &[f32]) -> Vec<i64> {
    logits
        .chunks(10)
        .map(|r| {
            let mut best = 0;
            for (i, &v) in r.iter().enumerate() {
                if v > r[best] {
                    best = i;
                }
            }
            best as i64
        })
        .collect()
}

fn accuracy(pred: &[i64], labels: &[i64]) -> f64 {
    pred.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64
}

/// `predict --json` lines as JSON values.
fn json_lines(o: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn predict_on_the_test_idx_gives_evaluates_predictions() {
    let t = trained();
    let ckpt = t.ckpt("student");
    let s = Sandbox::new();
    let o = s.raw(&[
        "predict".as_ref(),
        ckpt.as_os_str(),
        test_images().as_os_str(),
        "--json".as_ref(),
        "--top".as_ref(),
        "10".as_ref(),
    ]);
    assert_ok(&o);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 10_000);
    let logits = library_logits(&ckpt);
    let want = argmax_rows(&logits);
    let got: Vec<i64> = lines.iter().map(|l| l["class"].as_i64().unwrap()).collect();
    assert_eq!(
        got, want,
        "predict's classes differ from the library's argmax"
    );
    // Probabilities are the softmax of the same logits.
    for (i, l) in lines.iter().enumerate().step_by(997) {
        let row = &logits[i * 10..(i + 1) * 10];
        let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        for r in l["top"].as_array().unwrap() {
            let c = r["class"].as_u64().unwrap() as usize;
            let p = f64::from(row[c]).exp() / z;
            assert!(
                (r["probability"].as_f64().unwrap() - p).abs() < 1e-6,
                "{i}: {r}"
            );
        }
        assert_eq!(l["index"], i);
    }
    // And the accuracy is the one training reported for the test set.
    let acc = accuracy(&got, &test_set().1);
    assert_eq!(
        acc,
        t.summary_acc("student"),
        "accuracy from predict vs summary.json"
    );
}

#[test]
fn predict_reports_output_it_could_not_write() {
    use std::io::Read as _;
    use std::process::Stdio;
    let t = trained();
    let ckpt = t.ckpt("student");
    let s = Sandbox::new();
    let images = test_images();
    let args = ["predict".as_ref(), ckpt.as_os_str(), images.as_os_str()];
    // A full disk: every write to /dev/full fails with ENOSPC, and that is an error.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = s.command(&args).stdout(full).output().unwrap();
    assert_fails(
        &o,
        1,
        &[
            "could not write the predictions to standard output",
            "space",
        ],
    );
    // Nor can it write to a descriptor open for reading only (`1<file`).
    let read_only = std::fs::File::open(&ckpt).unwrap();
    let o = s.command(&args).stdout(read_only).output().unwrap();
    assert_fails(
        &o,
        1,
        &[
            "could not write the predictions to standard output",
            "descriptor",
        ],
    );
    // A reader that stops early (`| head -1`) is not an error: the output ends quietly.
    let mut child = s
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap(); // the pipe closes here
    let o = child.wait_with_output().unwrap();
    assert_ok(&o);
}

/// Writes test image `i` as PNG in several forms; returns (file, test index).
fn write_pngs(dir: &Path, indices: &[usize]) -> Vec<(PathBuf, usize)> {
    let pixels = &test_set().0;
    let mut out = Vec::new();
    for (k, &i) in indices.iter().enumerate() {
        let img = GrayImage::from_raw(28, 28, pixels[i * 784..(i + 1) * 784].to_vec()).unwrap();
        let up = |f: u32, g: &GrayImage| {
            image::imageops::resize(g, 28 * f, 28 * f, image::imageops::FilterType::Nearest)
        };
        let inverse = GrayImage::from_fn(28, 28, |x, y| Luma([255 - img.get_pixel(x, y)[0]]));
        let (name, dynimg) = match k % 4 {
            0 => ("grey28", DynamicImage::ImageLuma8(img.clone())),
            1 => ("grey-x3", DynamicImage::ImageLuma8(up(3, &img))),
            2 => {
                let big = up(2, &img);
                let rgb = RgbImage::from_fn(56, 56, |x, y| {
                    let v = big.get_pixel(x, y)[0];
                    Rgb([v, v, v])
                });
                ("rgb-x2", DynamicImage::ImageRgb8(rgb))
            }
            _ => (
                "dark-on-light-x2",
                DynamicImage::ImageLuma8(up(2, &inverse)),
            ),
        };
        let path = dir.join(format!("{i:05}-{name}.png"));
        dynimg.save(&path).unwrap();
        out.push((path, i));
    }
    out
}

#[test]
fn png_files_give_the_same_predictions_as_the_idx() {
    let t = trained();
    let ckpt = t.ckpt("student");
    let s = Sandbox::new();
    let dir = s.path().join("pngs");
    std::fs::create_dir_all(&dir).unwrap();
    let indices: Vec<usize> = (0..16).map(|k| k * 613).collect();
    let files = write_pngs(&dir, &indices);
    std::fs::write(dir.join("README.txt"), "not an image").unwrap();
    let o = s.raw(&[
        "predict".as_ref(),
        ckpt.as_os_str(),
        dir.as_os_str(),
        "--json".as_ref(),
    ]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("README.txt: not a PNG, JPEG, BMP, GIF or WebP file"),
        "{}",
        stderr(&o)
    );
    let lines = json_lines(&o);
    assert_eq!(lines.len(), files.len());
    let logits = library_logits(&ckpt);
    let want = argmax_rows(&logits);
    // The image folder's other formats (BMP, GIF, lossless WebP) read the same pixels,
    // so they give the IDX's classes and the PNG's probabilities.
    let others = s.path().join("others");
    std::fs::create_dir_all(&others).unwrap();
    let mut paths = Vec::new();
    for ((png, i), ext) in files.iter().zip(["bmp", "gif", "webp"]) {
        let p = others.join(format!("{i:05}.{ext}"));
        image::open(png).unwrap().to_rgba8().save(&p).unwrap();
        paths.push((p, *i, png));
    }
    let args: Vec<&std::ffi::OsStr> = ["predict".as_ref(), ckpt.as_os_str(), "--json".as_ref()]
        .into_iter()
        .chain(paths.iter().map(|(p, _, _)| p.as_os_str()))
        .collect();
    let o = s.raw(&args);
    assert_ok(&o);
    for ((p, i, png), l) in paths.iter().zip(json_lines(&o)) {
        assert_eq!(l["class"].as_i64().unwrap(), want[*i], "{}", p.display());
        let from_png = lines
            .iter()
            .find(|m| m["source"] == png.display().to_string())
            .unwrap();
        assert!(
            (l["probability"].as_f64().unwrap() - from_png["probability"].as_f64().unwrap()).abs()
                < 1e-6,
            "{l} vs {from_png}"
        );
    }
    for ((path, i), l) in files.iter().zip(&lines) {
        assert_eq!(l["source"], path.display().to_string());
        assert_eq!(l["class"].as_i64().unwrap(), want[*i], "{}", path.display());
        let inverted = l["inverted"].as_bool().unwrap();
        assert_eq!(
            inverted,
            path.to_string_lossy().contains("dark-on-light"),
            "{l}"
        );
        let row = &logits[i * 10..(i + 1) * 10];
        let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        let p = f64::from(row[want[*i] as usize]).exp() / z;
        assert!((l["probability"].as_f64().unwrap() - p).abs() < 1e-5, "{l}");
    }
}

#[test]
fn dark_on_light_and_its_inverse_give_the_same_class() {
    let t = trained();
    let s = Sandbox::new();
    let pixels = &test_set().0;
    let mut args: Vec<std::ffi::OsString> = vec!["predict".into(), t.ckpt("student").into()];
    for i in [0usize, 1, 2, 3, 4] {
        let light = GrayImage::from_raw(28, 28, pixels[i * 784..(i + 1) * 784].to_vec()).unwrap();
        let dark = GrayImage::from_fn(28, 28, |x, y| Luma([255 - light.get_pixel(x, y)[0]]));
        for (name, img) in [("light", light), ("dark", dark)] {
            // 5x, as a photo of a product on white would be larger than 28 pixels.
            let big = image::imageops::resize(&img, 140, 140, image::imageops::FilterType::Nearest);
            let p = s.path().join(format!("{i}-{name}-object.png"));
            big.save(&p).unwrap();
            args.push(p.into());
        }
    }
    let o = s.raw(&args);
    assert_ok(&o);
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 10, "{lines:?}");
    for pair in lines.chunks(2) {
        let a = pair[0].split_once(": ").unwrap().1;
        let b = pair[1].split_once(": ").unwrap().1;
        assert_eq!(a, b, "{pair:?}");
        assert!(
            pair[1].contains("(inverted)") && !pair[0].contains("(inverted)"),
            "{pair:?}"
        );
    }
}

#[test]
fn unreadable_images_are_named_and_the_others_classified() {
    let t = trained();
    let s = Sandbox::new();
    let good = write_pngs(s.path(), &[7]).remove(0).0;
    let bytes = std::fs::read(&good).unwrap();
    let corrupt = s.path().join("corrupt.png");
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    let text = s.path().join("notes.jpg");
    std::fs::write(&text, "just text").unwrap();
    let o = s.raw(&[
        "predict".as_ref(),
        t.ckpt("student").as_os_str(),
        corrupt.as_os_str(),
        good.as_os_str(),
        text.as_os_str(),
        "missing.png".as_ref(),
    ]);
    assert_fails(
        &o,
        1,
        &["corrupt.png", "notes.jpg", "missing.png", "3 of 4 inputs"],
    );
    let err = stderr(&o);
    assert!(
        err.contains("corrupt.png: the image data is corrupt or truncated"),
        "{err}"
    );
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(stdout(&o).starts_with(&good.display().to_string()));
}

#[test]
fn usage_errors_exit_2() {
    let t = trained();
    let s = Sandbox::new();
    let ckpt = t.ckpt("student");
    let c = ckpt.to_str().unwrap();
    let idx = test_images();
    let idx = idx.to_str().unwrap();
    let png = write_pngs(s.path(), &[0]).remove(0).0;
    let png = png.to_str().unwrap();
    assert_fails(
        &s.raw(&["predict", c, idx, "--top", "11"]),
        2,
        &["--top", "11"],
    );
    assert_fails(&s.raw(&["predict", c, idx, "--top", "0"]), 2, &["--top"]);
    let one = s.raw(&["predict", c, png]);
    assert_ok(&one);
    let err = String::from_utf8_lossy(&one.stderr);
    assert!(err.contains("predict: 1 image;"), "{err}");
    assert_fails(
        &s.raw(&["predict", c, idx, "--index", "10000"]),
        2,
        &["--index 10000", "t10k-images", "10000 images"],
    );
    assert_fails(&s.raw(&["predict", c, idx, "--index=-1"]), 2, &["--index"]);
    assert_fails(
        &s.raw(&["predict", c, idx, "--index", "two"]),
        2,
        &["--index", "two"],
    );
    assert_fails(
        &s.raw(&["predict", c, png, "--index", "0"]),
        2,
        &["--index", "no IDX file"],
    );
    // An IDX file named where it is not: its absence is the error, not "no IDX file".
    let o = s.raw(&["predict", c, "t10k-images-idx3-ubyte.gz", "--index", "17"]);
    assert_fails(&o, 2, &["t10k-images-idx3-ubyte.gz does not exist", "data"]);
    assert!(!stderr(&o).contains("no IDX file"), "{}", stderr(&o));
    // Without --index, an input that cannot be read is reported; nothing else was there.
    assert_fails(
        &s.raw(&["predict", c, "absent.png"]),
        1,
        &["1 of 1 inputs could not be read", "nothing was classified"],
    );
    assert_fails(
        &s.raw(&["predict", "nope.safetensors", png]),
        2,
        &["nope.safetensors"],
    );
    assert_fails(
        &s.raw(&["predict", c, png, "--invert", "maybe"]),
        2,
        &["--invert"],
    );
    // Training flags do nothing here and are refused by name, for export too.
    assert_fails(
        &s.raw(&["predict", c, png, "--epochs", "3", "--lr", "5"]),
        2,
        &["predict", "--epochs, --lr", "drop them"],
    );
    let out = s.path().join("x.pt");
    let out = out.to_str().unwrap();
    for flag in ["--resume", "--data-dir=data", "--run-name=r"] {
        assert_fails(
            &s.raw(&["export", c, "--format", "torchscript", "-o", out, flag]),
            2,
            &["export", flag.split('=').next().unwrap(), "drop it"],
        );
    }
    assert!(!Path::new(out).exists());
    // evaluate reads the data set: the hint about fetching it comes only with --download.
    let o = s.raw(&["evaluate", c, "--epochs", "3"]);
    assert_fails(&o, 2, &["evaluate", "--epochs", "drop it"]);
    assert!(!stderr(&o).contains("fetch"), "{}", stderr(&o));
    assert_fails(
        &s.raw(&["evaluate", c, "--download"]),
        2,
        &["--download", "to fetch the data", "--data-dir"],
    );
    // --index picks one image, --top 10 lists every class.
    let o = s.raw(&["predict", c, idx, "--index", "42", "--top", "10"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.starts_with(&format!("{idx}[42]: ")), "{out}");
    assert_eq!(out.matches(", ").count(), 9, "{out}");
}

// ---------------------------------------------------------------------------- export

/// The ```python block after `<!-- test: NAME -->` in README.md.
fn readme_snippet(name: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let marker = format!("<!-- test: {name} -->");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"));
    let rest = &readme[at..];
    let start = rest.find("```python\n").unwrap() + "```python\n".len();
    let len = rest[start..].find("```").unwrap();
    rest[start..start + len].to_string()
}

/// Appended to a README snippet, which defines `model` (PyTorch) or `session`
/// (onnxruntime): the 10,000 test images through it, logits to KD_OUT as raw f32.
const FEED_TEST_SET: &str = r#"
import gzip, os, numpy as np
path = os.environ["KD_IDX"]
raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
if "session" in globals():
    print("input", session.get_inputs()[0].shape, "output", session.get_outputs()[0].shape)
    print("meta", sorted(session.get_modelmeta().custom_metadata_map))
    out = session.run(None, {session.get_inputs()[0].name: imgs})[0]
else:
    import torch
    with torch.no_grad():
        out = model(torch.from_numpy(imgs)).numpy()
np.ascontiguousarray(out, dtype="<f4").tofile(os.environ["KD_OUT"])
"#;

/// Runs `snippet` + [`FEED_TEST_SET`] in `dir`; returns its stdout and the logits.
fn run_python(dir: &Path, snippet: &str) -> (String, Vec<f32>) {
    let out = dir.join("logits.f32");
    let o = std::process::Command::new(python())
        .args(["-W", "ignore", "-c"])
        .arg(format!("{snippet}\n{FEED_TEST_SET}"))
        .env("KD_IDX", test_images())
        .env("KD_OUT", &out)
        .current_dir(dir)
        .output()
        .expect("run python");
    let text = format!("{}{}", stdout(&o), stderr(&o));
    assert!(o.status.success(), "python failed:\n{snippet}\n{text}");
    let bytes = std::fs::read(&out).unwrap();
    let logits = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (text, logits)
}

/// max |Δ| <= 1e-5 and identical accuracy against kdtrain's own logits.
#[track_caller]
fn assert_same_logits(got: &[f32], ckpt: &Path) {
    let want = library_logits(ckpt);
    assert_eq!(got.len(), want.len(), "logits count");
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max <= 1e-5, "max |delta| = {max}");
    let labels = &test_set().1;
    assert_eq!(
        accuracy(&argmax_rows(got), labels),
        accuracy(&argmax_rows(&want), labels)
    );
}

fn export(s: &Sandbox, ckpt: &Path, format: &str, out: &str) -> PathBuf {
    let o = s.raw(&[
        "export".as_ref(),
        ckpt.as_os_str(),
        "--format".as_ref(),
        format.as_ref(),
        "-o".as_ref(),
        s.path().join(out).as_os_str(),
    ]);
    assert_ok(&o);
    let path = s.path().join(out);
    assert_eq!(stdout(&o).trim(), path.display().to_string());
    // The sidecar describes the input, the classes and the architecture.
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.json", path.display())).unwrap())
            .unwrap();
    assert_eq!(
        side["input"]["shape"],
        serde_json::json!(["batch", 1, 28, 28])
    );
    assert_eq!(side["class_names"][9], "Ankle boot");
    assert_eq!(side["format"], format);
    path
}

#[test]
fn torchscript_export_runs_in_pytorch_for_student_and_teacher() {
    let t = trained();
    for model in ["student", "teacher"] {
        let s = Sandbox::new();
        export(&s, &t.ckpt(model), "torchscript", &format!("{model}.pt"));
        let snippet = readme_snippet("torchscript").replace("student.", &format!("{model}."));
        let (_, logits) = run_python(s.path(), &snippet);
        assert_same_logits(&logits, &t.ckpt(model));
    }
}

#[test]
fn onnx_export_runs_in_onnxruntime() {
    let t = trained();
    let s = Sandbox::new();
    export(&s, &t.ckpt("student"), "onnx", "student.onnx");
    let (text, logits) = run_python(s.path(), &readme_snippet("onnx"));
    assert!(
        text.contains("input ['batch', 1, 28, 28] output ['batch', 10]"),
        "{text}"
    );
    assert!(text.contains("kdtrain.export"), "{text}");
    assert_same_logits(&logits, &t.ckpt("student"));
}

#[test]
fn safetensors_torch_loads_into_the_readme_sequential() {
    let t = trained();
    let s = Sandbox::new();
    let path = export(
        &s,
        &t.ckpt("student"),
        "safetensors-torch",
        "student.safetensors",
    );
    let (_, logits) = run_python(s.path(), &readme_snippet("safetensors-torch"));
    assert_same_logits(&logits, &t.ckpt("student"));
    let meta = kdtrain::checkpoint::Checkpoint::read(&path)
        .unwrap()
        .metadata;
    assert!(
        meta["kdtrain.export"].contains("Linear(784, 128)"),
        "{meta:?}"
    );
}

#[test]
fn export_refuses_to_overwrite_and_defaults_next_to_the_checkpoint() {
    let t = trained();
    let s = Sandbox::new();
    let ckpt = s.path().join("model.safetensors");
    std::fs::copy(t.ckpt("student"), &ckpt).unwrap();
    let c = ckpt.to_str().unwrap();
    let o = s.raw(&["export", c, "--format", "torchscript"]);
    assert_ok(&o);
    let pt = s.path().join("model.pt");
    assert!(pt.exists() && s.path().join("model.pt.json").exists());
    let before = std::fs::read(&pt).unwrap();
    assert_fails(
        &s.raw(&["export", c, "--format", "torchscript"]),
        2,
        &["model.pt already exists", "--force"],
    );
    assert_eq!(
        std::fs::read(&pt).unwrap(),
        before,
        "refused export changed the file"
    );
    let other = s.path().join("other.bin");
    std::fs::write(&other, "keep me").unwrap();
    assert_fails(
        &s.raw(&[
            "export",
            c,
            "--format",
            "safetensors-torch",
            "-o",
            other.to_str().unwrap(),
        ]),
        2,
        &["other.bin already exists"],
    );
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me");
    assert_ok(&s.raw(&["export", c, "--format", "torchscript", "--force"]));
    // A folder given as -o is named as such, with or without --force, and left alone.
    let folder = s.path().join("exports");
    std::fs::create_dir(&folder).unwrap();
    for force in [&[][..], &["--force"][..]] {
        let args = [
            &[
                "export",
                c,
                "--format",
                "onnx",
                "-o",
                folder.to_str().unwrap(),
            ][..],
            force,
        ]
        .concat();
        assert_fails(
            &s.raw(&args),
            2,
            &["exports is a folder", "exports/model.onnx"],
        );
    }
    assert!(folder.is_dir() && std::fs::read_dir(&folder).unwrap().next().is_none());
    // So is a name ending in '/', even when no such folder exists.
    let slash = format!("{}/", s.path().join("new").display());
    assert_fails(
        &s.raw(&["export", c, "--format", "torchscript", "-o", &slash]),
        2,
        &["new/ is a folder", "new/model.pt"],
    );
    // A folder where the sidecar goes is named as the sidecar's place.
    std::fs::create_dir(s.path().join("side.pt.json")).unwrap();
    let side = s.path().join("side.pt");
    assert_fails(
        &s.raw(&[
            "export",
            c,
            "--format",
            "torchscript",
            "-o",
            side.to_str().unwrap(),
        ]),
        2,
        &["side.pt.json is a folder, where the export's sidecar"],
    );
    // The sidecar may not overwrite the checkpoint either.
    let ck_json = s.path().join("ck.json");
    std::fs::copy(&ckpt, &ck_json).unwrap();
    let before_ck = std::fs::read(&ck_json).unwrap();
    let o = s.raw(&[
        "export",
        ck_json.to_str().unwrap(),
        "--format",
        "torchscript",
        "-o",
        s.path().join("ck").to_str().unwrap(),
        "--force",
    ]);
    assert_fails(&o, 2, &["the sidecar of -o", "is the checkpoint itself"]);
    assert_eq!(std::fs::read(&ck_json).unwrap(), before_ck);
    assert_fails(
        &s.raw(&[
            "export",
            c,
            "--format",
            "safetensors-torch",
            "-o",
            c,
            "--force",
        ]),
        2,
        &["is the checkpoint itself"],
    );
    assert_fails(
        &s.raw(&["export", "nope.safetensors", "--format", "onnx"]),
        2,
        &["nope.safetensors"],
    );
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(s.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The traced module loads back in libtorch and keeps the batch dimension free.
    let m = tch::CModule::load(&pt).unwrap();
    let y = m
        .forward_ts(&[Tensor::zeros(
            [5, 1, 28, 28],
            (tch::Kind::Float, Device::Cpu),
        )])
        .unwrap();
    assert_eq!(y.size(), vec![5, 10]);
}

/// `--force` replaces a regular file only: a FIFO or a symbolic link given as -o (or
/// where the sidecar goes) is left as it is. A folder without room for the TorchScript
/// file is an error that says so, not libtorch's abort, and leaves no temporary file.
#[test]
fn export_replaces_only_regular_files_and_checks_the_space() {
    let t = trained();
    let s = Sandbox::new();
    let ckpt = s.path().join("model.safetensors");
    std::fs::copy(t.ckpt("student"), &ckpt).unwrap();
    let c = ckpt.to_str().unwrap();
    let fifo = s.path().join("fifo.pt");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let target = s.path().join("target.pt");
    std::fs::write(&target, "keep me").unwrap();
    let link = s.path().join("link.pt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let side = s.path().join("side.pt");
    std::os::unix::fs::symlink(&target, s.path().join("side.pt.json")).unwrap();
    for out in [&fifo, &link, &side] {
        let args = ["export", c, "--format", "torchscript", "-o"];
        let o = s.raw(&[&args[..], &[out.to_str().unwrap(), "--force"]].concat());
        assert_fails(&o, 2, &["is not a regular file", "choose another -o"]);
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(!side.exists());
    // 100 kB free: less than the student's 407 kB of weights.
    let mut cmd = s.command(&["export", c, "--format", "torchscript", "-o", "small.pt"]);
    let o = cmd
        .current_dir(s.path())
        .env("KDTRAIN_TEST_FREE_BYTES", "100000")
        .output()
        .unwrap();
    assert_fails(&o, 1, &["small.pt", "0.1 MB free", "free some space"]);
    let names: Vec<_> = std::fs::read_dir(s.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("small.pt"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

/// The processes whose command line mentions `needle` (other than this test's).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// SIGTERM while the ONNX exporter (a Python child) runs: kdtrain exits 130, the
/// exporter is stopped with it, and no temporary file is left.
#[test]
fn sigterm_during_onnx_export_stops_the_exporter() {
    let t = trained();
    let s = Sandbox::new();
    let ckpt = s.path().join("model.safetensors");
    std::fs::copy(t.ckpt("student"), &ckpt).unwrap();
    let out = s.path().join("m.onnx");
    let mut child = s
        .command(&[
            "export".as_ref(),
            ckpt.as_os_str(),
            "--format".as_ref(),
            "onnx".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The exporter's command line names its temporary files, in the sandbox.
    let needle = s.path().join(".m.onnx.").display().to_string();
    let t0 = std::time::Instant::now();
    while processes_mentioning(&needle).is_empty() {
        assert!(t0.elapsed().as_secs() < 60, "no exporter started");
        assert!(child.try_wait().unwrap().is_none(), "kdtrain ended first");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signal(child.id(), "TERM");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped the ONNX exporter"), "{err}");
    let t0 = std::time::Instant::now();
    while !processes_mentioning(&needle).is_empty() {
        assert!(t0.elapsed().as_secs() < 5, "the exporter outlived kdtrain");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left: Vec<_> = std::fs::read_dir(s.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("m.onnx"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn readme_predict_example_is_the_committed_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("docs/predict-example.txt")).unwrap();
    assert!(
        readme.contains(&format!("```text\n{example}```")),
        "README's predict example differs from docs/predict-example.txt; rerun scripts/predict_example.sh"
    );
}

/// JPEG inputs decode through the same path: confidently classified test images saved as
/// JPEG (scaled up 4x, quality 95, in colour) get the class the library gives the IDX
/// image.
#[test]
fn jpeg_files_give_the_same_confident_predictions() {
    let t = trained();
    let ckpt = t.ckpt("student");
    let s = Sandbox::new();
    let pixels = &test_set().0;
    let logits = library_logits(&ckpt);
    let want = argmax_rows(&logits);
    let confident: Vec<usize> = (0..400)
        .filter(|&i| {
            let row = &logits[i * 10..(i + 1) * 10];
            let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
            f64::from(row[want[i] as usize]).exp() / z > 0.98
        })
        .take(8)
        .collect();
    assert_eq!(confident.len(), 8, "too few confident test images");
    let mut args: Vec<std::ffi::OsString> =
        vec!["predict".into(), ckpt.clone().into(), "--json".into()];
    for &i in &confident {
        let g = GrayImage::from_raw(28, 28, pixels[i * 784..(i + 1) * 784].to_vec()).unwrap();
        let big = image::imageops::resize(&g, 112, 112, image::imageops::FilterType::Nearest);
        let rgb = RgbImage::from_fn(112, 112, |x, y| {
            let v = big.get_pixel(x, y)[0];
            Rgb([v, v, v])
        });
        let path = s.path().join(format!("{i:05}.jpg"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 95)
            .encode_image(&DynamicImage::ImageRgb8(rgb))
            .unwrap();
        drop(f);
        args.push(path.into());
    }
    let o = s.raw(&args);
    assert_ok(&o);
    let lines = json_lines(&o);
    assert_eq!(lines.len(), confident.len());
    for (l, &i) in lines.iter().zip(&confident) {
        assert!(l["source"].as_str().unwrap().ends_with(".jpg"), "{l}");
        assert_eq!(l["class"].as_i64().unwrap(), want[i], "test image {i}: {l}");
        assert_eq!(l["inverted"], false, "{l}");
    }
}
