//! The errors every stage can return and the exit codes they map to. This module is the
//! floor of the crate: it imports nothing from it, so any module may use it.
//!
//! Exit codes: 0 ok, 1 runtime error, 2 usage or config error ([`UsageError`] anywhere
//! in the chain), 130 interrupted by SIGINT, SIGTERM or SIGHUP ([`Interrupted`]).

use std::fmt;
use std::sync::atomic::AtomicBool;

use anyhow::Result;

/// An error in how the program was called (config file, flag value, missing prerequisite
/// file named by the user). `main` maps it to exit code 2; every other error exits 1.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for returning a [`UsageError`].
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UsageError(msg.into()).into())
}

/// Set by the SIGINT handler; the training loop checks it at every step boundary.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Test hook: `KDTRAIN_TEST_INTERRUPT=final-evaluation` acts as a Ctrl-C that arrives
/// after the last epoch, while the final evaluation runs (too short a moment for a test
/// to hit with a real signal); `epoch:N` one that arrives right after epoch N is saved;
/// `cache:K` one that arrives right after the teacher's logits on view K are cached
/// (`cache:0`: as the pass over the unaugmented images starts).
pub const INTERRUPT_HOOK: &str = "KDTRAIN_TEST_INTERRUPT";

/// Whether the test hook [`INTERRUPT_HOOK`] is set to `value`.
pub fn hook_is(value: &str) -> bool {
    std::env::var_os(INTERRUPT_HOOK).is_some_and(|v| v == value)
}

/// The run was stopped by Ctrl-C, SIGTERM or SIGHUP; `main` exits 130.
#[derive(Debug)]
pub struct Interrupted {
    /// What was interrupted and what is on disk.
    pub what: String,
    /// The command that resumes the run, when it can be resumed; a caller that knows a
    /// better one (`sweep run-one`) gives its own.
    pub resume: Option<String>,
    /// Whether a completed epoch is on disk, so that the run can be resumed (the command
    /// that started it adds [`Interrupted::resume`]).
    pub resumable: bool,
    /// What the interruption left undone beyond this run (`reproduce`'s runs that did
    /// not start), said after the resume command; empty when nothing.
    pub left: String,
}

impl Interrupted {
    /// An interruption with no command to resume it.
    pub fn new(what: impl Into<String>) -> Interrupted {
        Interrupted {
            what: what.into(),
            resume: None,
            resumable: false,
            left: String::new(),
        }
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resume {
            None => f.write_str(&self.what)?,
            Some(cmd) => write!(
                f,
                "{}; continue it with `{cmd}` (plus the options you started it with)",
                self.what
            )?,
        }
        match self.left.as_str() {
            "" => Ok(()),
            left => write!(f, ". {left}"),
        }
    }
}

impl std::error::Error for Interrupted {}

/// The exit code of a failed command: 130 for [`Interrupted`], 2 for a [`UsageError`]
/// anywhere in the chain, 1 otherwise. `main` and `sweep run-one` (which records a job's
/// code) share it.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Interrupted>().is_some() {
        130
    } else if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        2
    } else {
        1
    }
}

/// `p` quoted for a POSIX shell, for the commands that messages print (the resume
/// command, sweep hints), so a path with spaces can be pasted as it is.
pub fn quote(p: &std::path::Path) -> String {
    shlex::try_quote(&p.display().to_string())
        .map(|s| s.into_owned())
        .unwrap_or_else(|_| format!("'{}'", p.display()))
}
