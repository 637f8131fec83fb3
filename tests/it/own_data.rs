//! The user's own data through every command: IDX files of another image size and class
//! count with their class names, the per-channel standardisation, image folders, `.npz`
//! and a colour TorchScript teacher (the last three need the readers and the data
//! scripts).

use std::path::{Path, PathBuf};

use kdtrain::data::{Idx, encode_idx};

use crate::common::*;

/// A learnable 32x32 task of 26 classes: class c lights a 5x5 block at a cell set by c
/// on a noisy background. `n` images (u8, 1024 each) and labels.
fn letters(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut pixels = vec![0u8; n * 1024];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let c = (rnd() % 26) as usize;
        labels[i] = c as u8;
        let img = &mut pixels[i * 1024..(i + 1) * 1024];
        for p in img.iter_mut() {
            *p = (rnd() % 90) as u8;
        }
        let (r0, c0) = (1 + (c / 6) * 6, 1 + (c % 6) * 5);
        for r in r0..r0 + 5 {
            for col in c0..c0 + 5 {
                img[r * 32 + col] = 190 + (rnd() % 60) as u8;
            }
        }
    }
    (pixels, labels)
}

/// Writes the 32x32, 26-class IDX set (plain files) and its `classes.txt` into `dir`.
fn write_letters(dir: &Path, n_train: usize, n_test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n, seed) in [("train", n_train, 3u64), ("t10k", n_test, 4)] {
        let (pixels, labels) = letters(n, seed);
        let images = Idx::Images {
            count: n,
            rows: 32,
            cols: 32,
            pixels,
        };
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            encode_idx(&images),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(&Idx::Labels(labels)),
        )
        .unwrap();
    }
    let names: Vec<String> = (b'a'..=b'z')
        .map(|c| format!("letter-{}", c as char))
        .collect();
    std::fs::write(dir.join("classes.txt"), names.join("\n") + "\n").unwrap();
}

fn ckpt(runs: &Path, prefix: &str) -> PathBuf {
    run_dir(runs, prefix).join("model.safetensors")
}

/// An IDX set of 32x32 images and 26 named classes (what was refused before: "images
/// are 32x32, expected 28x28", "label 10 ... expected 0 to 9") trains a CNN teacher and
/// an MLP student, distils, evaluates, predicts and exports, every step with the data's
/// shape and names; a teacher of this data is refused on Fashion-MNIST-shaped data, and
/// the reverse, naming both shapes.
#[test]
fn idx_of_another_size_and_class_count_through_every_command() {
    let s = Sandbox::new();
    let data = s.path().join("letters");
    write_letters(&data, 1300, 260);
    let cfg = s.path().join("letters.toml");
    std::fs::write(
        &cfg,
        "[data]\nvalidation_size = 200\n[model]\nteacher = \"cnn:8,16,32\"\nstudent = \"mlp:64\"\n",
    )
    .unwrap();
    let (c, d) = (cfg.to_str().unwrap(), data.to_str().unwrap());
    let base = ["--config", c, "--data-dir", d, "--epochs", "4"];
    let o = s.kd(&[&["train", "student"][..], &base].concat());
    assert_ok(&o);
    let first = stderr(&o).lines().next().unwrap_or("").to_string();
    assert!(
        first.contains("read as idx") && first.contains("1x32x32") && first.contains("26 classes"),
        "{first}"
    );
    let student = run_dir(&s.runs(), "student-");
    let sum = json(&student.join("summary.json"));
    assert_eq!(sum["data"]["input"], "1x32x32");
    assert_eq!(sum["data"]["classes"], 26);
    assert_eq!(sum["data"]["class_names"][25], "letter-z");
    assert_eq!(sum["data"]["source"], "idx");
    assert_eq!(json(&student.join("meta.json"))["data"]["input"], "1x32x32");
    assert_eq!(sum["params"], 32 * 32 * 64 + 64 + 64 * 26 + 26);
    let acc = sum["test_acc"].as_f64().unwrap();
    assert!(acc > 0.5, "the student learned little: {acc}");

    assert_ok(&s.kd(&[&["train", "teacher"][..], &base].concat()));
    let teacher = ckpt(&s.runs(), "teacher-");
    let t = teacher.to_str().unwrap();
    assert_ok(&s.kd(&[&["distill", "--teacher", t][..], &base].concat()));
    let distilled = run_dir(&s.runs(), "distilled-");
    assert_eq!(json(&distilled.join("summary.json"))["data"]["classes"], 26);

    // evaluate: the data's names in the report, the run's own test accuracy.
    let sc = ckpt(&s.runs(), "student-");
    let o = s.raw(&[
        "evaluate",
        sc.to_str().unwrap(),
        "--config",
        c,
        "--data-dir",
        d,
        "--json",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["test"]["examples"], 260);
    assert_eq!(v["test"]["acc"].as_f64().unwrap(), acc);
    assert_eq!(v["test"]["per_class"][0][0], "letter-a");

    // predict: a PNG of class 7's pattern, at 4x the size, comes back as letter-h.
    let (px, labels) = letters(400, 9);
    let i = labels.iter().position(|&l| l == 7).unwrap();
    let img = image::GrayImage::from_fn(128, 128, |x, y| {
        image::Luma([px[i * 1024 + (y / 4 * 32 + x / 4) as usize]])
    });
    let png = s.path().join("h.png");
    img.save(&png).unwrap();
    let o = s.raw(&[
        "predict",
        sc.to_str().unwrap(),
        png.to_str().unwrap(),
        "--invert",
        "no",
        "--json",
    ]);
    assert_ok(&o);
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(line["name"], "letter-h", "{line}");

    // export: the CNN teacher as ONNX, [batch, 1, 32, 32] -> [batch, 26], run in
    // onnxruntime against the TorchScript export of the same checkpoint.
    for (fmt, out) in [("onnx", "t.onnx"), ("torchscript", "t.pt")] {
        let o = s.raw(&["export", t, "--format", fmt, "-o", out]);
        assert_ok(&o);
    }
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path().join("t.onnx.json")).unwrap()).unwrap();
    assert_eq!(
        side["input"]["shape"],
        serde_json::json!(["batch", 1, 32, 32])
    );
    assert_eq!(side["class_names"][7], "letter-h");
    assert_eq!(side["normalize"]["kind"], "unit");
    let o = std::process::Command::new(python())
        .current_dir(s.path())
        .args(["-W", "ignore", "-c"])
        .arg(
            "import numpy as np, onnxruntime as ort, torch\n\
             s = ort.InferenceSession('t.onnx')\n\
             i = s.get_inputs()[0]; o = s.get_outputs()[0]\n\
             x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)\n\
             a = s.run(None, {i.name: x})[0]\n\
             b = torch.jit.load('t.pt')(torch.from_numpy(x)).detach().numpy()\n\
             print(i.shape, o.shape, a.shape, float(np.abs(a - b).max()))",
        )
        .output()
        .unwrap();
    assert_ok(&o);
    let text = stdout(&o);
    assert!(
        text.starts_with("['batch', 1, 32, 32] ['batch', 26] (5, 26)"),
        "{text}"
    );
    let diff: f64 = text.split_whitespace().last().unwrap().parse().unwrap();
    assert!(diff < 1e-4, "{text}");

    // A teacher of 1x32x32 images and 26 classes on Fashion-MNIST-shaped data, and the
    // reverse: exit 2, naming both.
    s.write_data(200, 50);
    s.write_config("");
    assert_fails(
        &s.kd(&["distill", "--teacher", t, "--epochs", "1"]),
        2,
        &[
            "1x32x32 images of 26 classes",
            "1x28x28 images of 10 classes",
        ],
    );
    let other = Sandbox::new();
    other.write_data(200, 50);
    other.write_config("");
    other.train_teacher_one_epoch("fm");
    let fm = other.runs().join("fm/model.safetensors");
    assert_fails(
        &s.kd(&[&["distill", "--teacher", fm.to_str().unwrap()][..], &base].concat()),
        2,
        &[
            "1x28x28 images of 10 classes",
            "1x32x32 images of 26 classes",
        ],
    );
    // evaluate refuses the checkpoint on data of another shape the same way.
    assert_fails(
        &s.raw(&[
            "evaluate",
            sc.to_str().unwrap(),
            "--data-dir",
            s.data_dir().to_str().unwrap(),
        ]),
        2,
        &["1x32x32", "1x28x28"],
    );
}

/// `data.normalize = "standardize"`: the training images' per-channel mean and sd are
/// recorded in meta.json and the checkpoint; `evaluate` reproduces the run's test
/// accuracy only by applying them; the exports take pixels / 255 and apply them
/// themselves (folded into the MLP's first layer for ONNX and safetensors-torch); a
/// teacher trained on pixels / 255 is refused.
#[test]
fn standardize_is_recorded_and_applied_everywhere() {
    let s = Sandbox::new();
    s.write_data(400, 100);
    s.write_config("normalize = \"standardize\"");
    assert_ok(&s.kd(&["train", "student", "--epochs", "2"]));
    let run = run_dir(&s.runs(), "student-");
    let meta = json(&run.join("meta.json"));
    let n = &meta["data"]["normalize"];
    assert_eq!(n["kind"], "standardize", "{meta}");
    let (mean, sd) = (n["mean"][0].as_f64().unwrap(), n["sd"][0].as_f64().unwrap());
    // The synthetic images: mostly noise below 100 of 255 with one bright block.
    assert!(mean > 0.15 && mean < 0.35 && sd > 0.1 && sd < 0.4, "{n}");
    let ck = run.join("model.safetensors");
    let c = kdtrain::checkpoint::Checkpoint::read(&ck).unwrap();
    assert!(c.metadata["kdtrain.normalize"].contains("standardize"));
    let acc = json(&run.join("summary.json"))["test_acc"]
        .as_f64()
        .unwrap();
    let o = s.kd(&["evaluate", ck.to_str().unwrap(), "--json"]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["test"]["acc"].as_f64().unwrap(), acc);

    // The three exports agree with each other on pixels / 255.
    let k = ck.to_str().unwrap();
    for (fmt, out) in [
        ("onnx", "m.onnx"),
        ("torchscript", "m.pt"),
        ("safetensors-torch", "m.safetensors"),
    ] {
        assert_ok(&s.raw(&["export", k, "--format", fmt, "-o", out]));
    }
    let side = json(&s.path().join("m.pt.json"));
    assert_eq!(side["normalize"]["kind"], "standardize");
    let o = std::process::Command::new(python())
        .current_dir(s.path())
        .args(["-W", "ignore", "-c"])
        .arg(
            "import numpy as np, onnxruntime as ort, torch, safetensors.torch as st\n\
             x = np.random.default_rng(1).random((6, 1, 28, 28), dtype=np.float32)\n\
             a = ort.InferenceSession('m.onnx').run(None, {'image': x})[0]\n\
             b = torch.jit.load('m.pt')(torch.from_numpy(x)).detach().numpy()\n\
             m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))\n\
             m.load_state_dict(st.load_file('m.safetensors'))\n\
             c = m(torch.from_numpy(x)).detach().numpy()\n\
             print(float(np.abs(a - b).max()), float(np.abs(c - b).max()), float(np.abs(b).max()))",
        )
        .output()
        .unwrap();
    assert_ok(&o);
    let d: Vec<f64> = stdout(&o)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(d[0] < 1e-4 && d[1] < 1e-4 && d[2] > 0.1, "{d:?}");

    // A teacher trained on pixels / 255 does not fit standardised inputs.
    let plain = Sandbox::new();
    plain.write_data(400, 100);
    plain.write_config("");
    plain.train_teacher_one_epoch("unit");
    let t = plain.runs().join("unit/model.safetensors");
    assert_fails(
        &s.kd(&["distill", "--teacher", t.to_str().unwrap(), "--epochs", "1"]),
        2,
        &["normalised as unit", "standardize", "data.normalize"],
    );
}
