//! Link-time set-up for libtorch, which torch-sys finds and announces to us as
//! `DEP_TCH_LIBTORCH_LIB` (torch-sys declares `links = "tch"`).
//!
//! 1. An rpath to libtorch's lib folder, so the binary and the test binaries run
//!    without `LD_LIBRARY_PATH`.
//! 2. `-Wl,--no-as-needed -ltorch`: without it the linker drops libtorch.so (no symbol
//!    is used from it directly), libtorch_cuda.so is never loaded, and
//!    `tch::Cuda::is_available()` is false even on a GPU machine.
//! 3. The libtorch version, for the run metadata (`KDTRAIN_LIBTORCH_VERSION`).
//! 4. The git commit the binary is built from (`KDTRAIN_GIT_COMMIT`, `unknown` outside a
//!    git checkout), which `results.json` and `results.md` record.
use std::path::Path;
use std::process::Command;

/// `git args...` in the crate's folder, trimmed; `None` when git fails.
fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let mut version = String::from("unknown");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-search=native={lib}");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        let root = Path::new(&lib).parent().unwrap_or(Path::new(&lib));
        // A PyTorch install has torch/version.py; a libtorch zip has build-version.
        if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("__version__ = ")) {
                version = v.trim_matches(|c| c == '\'' || c == '"').to_string();
            }
        } else if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
            version = text.trim().to_string();
        }
    }
    println!("cargo:rustc-env=KDTRAIN_LIBTORCH_VERSION={version}");
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KDTRAIN_GIT_COMMIT={commit}");
    // A new commit moves a branch ref (or HEAD itself when detached).
    for (flag, file) in [("--git-dir", "HEAD"), ("--git-common-dir", "refs/heads")] {
        if let Some(dir) = git(&["rev-parse", flag]) {
            println!("cargo:rerun-if-changed={dir}/{file}");
        }
    }
    // Only when it exists: cargo counts a missing file as changed, and would then rerun
    // this script and rebuild the crate on every cargo command.
    if let Some(dir) = git(&["rev-parse", "--git-common-dir"]) {
        let packed = Path::new(&dir).join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
