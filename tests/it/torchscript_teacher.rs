//! A TorchScript teacher made in PyTorch (the project's venv, torch 2.11): distil from
//! it, check that `evaluate --teacher` reports the teacher accuracy Python computes, and
//! that files which are not a usable TorchScript teacher are refused by name.

use crate::common::*;

/// Trains a small MLP on the sandbox's data in PyTorch for a few steps, saves it with
/// torch.jit (as `kind`: "good", "tuple", "shape", "flat", "state_dict", "fixed": its
/// batch size traced in as 2; "softmax" and "log_softmax": its forward ends in them;
/// "big": logits times 5000; "train_mode": with dropout, traced in training mode;
/// "limit": failing on batches over 100; "double": f64 weights; "nan": NaN logits), and
/// prints
/// its test accuracy.
const MAKE: &str = r#"
import gzip, struct, sys, torch
data, out, kind = sys.argv[1], sys.argv[2], sys.argv[3]
def idx(name):
    b = gzip.open(f"{data}/{name}.gz").read()
    magic = struct.unpack(">I", b[:4])[0]
    dims = struct.unpack(">" + "I" * (magic & 0xff), b[4:4 + 4 * (magic & 0xff)])
    return torch.frombuffer(bytearray(b[4 + 4 * len(dims):]), dtype=torch.uint8).reshape(dims)
torch.manual_seed(0)
x = idx("train-images-idx3-ubyte").float().div(255).unsqueeze(1)
y = idx("train-labels-idx1-ubyte").long()
xt = idx("t10k-images-idx3-ubyte").float().div(255).unsqueeze(1)
yt = idx("t10k-labels-idx1-ubyte").long()
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-2)
for _ in range(30):
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
net.eval()
class Tuple(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return self.n(x), self.n(x)
class Five(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return self.n(x)[:, :5]
class Fixed(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return self.n(x.reshape(2, 1, 28, 28))
class Softmax(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return torch.softmax(self.n(x), 1)
class LogSoftmax(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return torch.log_softmax(self.n(x), 1)
class Big(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return self.n(x) * 5000.0
class NaN(torch.nn.Module):
    def __init__(self, n): super().__init__(); self.n = n
    def forward(self, x): return self.n(x) * float("nan")
class Limit(torch.nn.Module):
    # Batches of up to 100 images: the traced slice of a [100, 10] buffer follows the batch.
    def __init__(self, n): super().__init__(); self.n = n; self.register_buffer("pad", torch.zeros(100, 10))
    def forward(self, x): return self.n(x) + self.pad[: x.shape[0]]
if kind == "state_dict":
    torch.save(net.state_dict(), out)
elif kind == "flat":
    torch.jit.save(torch.jit.trace(net[1:], x[:2].flatten(1)), out)
elif kind == "train_mode":
    # Dropout in the trace: traced with the model in training mode.
    d = torch.nn.Sequential(net[0], net[1], net[2], torch.nn.Dropout(0.5), net[3]).train()
    torch.jit.save(torch.jit.trace(d, x[:2], check_trace=False), out)
elif kind == "double":
    torch.jit.save(torch.jit.trace(net.double(), x[:2].double()), out)
    net = net.float()
else:
    m = {"good": net, "tuple": Tuple(net), "shape": Five(net), "fixed": Fixed(net),
         "softmax": Softmax(net), "log_softmax": LogSoftmax(net), "big": Big(net),
         "limit": Limit(net), "nan": NaN(net)}[kind]
    torch.jit.save(torch.jit.trace(m, x[:2]), out)
with torch.no_grad():
    print((net(xt).argmax(1) == yt).float().mean().item())
"#;

fn make(s: &Sandbox, kind: &str) -> (std::path::PathBuf, f64) {
    let out = s.path().join(format!("{kind}.model"));
    let o = std::process::Command::new(python())
        .args([
            "-c",
            MAKE,
            s.data_dir().to_str().unwrap(),
            out.to_str().unwrap(),
            kind,
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let acc: f64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    (out, acc)
}

#[test]
fn a_torchscript_teacher_distils_and_evaluates() {
    let s = Sandbox::new();
    s.write_data(1200, 300);
    s.write_config("[logging]\nplots = false\nhistograms = false\n");
    // Named .model: detected by content, not by extension.
    let (teacher, py_acc) = make(&s, "good");
    let o = s.kd(&[
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--epochs",
        "2",
        "--run-name",
        "d",
    ]);
    assert_ok(&o);
    assert!(stderr(&o).contains("torchscript"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("records no validation split"),
        "{}",
        stderr(&o)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.runs().join("d/meta.json")).unwrap()).unwrap();
    assert_eq!(meta["teacher_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(meta["teacher_arch"], "torchscript", "{meta}");
    let model = s.runs().join("d/model.safetensors");
    let o = s.kd(&[
        "evaluate",
        model.to_str().unwrap(),
        "--teacher",
        teacher.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let acc = v["test"]["teacher_acc"].as_f64().unwrap();
    assert!(
        (acc - py_acc).abs() < 1e-6,
        "kdtrain {acc} vs PyTorch {py_acc}"
    );
    // A teacher taking [batch, 784] needs model.teacher_input = "flat".
    let (flat, flat_acc) = make(&s, "flat");
    let o = s.kd(&[
        "evaluate",
        model.to_str().unwrap(),
        "--teacher",
        flat.to_str().unwrap(),
        "--json",
    ]);
    assert_fails(&o, 2, &["flat.model", "model.teacher_input = \"flat\""]);
    let cfg = s.path().join("flat.toml");
    std::fs::write(
        &cfg,
        "[data]\nvalidation_size = 100\n[model]\nteacher_input = \"flat\"\n",
    )
    .unwrap();
    let o = s.kd(&[
        "evaluate",
        model.to_str().unwrap(),
        "--teacher",
        flat.to_str().unwrap(),
        "--json",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!((v["test"]["teacher_acc"].as_f64().unwrap() - flat_acc).abs() < 1e-6);
}

#[test]
fn unusable_torchscript_teachers_are_refused_by_name() {
    let s = Sandbox::new();
    s.write_data(300, 100);
    s.write_config("");
    for (kind, needles) in [
        ("tuple", &["tuple.model", "a tuple of 2 values"][..]),
        (
            "shape",
            &["shape.model", "shape [2, 5]", "expected [2, 10]"][..],
        ),
        // Passes a probe of 2 images, fails one of 3: refused before training.
        ("fixed", &["fixed.model", "batch [3, 1, 28, 28]"][..]),
        (
            "state_dict",
            &[
                "state_dict.model",
                "not a TorchScript module",
                "torch.jit.save",
            ][..],
        ),
    ] {
        let (path, _) = make(&s, kind);
        let o = s.kd(&[
            "distill",
            "--teacher",
            path.to_str().unwrap(),
            "--epochs",
            "1",
            "--run-name",
            kind,
        ]);
        assert_fails(&o, 2, needles);
        assert!(!s.runs().join(kind).exists());
    }
}

/// Teachers that are not what they claim (issue "Trust, round 3"): a forward that ends in
/// softmax or log_softmax is named, and accepted with `model.teacher_output`; a model
/// traced in training mode is refused as not deterministic; one that fails on a larger
/// batch than the probe's ends in a usage error naming the batch, not a panic; f64
/// weights are run with f64 input; and logits in the thousands that make the loss huge
/// before the first update are named as the cause, not the learning rate.
#[test]
fn teachers_that_are_not_what_they_claim() {
    let s = Sandbox::new();
    s.write_data(600, 300);
    s.write_config("[logging]\nplots = false\nhistograms = false\n");
    let distill = |t: &std::path::Path, extra: &[&str]| {
        s.kd(&[
            &["distill", "--teacher", t.to_str().unwrap(), "--epochs", "1"][..],
            extra,
        ]
        .concat())
    };
    let (soft, py_acc) = make(&s, "softmax");
    assert_fails(
        &distill(&soft, &[]),
        2,
        &[
            "returns probabilities",
            "softmax",
            "model.teacher_output = \"probabilities\"",
        ],
    );
    let (logsoft, _) = make(&s, "log_softmax");
    assert_fails(
        &distill(&logsoft, &[]),
        2,
        &[
            "returns log-probabilities",
            "log_softmax",
            "\"log_probabilities\"",
        ],
    );
    // Said so, both distil, and the teacher's accuracy is PyTorch's.
    let cfg = s.path().join("probs.toml");
    std::fs::write(
        &cfg,
        "[data]\nvalidation_size = 100\n[model]\nteacher_output = \"probabilities\"\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    assert_ok(&distill(&soft, &["--config", c, "--run-name", "p"]));
    let o = s.kd(&[
        "evaluate",
        s.runs().join("p/model.safetensors").to_str().unwrap(),
        "--teacher",
        soft.to_str().unwrap(),
        "--config",
        c,
        "--json",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let acc = v["test"]["teacher_acc"].as_f64().unwrap();
    assert!(
        (acc - py_acc).abs() < 1e-6,
        "kdtrain {acc} vs PyTorch {py_acc}"
    );

    let (train_mode, _) = make(&s, "train_mode");
    assert_fails(
        &distill(&train_mode, &[]),
        2,
        &["not deterministic in eval mode", "traced in training mode"],
    );

    // NaN logits are named as such, not taken for a teacher that is not deterministic.
    let (nan, _) = make(&s, "nan");
    let o = distill(&nan, &[]);
    assert_fails(&o, 2, &["gives NaN or infinite outputs"]);
    assert!(!stderr(&o).contains("deterministic"), "{}", stderr(&o));

    // The probe's batches pass; the cache's first chunk (256 images) fails.
    let (limit, _) = make(&s, "limit");
    let o = distill(&limit, &[]);
    assert_fails(
        &o,
        2,
        &[
            "the teacher failed",
            "[256, 1, 28, 28]",
            "size of tensor a (256) must match",
        ],
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let o = distill(&limit, &["--no-teacher-cache", "--batch-size", "150"]);
    assert_fails(
        &o,
        2,
        &[
            "the teacher failed",
            "[150, 1, 28, 28]",
            "size of tensor a (150)",
        ],
    );
    // evaluate too.
    let (good, _) = make(&s, "good");
    assert_ok(&distill(&good, &["--run-name", "g"]));
    let student = s.runs().join("g/model.safetensors");
    let o = s.kd(&[
        "evaluate",
        student.to_str().unwrap(),
        "--teacher",
        limit.to_str().unwrap(),
    ]);
    assert_fails(
        &o,
        2,
        &[
            "the teacher failed",
            "must match the size of tensor b (100)",
        ],
    );

    // f64 weights: run with f64 input, the same accuracy as PyTorch's.
    let (double, py_acc) = make(&s, "double");
    let o = s.kd(&[
        "evaluate",
        student.to_str().unwrap(),
        "--teacher",
        double.to_str().unwrap(),
        "--json",
    ]);
    assert_ok(&o);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let acc = v["test"]["teacher_acc"].as_f64().unwrap();
    assert!(
        (acc - py_acc).abs() < 1e-6,
        "kdtrain {acc} vs PyTorch {py_acc}"
    );

    // Logits times 5000 with mse: the loss is huge before any update.
    let (big, _) = make(&s, "big");
    let o = distill(&big, &["--objective", "mse"]);
    assert_fails(
        &o,
        1,
        &[
            "before the first update",
            "learning rate is not the cause",
            "mse",
            "|z|",
        ],
    );
    assert!(!stderr(&o).contains("lower lr_schedule"), "{}", stderr(&o));
}
