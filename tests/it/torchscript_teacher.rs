//! A TorchScript teacher made in PyTorch (the project's venv, torch 2.11): distil from
//! it, check that `evaluate --teacher` reports the teacher accuracy Python computes, and
//! that files which are not a usable TorchScript teacher are refused by name.

use crate::common::*;

/// Trains a small MLP on the sandbox's data in PyTorch for a few steps, saves it with
/// torch.jit (as `kind`: "good", "tuple", "shape", "flat", "state_dict", "fixed": its
/// batch size traced in as 2), and prints its
/// test accuracy.
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
if kind == "state_dict":
    torch.save(net.state_dict(), out)
elif kind == "flat":
    torch.jit.save(torch.jit.trace(net[1:], x[:2].flatten(1)), out)
else:
    m = {"good": net, "tuple": Tuple(net), "shape": Five(net), "fixed": Fixed(net)}[kind]
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
        ("fixed", &["fixed.model", "probe batch [3, 1, 28, 28]"][..]),
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
