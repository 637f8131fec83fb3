//! Entry point: parse the command line, run, print the error chain once and map it to an
//! exit code (0 ok, 1 runtime error, 2 usage or config error, 130 interrupted).

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use clap::Parser;
use kdtrain::config::UsageError;
use kdtrain::train::{INTERRUPTED, Interrupted};

fn main() -> ExitCode {
    tune_openmp_wait();
    kdtrain::mark_start();
    keep_freed_memory();
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        kdtrain::errln!(
            "kdtrain: internal error: {info}; please report it with the command line you used"
        );
    }));
    let cli = match kdtrain::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                // --help, --version, and no command at all: clap's own output.
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
                _ => {
                    // One line, like every other error: clap's first line, then a pointer.
                    // clap's message up to its usage block, on one line.
                    let text = e.render().to_string();
                    let msg: Vec<&str> = text
                        .lines()
                        .map(str::trim)
                        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                        .filter(|l| !l.is_empty())
                        .collect();
                    let msg = msg.join(" ");
                    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
                    kdtrain::errln!("error: {msg}; see kdtrain --help");
                    return ExitCode::from(2);
                }
            }
        }
    };
    // First Ctrl-C: stop at the next step boundary. Second: exit now (every file is
    // written atomically, so nothing is torn).
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            exit_now(130);
        }
        kdtrain::errln!(
            "\nkdtrain: interrupt received; stopping at the next step (Ctrl-C again to quit now)"
        );
    });
    match kdtrain::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            kdtrain::errln!("error: {e:#}");
            if e.downcast_ref::<Interrupted>().is_some() {
                ExitCode::from(130)
            } else if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Keeps freed memory in the heap instead of returning it to the kernel. Each step
/// allocates and frees the same few buffers of hundreds of KB (the batch, activations,
/// gradients); above glibc's default 128 KB mmap threshold every one of them came back as
/// fresh pages, and page faults took about 8% of a training step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: glibc's mallopt takes these documented parameters and only tunes the
        // allocator; it is called before any other thread exists.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 64 << 20);
            mallopt(M_TRIM_THRESHOLD, 256 << 20);
        }
    }
}

/// How long libtorch's OpenMP workers (GNU libgomp, which the PyTorch wheel ships and
/// libtorch_cpu links) spin between parallel regions before they sleep, unless the user
/// chose: the `GOMP_SPINCOUNT` that [`tune_openmp_wait`] sets when neither
/// `OMP_WAIT_POLICY` nor `GOMP_SPINCOUNT` is in the environment. libgomp's own default is
/// 300,000 spins; on a machine where another process wants a core, a spinning worker
/// keeps the core from the thread that the parallel region waits for. The thread count,
/// and so every result, stays the same whatever this is.
const GOMP_SPINCOUNT: &str = "10000";

/// Puts [`GOMP_SPINCOUNT`] into the environment and runs this program again with the same
/// arguments (the same process: `exec`). libgomp reads its environment once, in its ELF
/// constructor, before `main` runs, and libc's own start-up resets the environment after
/// an executable's `.preinit_array`, so setting the variable here and carrying on would
/// have no effect. If `exec` fails, the run goes on with libgomp's default. With
/// `--threads 1` there are no workers to wait, and loading libtorch twice (about 0.3 s)
/// is skipped.
fn tune_openmp_wait() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("OMP_WAIT_POLICY").is_some()
            || std::env::var_os("GOMP_SPINCOUNT").is_some()
        {
            return;
        }
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let one_thread = argv.windows(2).any(|w| w[0] == "--threads" && w[1] == "1")
            || argv.iter().any(|a| a == "--threads=1");
        if one_thread {
            return;
        }
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        let _ = cmd.args(args).env("GOMP_SPINCOUNT", GOMP_SPINCOUNT).exec();
    }
}

/// Ends the process at once with `code`, from the Ctrl-C thread while the main thread
/// may be inside libtorch. `std::process::exit` would run C++ static destructors under
/// the running main thread (heap corruption, then SIGABRT instead of exit 130); `_exit`
/// skips them. Files are safe either way: each is written to a temporary and renamed.
fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn _exit(status: std::ffi::c_int) -> !;
        }
        // SAFETY: `_exit` (POSIX) takes any int and never returns; it touches no Rust state.
        unsafe { _exit(code) }
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}
