//! Entry point: parse the command line, run, print the error chain once and map it to an
//! exit code (0 ok, 1 runtime error, 2 usage or config error, 130 interrupted by SIGINT,
//! SIGTERM or SIGHUP).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use kdtrain::cli::Command;
use kdtrain::cli::SweepAction;
use kdtrain::error::INTERRUPTED;

/// Whether the command has steps to stop at (set once the command line is parsed; until
/// then a signal ends the process at once, as nothing has been written).
static STEPS: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    // Before the handler: a signal that ctrlc's handler took in the instant before this
    // image is replaced by `exec` would be lost with its thread (the run then went on to
    // the end, exit 0). Until the handler is installed, the `.preinit_array` handler
    // answers a signal with exit 130 (nothing has been written yet).
    tune_openmp_wait();
    install_signal_handler();
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
                // --help and --version: clap's own output, on standard output, which
                // must be written (exit 1 when it cannot be, as for every result).
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    use std::io::Write as _;
                    return match e.print().and_then(|()| std::io::stdout().flush()) {
                        Ok(()) => ExitCode::SUCCESS,
                        // A reader that went away (`| head`) is not a failure.
                        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                            ExitCode::SUCCESS
                        }
                        Err(err) => {
                            kdtrain::errln!(
                                "error: cannot write the help to standard output: {err}"
                            );
                            ExitCode::from(1)
                        }
                    };
                }
                // No command at all: clap's help, on standard error (exit 2).
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
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
    // Commands that train stop at a step boundary on the first SIGINT (Ctrl-C), SIGTERM
    // (`kill`, Slurm's `scancel` or time limit) or SIGHUP (a closed terminal), with the
    // command that resumes the run, and exit at once on the second. The others have no
    // steps to stop at and exit at once on the first. Every file is written atomically,
    // so nothing is torn either way.
    let steps = match &cli.command {
        Command::Train { .. } | Command::Distill(_) | Command::Reproduce(_) => true,
        Command::Sweep(a) => matches!(
            a.action,
            SweepAction::Run { .. } | SweepAction::RunOne { .. }
        ),
        Command::Evaluate(_) | Command::Predict(_) | Command::Export(_) => false,
    };
    STEPS.store(steps, Ordering::SeqCst);
    match kdtrain::commands::run(cli) {
        Ok(()) => match kdtrain::stdout_failed() {
            None => ExitCode::SUCCESS,
            // Results that did not reach standard output did not reach the user.
            Some(e) => {
                kdtrain::errln!(
                    "error: cannot write the results to standard output ({e}); free space \
                     or redirect it elsewhere (a run's results are also in its folder)"
                );
                ExitCode::from(1)
            }
        },
        Err(e) => {
            kdtrain::errln!("error: {e:#}");
            ExitCode::from(kdtrain::error::exit_code(&e))
        }
    }
}

/// Commands that train stop at a step boundary on the first SIGINT, SIGTERM or SIGHUP
/// and exit at once on the second; the others ([`STEPS`] false) exit at once on the
/// first. A child the command waits on ([`kdtrain::waited_child`]: `sbatch --wait`) is
/// sent SIGTERM first, so that it does not outlive the command.
fn install_signal_handler() {
    let _ = ctrlc::set_handler(move || {
        if !STEPS.load(Ordering::SeqCst) || INTERRUPTED.swap(true, Ordering::SeqCst) {
            if let Some(what) = kdtrain::stop_waited_child() {
                kdtrain::errln!("\nkdtrain: interrupted; stopped {what}");
            }
            kdtrain::errln!("\nkdtrain: interrupted; exiting now");
            exit_now(130);
        }
        kdtrain::errln!(
            "\nkdtrain: interrupt received (Ctrl-C, SIGTERM or SIGHUP); stopping at the next \
             step (the same again quits now)"
        );
    });
    // ctrlc handles all three; a signal ignored when the process started stays ignored.
    #[cfg(target_os = "linux")]
    for (i, sig) in STOP_SIGNALS.into_iter().enumerate() {
        if IGNORED_AT_START.load(Ordering::SeqCst) & (1 << i) != 0 {
            // SAFETY: signal(2) with a valid signal number and SIG_IGN.
            unsafe {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
    }
}

/// The first signal handler, from the executable's `.preinit_array`: it runs before any
/// shared library's constructor, so before libtorch's (about 0.4 s of operator
/// registration, twice when [`tune_openmp_wait`] runs the program again). Until `main`
/// installs the real handler, SIGINT, SIGTERM and SIGHUP end the process with exit 130,
/// as they do later, instead of the signal's default (exit 143 for SIGTERM); nothing has
/// been written yet. A signal the parent set to be ignored (`nohup`) stays ignored; the
/// three are unblocked (the program blocks them across its own `exec`). What remains is
/// the dynamic loader's own few milliseconds at the very start of the process.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".preinit_array")]
static EARLY_SIGNALS: extern "C" fn() = early_signals;

#[cfg(target_os = "linux")]
extern "C" fn early_signals() {
    extern "C" fn on_signal(_: libc::c_int) {
        const MSG: &[u8] = b"\nkdtrain: interrupted while starting; exiting now\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a static buffer.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(130)
        }
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for (i, sig) in STOP_SIGNALS.into_iter().enumerate() {
        // SAFETY: signal(2) with a valid signal number and an async-signal-safe handler;
        // no other thread exists yet. An ignored signal is put back as it was.
        unsafe {
            if libc::signal(sig, handler as libc::sighandler_t) == libc::SIG_IGN {
                libc::signal(sig, libc::SIG_IGN);
                IGNORED_AT_START.fetch_or(1 << i, Ordering::SeqCst);
            }
        }
    }
    // Blocked by the image before this one ([`tune_openmp_wait`]): a signal that came
    // while this one loaded is delivered now, to the handler above.
    block_stop_signals(false);
}

/// Which of [`STOP_SIGNALS`] (bit i for the i-th) the parent left ignored (`nohup`, or
/// a shell's `&` without job control for SIGINT): they stay ignored for the whole run.
#[cfg(target_os = "linux")]
static IGNORED_AT_START: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// SIGHUP, SIGINT and SIGTERM: the signals that stop a run.
#[cfg(target_os = "linux")]
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGHUP, libc::SIGINT, libc::SIGTERM];

/// Blocks (`true`) or unblocks [`STOP_SIGNALS`] for the calling thread; whether it did.
#[cfg(target_os = "linux")]
fn block_stop_signals(block: bool) -> bool {
    // SAFETY: sigemptyset/sigaddset fill a local sigset_t; pthread_sigmask only changes
    // this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        let how = if block {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut()) == 0
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

/// The commands that train, for which the wait is tuned; the others (short, or no
/// libtorch work at all) start once, with libgomp's default, instead of twice.
const TRAINING_COMMANDS: [&str; 4] = ["train", "distill", "reproduce", "sweep"];

/// How long [`other_load`] watches the CPUs.
const LOAD_SAMPLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Chooses libgomp's spin count ([`kdtrain::load::SPIN_WHEN_FREE`] or
/// [`kdtrain::load::SPIN_WHEN_BUSY`]), puts it into the environment and runs this
/// program again with the same arguments (the same process: `exec`). libgomp reads its environment once, in its ELF constructor, before
/// `main` runs, and libc's own start-up resets the environment after an executable's
/// `.preinit_array`, so setting the variable here and carrying on would have no effect.
///
/// Only for the commands that train ([`TRAINING_COMMANDS`]): the CPU time other
/// processes take on the CPUs this process may use is sampled for 0.1 s
/// ([`other_load`]); when fewer CPUs than the worker threads are left free (half a CPU of
/// slack), workers sleep at once. The value chosen is also put in
/// [`kdtrain::device::CHOSEN_SPINCOUNT`], so that child kdtrain processes choose anew.
/// The thread count never depends on the load, so neither does any result: the spin
/// count only changes how workers wait. The load is read once, at start; a load that
/// begins later in the run does not change the choice.
///
/// Left alone: a user's `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`, and `--threads 1` (no
/// workers to wait; loading libtorch twice, about 0.3 s, is skipped). If `exec` fails,
/// the run goes on with libgomp's default.
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
        let requested = argv
            .windows(2)
            .filter(|w| w[0] == "--threads")
            .map(|w| w[1].to_string_lossy().into_owned())
            .chain(argv.iter().filter_map(|a| {
                a.to_str()
                    .and_then(|a| a.strip_prefix("--threads="))
                    .map(str::to_string)
            }))
            .next_back()
            .and_then(|t| t.parse::<usize>().ok());
        if requested == Some(1) {
            return;
        }
        // The command: the first argument that names one (a later `train`, say a file
        // name given to `predict`, is not the command).
        use clap::CommandFactory;
        let cli = kdtrain::cli::Cli::command();
        let command = argv.iter().skip(1).find_map(|a| {
            let a = a.to_str()?;
            cli.find_subcommand(a).map(|c| c.get_name().to_string())
        });
        if !command.is_some_and(|c| TRAINING_COMMANDS.contains(&c.as_str())) {
            return;
        }
        let threads = requested
            .filter(|&t| t > 0)
            .unwrap_or_else(kdtrain::device::physical_cores);
        let mut spin = kdtrain::load::SPIN_WHEN_FREE;
        if let Some((cpus, load)) = other_load()
            && kdtrain::load::too_busy(cpus, load, threads)
        {
            spin = kdtrain::load::SPIN_WHEN_BUSY;
        }
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        if let Some(arg0) = args.next() {
            cmd.arg0(arg0);
        }
        // SIGINT, SIGTERM and SIGHUP stay blocked across `exec`, so that one arriving
        // while the new image loads waits (pending) for its `.preinit_array` handler,
        // which unblocks them, instead of ending the process with the default action.
        let blocked = block_stop_signals(true);
        let _ = cmd
            .args(args)
            .env("GOMP_SPINCOUNT", spin)
            .env(kdtrain::device::CHOSEN_SPINCOUNT, spin)
            .exec();
        // `exec` failed: the run goes on here, with the signals as they were.
        if blocked {
            block_stop_signals(false);
        }
    }
}

/// The CPUs this process may use and how many of them, in CPUs, other processes kept
/// busy over [`LOAD_SAMPLE`] ([`kdtrain::load`]; this process sleeps meanwhile).
/// `KDTRAIN_TEST_OTHER_LOAD=<cpus>` replaces the measured load (for tests). `None` when
/// `/proc` cannot be read or parsed.
#[cfg(target_os = "linux")]
fn other_load() -> Option<(usize, f64)> {
    use kdtrain::load;
    let cpus = load::allowed_cpus()?;
    if let Some(v) = std::env::var_os("KDTRAIN_TEST_OTHER_LOAD") {
        return Some((cpus.len(), v.to_str()?.parse().ok()?));
    }
    let (before, own_before) = (load::cpu_ticks(&cpus)?, load::own_ticks()?);
    std::thread::sleep(LOAD_SAMPLE);
    let (after, own_after) = (load::cpu_ticks(&cpus)?, load::own_ticks()?);
    Some((
        cpus.len(),
        load::others(&before, &after, own_after.saturating_sub(own_before)),
    ))
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
