//! Link-time set-up for libtorch, which torch-sys finds and announces to us as
//! `DEP_TCH_LIBTORCH_LIB` (torch-sys declares `links = "tch"`).
//!
//! 1. An rpath to libtorch's lib folder, so the binary and the test binaries run
//!    without `LD_LIBRARY_PATH`.
//! 2. `-Wl,--no-as-needed -ltorch`: without it the linker drops libtorch.so (no symbol
//!    is used from it directly), libtorch_cuda.so is never loaded, and
//!    `tch::Cuda::is_available()` is false even on a GPU machine.
//! 3. The libtorch version, for the run metadata (`KDTRAIN_LIBTORCH_VERSION`).
use std::path::Path;

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
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
