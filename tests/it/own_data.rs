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
    let mut rnd = xorshift(seed);
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
    // --resume of a run on other data: refused the same way, before any epoch.
    other.interrupted(
        &["train", "student", "--epochs", "3", "--run-name", "cut"],
        "epoch:1",
    );
    assert_fails(
        &other.raw(&[
            "train",
            "student",
            "--epochs",
            "3",
            "--run-name",
            "cut",
            "--resume",
            "--config",
            other.path().join("test.toml").to_str().unwrap(),
            "--data-dir",
            d,
            "--out-dir",
            other.runs().to_str().unwrap(),
        ]),
        2,
        &[
            "--resume",
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

/// Runs one of the data scripts (`scripts/data/NAME`) with the project's Python.
fn data_script(name: &str, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/data")
        .join(name);
    let o = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert_ok(&o);
}

/// The Fashion-MNIST IDX files as kdtrain reads them (the real data, where installed).
fn fashion_mnist() -> PathBuf {
    let dir = std::env::var_os("FASHION_MNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(kdtrain::data::DEBIAN_DIR));
    assert!(
        dir.join("train-images-idx3-ubyte.gz").exists()
            || dir.join("train-images-idx3-ubyte").exists(),
        "Fashion-MNIST is not in {}; run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// Real data: the 70,000 Fashion-MNIST images written as PNGs in class folders
/// (scripts/data/fashion_mnist_folder.py) read back through the folder source give the
/// IDX files' pixels and labels, in the same order; a second read comes from the
/// decoded cache, with the same bytes; and `train student` on the folder reaches the IDX
/// run's test accuracy within a point after five epochs.
#[test]
fn fashion_mnist_as_a_folder_is_the_idx_data() {
    let s = Sandbox::new();
    let png = s.path().join("fmnist-png");
    let idx = fashion_mnist();
    data_script(
        "fashion_mnist_folder.py",
        &[
            "--from",
            idx.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ],
    );
    let cache = s.path().join("cache");
    let opts = kdtrain::data::ReadOptions {
        source: kdtrain::data::Source::Folder,
        ..Default::default()
    };
    let a = kdtrain::data::load(&idx, &kdtrain::data::ReadOptions::default()).unwrap();
    let run = |extra: &[&str]| {
        let mut c = s.command(
            &[
                &[
                    "train",
                    "student",
                    "--epochs",
                    "2",
                    "--seed",
                    "3",
                    "--threads",
                    "2",
                ][..],
                &["--out-dir", s.runs().to_str().unwrap()],
                extra,
            ]
            .concat(),
        );
        c.env("KDTRAIN_CACHE_DIR", &cache);
        c.output().unwrap()
    };
    let o = run(&["--data-dir", png.to_str().unwrap(), "--run-name", "folder"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("read as folder"), "{}", stderr(&o));
    // In-process read from the cache the run just wrote.
    let b = kdtrain::data::folder::load_cached(&png, &opts, Some(&cache)).unwrap();
    assert_eq!(b.source, kdtrain::data::Source::Folder);
    assert!(
        b.note.as_deref().unwrap_or("").contains("cache"),
        "{:?}",
        b.note
    );
    assert_eq!((b.spec.channels, b.spec.height, b.spec.width), (1, 28, 28));
    assert_eq!(b.spec.class_names[0], "0-T-shirt_top");
    assert_eq!(b.spec.class_names[9], "9-Ankle boot");
    // The folder is in ImageFolder's order (class, then file name = IDX index): the IDX
    // images sorted stably by label.
    for (x, y) in [(&a.train, &b.train), (&a.test, &b.test)] {
        let mut order: Vec<usize> = (0..x.labels.len()).collect();
        order.sort_by_key(|&i| x.labels[i]);
        assert_eq!(x.labels.len(), y.labels.len());
        let labels: Vec<i64> = order.iter().map(|&i| x.labels[i]).collect();
        assert!(labels == y.labels, "labels differ");
        let pixels: Vec<u8> = order
            .iter()
            .flat_map(|&i| x.pixels[i * 784..(i + 1) * 784].iter().copied())
            .collect();
        assert!(pixels == y.pixels, "pixels differ");
    }
    let o = run(&["--data-dir", idx.to_str().unwrap(), "--run-name", "idx"]);
    assert_ok(&o);
    let acc = |name: &str| {
        json(&s.runs().join(name).join("summary.json"))["test_acc"]
            .as_f64()
            .unwrap()
    };
    // Other images are held out for validation (the split draws positions, and the
    // order differs), so the runs differ a little.
    let (f, i) = (acc("folder"), acc("idx"));
    assert!((f - i).abs() < 0.01, "folder {f} vs IDX {i}");
}

/// The second real data set, of another shape: scikit-learn's digits (grey 8x8, 10
/// classes) written as an .npz by scripts/data/digits.py: a CNN teacher distilled into
/// an MLP student, every record saying 1x8x8.
#[test]
fn digits_npz_cnn_teacher_into_an_mlp_student() {
    let s = Sandbox::new();
    let out = s.path().join("digits");
    data_script("digits.py", &["--out", out.to_str().unwrap()]);
    let npz = out.join("digits.npz");
    let cfg = s.path().join("digits.toml");
    std::fs::write(
        &cfg,
        "[data]\nvalidation_size = 200\nbatch_size = 64\n[model]\nteacher = \"cnn:16,32,64\"\nstudent = \"mlp:32\"\n",
    )
    .unwrap();
    let base = [
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        npz.to_str().unwrap(),
    ];
    let o = s.kd(&[&["train", "teacher", "--epochs", "30"][..], &base].concat());
    assert_ok(&o);
    assert!(
        stderr(&o).contains("read as npz") && stderr(&o).contains("1x8x8"),
        "{}",
        stderr(&o)
    );
    let t = ckpt(&s.runs(), "teacher-");
    assert_ok(
        &s.kd(&[
            &[
                "distill",
                "--teacher",
                t.to_str().unwrap(),
                "--epochs",
                "60",
            ][..],
            &base,
        ]
        .concat()),
    );
    let sum = json(&run_dir(&s.runs(), "distilled-").join("summary.json"));
    assert_eq!(sum["data"]["input"], "1x8x8");
    assert_eq!(sum["data"]["source"], "npz");
    assert_eq!(sum["train_examples"], 1297 - 200);
    let teacher_acc = json(&run_dir(&s.runs(), "teacher-").join("summary.json"))["test_acc"]
        .as_f64()
        .unwrap();
    assert!(teacher_acc > 0.9, "CNN teacher on digits: {teacher_acc}");
    assert!(sum["test_acc"].as_f64().unwrap() > 0.85, "{sum}");
}

/// Colour and another class count: a TorchScript teacher made in PyTorch for
/// `[batch, 3, 32, 32]` and 5 classes (scripts/data/colour_shapes.py) distils into an MLP
/// and a CNN student on the colour folder; `predict` reads scikit-learn's two bundled
/// JPEGs as RGB and names the folder's classes; the student's ONNX export runs in
/// onnxruntime and agrees with `predict`.
#[test]
fn colour_folder_with_a_torchscript_teacher() {
    let s = Sandbox::new();
    let data = s.path().join("shapes");
    let teacher = s.path().join("teacher.pt");
    data_script(
        "colour_shapes.py",
        &[
            "--out",
            data.to_str().unwrap(),
            "--teacher",
            teacher.to_str().unwrap(),
        ],
    );
    let (d, t) = (data.to_str().unwrap(), teacher.to_str().unwrap());
    // Chance is 0.2; an MLP on 850 noisy colour images learns little, a CNN more.
    for (name, student, least) in [("mlp", "mlp:64", 0.25), ("cnn", "cnn:8,16,32", 0.5)] {
        let cfg = s.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[data]\nvalidation_size = 150\nbatch_size = 64\n[model]\nstudent = {student:?}\n"
            ),
        )
        .unwrap();
        let o = s.kd(&[
            "distill",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            d,
            "--teacher",
            t,
            "--epochs",
            "25",
            "--run-name",
            name,
        ]);
        assert_ok(&o);
        let first = stderr(&o).lines().next().unwrap_or("").to_string();
        assert!(
            first.contains("read as folder") && first.contains("3x32x32"),
            "{first}"
        );
        let sum = json(&s.runs().join(name).join("summary.json"));
        assert_eq!(
            sum["data"]["class_names"],
            serde_json::json!(["circle", "cross", "square", "stripes", "triangle"])
        );
        let acc = sum["test_acc"].as_f64().unwrap();
        assert!(acc > least, "{name}: test accuracy {acc}");
    }
    let student = s.runs().join("cnn/model.safetensors");
    let sk = std::process::Command::new(python())
        .args([
            "-c",
            "import os, sklearn; print(os.path.dirname(sklearn.__file__))",
        ])
        .output()
        .unwrap();
    let images = PathBuf::from(stdout(&sk).trim()).join("datasets/images");
    let (china, flower) = (images.join("china.jpg"), images.join("flower.jpg"));
    let o = s.raw(&[
        "predict",
        student.to_str().unwrap(),
        china.to_str().unwrap(),
        flower.to_str().unwrap(),
        "--json",
        "--top",
        "5",
    ]);
    assert_ok(&o);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let names = ["circle", "cross", "square", "stripes", "triangle"];
    for l in &lines {
        assert!(names.contains(&l["name"].as_str().unwrap()), "{l}");
        let p: f64 = l["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["probability"].as_f64().unwrap())
            .sum();
        assert!((p - 1.0).abs() < 1e-4, "{l}");
    }
    // The ONNX export in onnxruntime on a test PNG (lossless, 32x32 RGB) gives the class
    // probabilities predict gives.
    assert_ok(&s.raw(&[
        "export",
        student.to_str().unwrap(),
        "--format",
        "onnx",
        "-o",
        "s.onnx",
    ]));
    let png = data.join("test/square/0002.png");
    let png = match png.exists() {
        true => png,
        false => std::fs::read_dir(data.join("test/square"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    };
    let o = s.raw(&[
        "predict",
        student.to_str().unwrap(),
        png.to_str().unwrap(),
        "--json",
        "--top",
        "5",
    ]);
    assert_ok(&o);
    let line: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let mut want = [0.0f64; 5];
    for r in line["top"].as_array().unwrap() {
        want[r["class"].as_u64().unwrap() as usize] = r["probability"].as_f64().unwrap();
    }
    let o = std::process::Command::new(python())
        .current_dir(s.path())
        .args(["-W", "ignore", "-c"])
        .arg(format!(
            "import numpy as np, onnxruntime as ort\n\
             from PIL import Image\n\
             sess = ort.InferenceSession('s.onnx')\n\
             print(sess.get_inputs()[0].shape, sess.get_outputs()[0].shape)\n\
             x = (np.asarray(Image.open({png:?}).convert('RGB'), dtype=np.float32) / 255).transpose(2, 0, 1)[None]\n\
             z = sess.run(None, {{'image': np.ascontiguousarray(x)}})[0][0].astype(np.float64)\n\
             p = np.exp(z - z.max()); p /= p.sum()\n\
             print(' '.join(repr(float(v)) for v in p))",
            png = png.to_str().unwrap()
        ))
        .output()
        .unwrap();
    assert_ok(&o);
    let text = stdout(&o);
    let mut it = text.lines();
    assert_eq!(
        it.next(),
        Some("['batch', 3, 32, 32] ['batch', 5]"),
        "{text}"
    );
    let got: Vec<f64> = it
        .next()
        .unwrap()
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() < 1e-4,
            "onnxruntime {got:?} vs predict {want:?}"
        );
    }
}

/// Writes a grey image folder: `classes` class folders with `per` 8x8 PNGs each in
/// train/ and test/, class c a bright square at a position set by c.
fn write_folder(root: &Path, classes: &[&str], per: usize) {
    for split in ["train", "test"] {
        for (c, name) in classes.iter().enumerate() {
            let dir = root.join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per {
                let img = image::GrayImage::from_fn(8, 8, |x, y| {
                    let lit = (x as usize / 4 + 2 * (y as usize / 4)) == c % 4;
                    image::Luma([if lit { 200 } else { (i * 7 % 50) as u8 }])
                });
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

/// A Ctrl-C while an image folder is decoded the first time stops the decoding (it
/// waited for the whole folder): exit 130, no run folder, nothing in the decoded cache.
#[test]
fn ctrl_c_while_decoding_a_folder_leaves_nothing() {
    let s = Sandbox::new();
    let data = s.path().join("folder");
    write_folder(&data, &["a", "b"], 30);
    let cache = s.path().join("cache");
    let o = s
        .command(&[
            "train",
            "student",
            "--epochs",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--out-dir",
            s.runs().to_str().unwrap(),
        ])
        .env("KDTRAIN_CACHE_DIR", &cache)
        .env(kdtrain::commands::INTERRUPT_HOOK, "decode")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("interrupted while decoding"),
        "{}",
        stderr(&o)
    );
    let left: Vec<_> = std::fs::read_dir(s.runs())
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(cached.is_empty(), "{cached:?}");
}

/// One class is no classification task (exit 2, naming it); a class with no training
/// images (labels of the test set beyond the training set's) is named in a warning.
#[test]
fn one_class_is_refused_and_classes_without_training_images_are_named() {
    let s = Sandbox::new();
    s.write_config("");
    let one = s.path().join("one");
    write_folder(&one, &["only"], 5);
    assert_fails(
        &s.kd(&[
            "train",
            "student",
            "--epochs",
            "1",
            "--data-dir",
            one.to_str().unwrap(),
        ]),
        2,
        &["1 class (only)", "at least 2"],
    );
    // Synthetic IDX data whose test labels reach 11 while training stops at 9.
    s.write_data(300, 60);
    std::fs::remove_file(s.data_dir().join("classes.txt")).unwrap();
    let mut labels = vec![0u8; 60];
    labels[3] = 11;
    write_gz(
        &s.data_dir().join("t10k-labels-idx1-ubyte.gz"),
        &encode_idx(&Idx::Labels(labels)),
    );
    let o = s.kd(&["train", "student", "--epochs", "1"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("2 of the 12 classes have no training images (10, 11)"),
        "{}",
        stderr(&o)
    );
}
