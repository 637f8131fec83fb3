//! kdtrain: knowledge distillation (Hinton, Vinyals and Dean 2015) of a teacher (an MLP, a
//! CNN or a TorchScript model) into a small student, on Fashion-MNIST or any
//! image-classification data set ([`data`]), on libtorch through `tch`.
//!
//! Data flows one way: [`config`] + [`cli`] -> [`settings`] -> [`data`] -> [`model`] ->
//! [`train`] (with [`objective`], [`schedule`], [`optim`]) -> [`checkpoint`], [`run`] and
//! the reports ([`eval`], [`report`], [`tensorboard`], [`plot`]). [`commands`] wires each
//! command of [`cli`] to these stages.

pub mod augment;
pub mod bias;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod download;
pub mod ensemble;
pub mod error;
pub mod eval;
pub mod export;
pub mod image_input;
pub mod load;
pub mod model;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod report;
pub mod run;
pub mod schedule;
pub mod sweep;
pub mod teacher;
pub mod tensorboard;
pub mod torchscript;
pub mod train;

/// `println!` that never panics. A closed pipe (`| head`) is ignored; any other failure
/// (a full disk) is kept by [`stdout_failed`], and `main` then exits 1 saying so.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        $crate::note_stdout(writeln!(std::io::stdout(), $($t)*));
    }};
}

/// `print!` that never panics (see [`outln!`]).
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        $crate::note_stdout(write!(std::io::stdout(), $($t)*));
    }};
}

/// The first failure to write to standard output other than a closed pipe.
static STDOUT_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Keeps the first error of a write to standard output ([`outln!`], [`out!`]); a closed
/// pipe is not one (the reader has what it wanted).
pub fn note_stdout(r: std::io::Result<()>) {
    if let Err(e) = r
        && e.kind() != std::io::ErrorKind::BrokenPipe
        && let Ok(mut slot) = STDOUT_ERROR.lock()
    {
        slot.get_or_insert_with(|| e.to_string());
    }
}

/// Flushes standard output and returns why it could not be written, if anything written
/// with [`outln!`] or [`out!`] failed (a full disk), not counting a closed pipe.
pub fn stdout_failed() -> Option<String> {
    use std::io::Write as _;
    note_stdout(std::io::stdout().flush());
    STDOUT_ERROR.lock().ok().and_then(|s| s.clone())
}

/// `eprintln!` that never panics: progress and status lines are not worth a crash when
/// stderr is closed or full.
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

use std::sync::OnceLock;
use std::time::Instant;

/// The libtorch version this binary was built against (read by build.rs).
pub const LIBTORCH_VERSION: &str = env!("KDTRAIN_LIBTORCH_VERSION");

static START: OnceLock<Instant> = OnceLock::new();

/// Marks the process start; call first thing in `main`.
pub fn mark_start() {
    START.get_or_init(Instant::now);
}

/// Seconds since [`mark_start`].
pub fn process_seconds() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The child process the command is waiting on (`sbatch --wait`, the ONNX exporter),
/// what to call it, and the temporary files it works on; read by the signal handler,
/// which stops it and removes them before exiting.
static WAITED_CHILD: std::sync::Mutex<Option<(u32, String, Vec<std::path::PathBuf>)>> =
    std::sync::Mutex::new(None);

/// Records `pid` as the child this process waits on, with the temporary files to remove
/// if a signal stops the command (see [`stop_waited_child`]); `None` once it has been
/// reaped.
pub fn waited_child(pid: Option<(u32, &str, &[std::path::PathBuf])>) {
    if let Ok(mut w) = WAITED_CHILD.lock() {
        *w = pid.map(|(p, what, files)| (p, what.to_string(), files.to_vec()));
    }
}

/// Sends SIGTERM to the child recorded by [`waited_child`], if any, removes its
/// temporary files, and says what it was; for the signal handler (a thread of its own,
/// not a signal context) just before the process exits.
pub fn stop_waited_child() -> Option<String> {
    let (pid, what, files) = WAITED_CHILD.lock().ok()?.take()?;
    // SAFETY: POSIX kill with the pid of our child. It is cleared right after the wait
    // that reaps it returns, so only a signal in that instant could reach a reused pid.
    #[cfg(unix)]
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    #[cfg(not(unix))]
    let _ = pid;
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    Some(what)
}

/// Lower-case hex of `bytes` (digests in file names, metadata and messages).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
