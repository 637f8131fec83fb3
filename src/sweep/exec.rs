//! Running a planned sweep: the state of each job's run folder, one job in this process
//! (`run-one`, what each Slurm array task or GNU parallel slot runs), K jobs at a time as
//! child processes (`run`), and the Slurm batch script (`submit`).
//!
//! A job's run folder is `<sweep>/runs/<id>`, and the run lock
//! ([`crate::checkpoint::RunLock`]) keeps a second process out of it. A finished job
//! (`model.safetensors`, `state.json` with `finished: true`, `summary.json`) is skipped, an
//! unfinished one with a completed epoch is resumed (`--resume`), and a folder with no
//! completed epoch is removed and the job started again. Each job's exit status and
//! wall-clock seconds go to `<sweep>/status/<id>.json`.
//!
//! Before it looks at a job, the process that will run it (`sweep run`, for as long as
//! its child runs; `run-one`) takes the job's claim, a lock on `<sweep>/claims/<id>.lock`
//! ([`claim`]): two `sweep run` on one sweep, or a `sweep run` beside Slurm's tasks, then
//! share the jobs out instead of starting one twice (the second would fail on the run
//! lock, count as failed and overwrite the first's log).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::plan::{Job, JobKind, Plan};
use crate::checkpoint::{RunLock, write_atomic};
use crate::error::usage;
use crate::error::{INTERRUPTED, Interrupted, quote};
use crate::run::{MODEL_FILE, STATE_FILE, TrainState};

/// Where a job stands, from its run folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// No run folder.
    Missing,
    /// A folder without a completed epoch (or finished without its summary): started again.
    Stale,
    /// Completed epochs, not finished: resumed.
    Unfinished,
    /// Another process holds its run lock.
    Running,
    Finished,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Missing => "missing",
            JobState::Stale => "unstarted",
            JobState::Unfinished => "unfinished",
            JobState::Running => "running",
            JobState::Finished => "finished",
        }
    }
}

/// A process's claim on a job (`<sweep>/claims/<id>.lock`, a [`RunLock`] on that
/// file): held from before the job's state is read until its run has ended, so that no
/// other `sweep run` or `run-one` starts it meanwhile; `None` when another process holds
/// it. Released when dropped, or by the kernel when the process dies.
///
/// # Errors
/// The claims folder or the lock file cannot be created (named).
pub fn claim(sweep: &Path, job: &Job) -> Result<Option<RunLock>> {
    let dir = sweep.join("claims");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    RunLock::try_file(&dir.join(format!("{}.lock", job.id)))
}

/// A job's run folder.
pub fn run_dir(sweep: &Path, job: &Job) -> PathBuf {
    sweep.join("runs").join(&job.id)
}

/// The state of a job's run folder (takes and drops its lock to see whether it is in use).
pub fn job_state(sweep: &Path, job: &Job) -> JobState {
    let dir = run_dir(sweep, job);
    if !dir.is_dir() {
        return JobState::Missing;
    }
    let state: Option<TrainState> = std::fs::read_to_string(dir.join(STATE_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let finished = state.as_ref().is_some_and(|s| s.finished)
        && dir.join(MODEL_FILE).is_file()
        && dir.join("summary.json").is_file();
    if finished {
        return JobState::Finished;
    }
    if dir.join("run.lock").exists() && RunLock::acquire(&dir).is_err() {
        return JobState::Running;
    }
    match state {
        Some(s) if !s.finished && s.epoch > 0 && dir.join(crate::run::LAST_FILE).is_file() => {
            JobState::Unfinished
        }
        _ => JobState::Stale,
    }
}

/// What a job's process did, in `<sweep>/status/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub index: usize,
    pub id: String,
    /// 0 ok, 1 runtime error, 2 usage error, 130 interrupted (also a job that `sweep run`
    /// stopped before it could catch the signal), -1 killed by a signal.
    pub exit_code: i32,
    /// The error line, when it failed (run-one only; a child's is in its log).
    pub error: Option<String>,
    /// Wall-clock seconds of the job, process start to exit.
    pub seconds: f64,
    pub resumed: bool,
    pub host: String,
    /// `SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID` under Slurm.
    pub slurm: Option<String>,
    /// When it ended (local time, RFC 3339).
    pub ended: String,
}

impl JobStatus {
    /// The status of `job` that ended with `exit_code` after `seconds` in a process that
    /// `sweep run` started here (no error text: it is in the job's log).
    fn local(job: &Job, exit_code: i32, seconds: f64, resumed: bool) -> JobStatus {
        JobStatus {
            index: job.index,
            id: job.id.clone(),
            exit_code,
            error: None,
            seconds,
            resumed,
            host: hostname(),
            slurm: None,
            ended: chrono::Local::now().to_rfc3339(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn write_status(sweep: &Path, st: &JobStatus) -> Result<()> {
    let path = sweep.join("status").join(format!("{}.json", st.id));
    std::fs::create_dir_all(sweep.join("status"))?;
    write_atomic(&path, serde_json::to_string_pretty(st)?.as_bytes())
}

/// Reads a job's status file, if any.
pub fn read_status(sweep: &Path, job: &Job) -> Option<JobStatus> {
    let path = sweep.join("status").join(format!("{}.json", job.id));
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Gets a job's folder ready to run: `Some(resume)`, or `None` when it is finished.
///
/// # Errors
/// A usage error when another process is running it.
fn prepare(sweep: &Path, job: &Job) -> Result<Option<bool>> {
    match job_state(sweep, job) {
        JobState::Finished => Ok(None),
        JobState::Running => usage(format!(
            "job {} ({}) is running in another process (run folder {} is locked)",
            job.index,
            job.id,
            run_dir(sweep, job).display()
        )),
        JobState::Unfinished => Ok(Some(true)),
        JobState::Missing => Ok(Some(false)),
        JobState::Stale => {
            let dir = run_dir(sweep, job);
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the unstarted run folder {}", dir.display()))?;
            Ok(Some(false))
        }
    }
}

/// What `sweep run-one` trains in its own process: the run that [`job_args`] describes
/// as a command line, which `sweep run` starts as a process of its own.
pub struct JobRun {
    pub kind: JobKind,
    /// `<sweep>/jobs/<id>.toml`: the job's whole config.
    pub config: PathBuf,
    /// The job's id, its run folder's name.
    pub run_name: String,
    /// `<sweep>/runs`.
    pub out_dir: PathBuf,
    pub resume: bool,
    pub quiet: bool,
}

/// The command line (after the program name) that runs `job`:
/// `distill --config <sweep>/jobs/<id>.toml --run-name <id> --out-dir <sweep>/runs`.
pub fn job_args(sweep: &Path, job: &Job, resume: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = job.kind.command().iter().map(OsString::from).collect();
    a.push("--config".into());
    a.push(sweep.join(job.config_path()).into());
    a.push("--run-name".into());
    a.push(job.id.clone().into());
    a.push("--out-dir".into());
    a.push(sweep.join("runs").into());
    if resume {
        a.push("--resume".into());
    }
    a
}

/// `sweep run-one`: runs job `index` in this process, unless it is finished.
///
/// # Errors
/// The job's own error (so the exit code is the job's), or a usage error for a bad
/// folder or index, or a job that another process is running.
///
/// `run` trains the job in this process, from its [`JobRun`]: the caller's command, which
/// this module, below the commands, does not know.
pub fn run_one(
    sweep: &Path,
    index: usize,
    quiet: bool,
    run: impl FnOnce(&JobRun) -> Result<()>,
) -> Result<()> {
    let plan = Plan::load(sweep)?;
    let job = plan.job(index)?.clone();
    let Some(_claim) = claim(sweep, &job)? else {
        return usage(format!(
            "job {index} ({}) is running in another process (a sweep run or run-one holds \
             its claim {}); wait for it (`kdtrain sweep collect` lists the jobs not finished)",
            job.id,
            sweep
                .join("claims")
                .join(format!("{}.lock", job.id))
                .display()
        ));
    };
    let Some(resume) = prepare(sweep, &job)? else {
        crate::outln!(
            "job {index} ({}, {} seed {}) already finished; nothing to do",
            job.id,
            job.point(),
            job.seed
        );
        return Ok(());
    };
    crate::errln!(
        "job {index} ({}): {} seed {}{}",
        job.id,
        job.point(),
        job.seed,
        if resume { ", resuming" } else { "" }
    );
    // An interrupted job resumes through run-one (its options are in jobs/<id>.toml, not
    // on a command line), so that is the command to give.
    let result = run(&JobRun {
        kind: job.kind,
        config: sweep.join(job.config_path()),
        run_name: job.id.clone(),
        out_dir: sweep.join("runs"),
        resume,
        quiet,
    })
    .map_err(|e| match e.downcast::<Interrupted>() {
        Ok(i) => Interrupted::new(format!(
            "job {index} ({}): {}; resume it with `kdtrain sweep run-one {} --index {index}` \
             (or `sweep run`, or submit the sweep again)",
            job.id,
            i.what,
            quote(sweep)
        ))
        .into(),
        Err(e) => e,
    });
    let slurm = match (
        std::env::var("SLURM_ARRAY_JOB_ID"),
        std::env::var("SLURM_ARRAY_TASK_ID"),
    ) {
        (Ok(j), Ok(t)) => Some(format!("{j}_{t}")),
        _ => std::env::var("SLURM_JOB_ID").ok(),
    };
    let exit_code = match &result {
        Ok(()) => 0,
        Err(e) => crate::error::exit_code(e) as i32,
    };
    write_status(
        sweep,
        &JobStatus {
            index,
            id: job.id.clone(),
            exit_code,
            error: result.as_ref().err().map(|e| format!("{e:#}")),
            seconds: crate::process_seconds(),
            resumed: resume,
            host: hostname(),
            slurm,
            ended: chrono::Local::now().to_rfc3339(),
        },
    )?;
    result
}

/// Sends SIGINT to a child (its own process group, so a terminal's Ctrl-C reaches only
/// the parent, which passes it on once: each job then stops at its next step).
fn interrupt(child: &Child) {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn kill(pid: std::ffi::c_int, sig: std::ffi::c_int) -> std::ffi::c_int;
        }
        const SIGINT: std::ffi::c_int = 2;
        // SAFETY: POSIX kill with a pid we spawned and have not yet reaped.
        unsafe {
            kill(child.id() as std::ffi::c_int, SIGINT);
        }
    }
}

/// `sweep run`: every unfinished job, `jobs` at a time, each as `kdtrain <job args>` in
/// its own process with its output in `<sweep>/logs/<id>.log`. One progress display for
/// the sweep (done, running, failed, ETA) on stderr; a line per finished job when stderr
/// is not a terminal. Ctrl-C stops every job at its next step (they resume on the next
/// `sweep run`).
///
/// # Errors
/// A runtime error listing the failed jobs; [`Interrupted`] after Ctrl-C.
pub fn run_local(sweep: &Path, jobs: usize, quiet: bool) -> Result<()> {
    let plan = Plan::load(sweep)?;
    if jobs == 0 {
        return usage("--jobs 0: expected at least 1 job at a time");
    }
    let exe = std::env::current_exe().context("finding the kdtrain binary")?;
    let mut pending: Vec<&Job> = Vec::new();
    let mut skipped = 0;
    let mut elsewhere = Vec::new();
    for job in &plan.jobs {
        match job_state(sweep, job) {
            JobState::Finished => skipped += 1,
            JobState::Running => elsewhere.push(job),
            _ => pending.push(job),
        }
    }
    let total = plan.jobs.len();
    for j in &elsewhere {
        crate::errln!(
            "warning: job {} ({}) is running in another process; not started here",
            j.index,
            j.id
        );
    }
    if pending.is_empty() {
        crate::outln!(
            "sweep {}: nothing to run ({} of {total} jobs finished{})",
            sweep.display(),
            skipped,
            if elsewhere.is_empty() {
                String::new()
            } else {
                format!(", {} running elsewhere", elsewhere.len())
            }
        );
        return Ok(());
    }
    std::fs::create_dir_all(sweep.join("logs"))?;
    let n = pending.len();
    let bar = sweep_bar(n, quiet);
    let attended = !bar.is_hidden();
    let say = |line: &str| {
        if !quiet {
            bar.suspend(|| crate::errln!("{line}"));
        }
    };
    say(&format!(
        "sweep {}: {n} jobs to run, {jobs} at a time ({skipped} of {total} already finished)",
        sweep.display()
    ));
    let t0 = Instant::now();
    let mut queue = pending.into_iter();
    let mut running: Vec<(Child, &Job, Instant, bool, RunLock)> = Vec::new();
    let (mut done, mut failed) = (0usize, Vec::<(&Job, i32)>::new());
    // Jobs another process took after this one listed them: running, or finished there.
    let mut taken = Vec::<&Job>::new();
    let mut interrupted = false;
    let mut notes: Vec<String> = Vec::new();
    // The scheduling loop; on an error of its own (a log that cannot be created, say) the
    // running jobs are stopped and waited for before the error is returned.
    let outcome = (|| -> Result<()> {
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) && !interrupted {
                interrupted = true;
                say("sweep: interrupted; stopping every running job at its next step");
                for (c, ..) in &running {
                    interrupt(c);
                }
            }
            while !interrupted && running.len() < jobs {
                let Some(job) = queue.next() else { break };
                let held = match claim(sweep, job)? {
                    Some(c) if job_state(sweep, job) != JobState::Running => c,
                    _ => {
                        say(&format!(
                            "job {} ({}) is running in another process; not started here",
                            job.index, job.id
                        ));
                        bar.inc(1);
                        taken.push(job);
                        continue;
                    }
                };
                let resume = match prepare(sweep, job) {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        bar.inc(1);
                        taken.push(job);
                        continue;
                    }
                    Err(e) => {
                        say(&format!("job {} ({}): {e:#}", job.index, job.id));
                        failed.push((job, 2));
                        continue;
                    }
                };
                let child = spawn_job(&exe, sweep, job, resume)?;
                running.push((child, job, Instant::now(), resume, held));
            }
            // One line per job that ended, with the counts after the free slots were refilled.
            for note in notes.drain(..) {
                let finished = done + failed.len();
                let eta = if done > 0 {
                    let per = t0.elapsed().as_secs_f64() / finished as f64;
                    format!("{:.0} s", per * (n - finished) as f64)
                } else {
                    "-".into()
                };
                say(&format!(
                    "sweep: {finished}/{n} done, {} running, {} failed, ETA {eta} | {note}",
                    running.len(),
                    failed.len(),
                ));
            }
            if running.is_empty() {
                break;
            }
            // Poll every 25 ms: a free slot is refilled within 25 ms (40 waitpid calls a second).
            std::thread::sleep(Duration::from_millis(25));
            let mut i = 0;
            while i < running.len() {
                let Some(status) = running[i].0.try_wait()? else {
                    i += 1;
                    continue;
                };
                let (_, job, started, resumed, _claim) = running.swap_remove(i);
                let secs = started.elapsed().as_secs_f64();
                // A job stopped by our SIGINT before it could catch it (still starting) dies
                // of the signal: it was interrupted as the others were, not failed.
                let code = match status.code() {
                    Some(c) => c,
                    None if interrupted => 130,
                    None => -1,
                };
                write_status(sweep, &JobStatus::local(job, code, secs, resumed))?;
                bar.inc(1);
                let what = match code {
                    0 => {
                        done += 1;
                        format!("finished in {secs:.1} s")
                    }
                    130 if interrupted => "stopped (resumes on the next sweep run)".to_string(),
                    c => {
                        failed.push((job, c));
                        format!(
                            "FAILED (exit {c}); see {}",
                            sweep.join("logs").join(format!("{}.log", job.id)).display()
                        )
                    }
                };
                if !attended {
                    notes.push(format!(
                        "job {} ({}, {} seed {}) {what}",
                        job.index,
                        job.id,
                        job.point(),
                        job.seed
                    ));
                } else if code != 0 {
                    say(&format!("job {} ({}) {what}", job.index, job.id));
                }
            }
            bar.set_message(format!(
                "{} running, {} failed",
                running.len(),
                failed.len()
            ));
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        for (c, ..) in &running {
            interrupt(c);
        }
        for (c, ..) in &mut running {
            let _ = c.wait();
        }
        bar.finish_and_clear();
        return Err(e);
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if interrupted {
        return Err(Interrupted::new(format!(
            "sweep {} interrupted after {secs:.1} s with {done} of {n} jobs finished; `kdtrain sweep run {}` completes it",
            sweep.display(),
            quote(sweep)
        ))
        .into());
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed
            .iter()
            .map(|(j, c)| format!("{} ({}, exit {c})", j.index, j.id))
            .collect();
        anyhow::bail!(
            "{} of {n} sweep jobs failed: {}; their logs are in {}/logs; `kdtrain sweep run {}` runs them again",
            failed.len(),
            list.join(", "),
            sweep.display(),
            quote(sweep)
        );
    }
    let others = match taken.len() {
        0 => String::new(),
        t => format!(
            ", {t} taken by another process (`kdtrain sweep collect` lists the jobs not finished)"
        ),
    };
    crate::outln!(
        "sweep {}: {done} jobs run in {secs:.1} s ({skipped} already finished{others}); `kdtrain sweep collect {}` makes the table",
        sweep.display(),
        quote(sweep)
    );
    Ok(())
}

/// The sweep's progress bar over `n` jobs (hidden with `quiet`, and by indicatif when
/// stderr is not a terminal).
fn sweep_bar(n: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "sweep {bar:30} {pos}/{len} jobs | {msg} | ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Starts `job` as `exe <job args>` in its own process group (so a terminal's Ctrl-C
/// reaches only `sweep run`, which passes it on), its output in `<sweep>/logs/<id>.log`.
fn spawn_job(exe: &Path, sweep: &Path, job: &Job, resume: bool) -> Result<Child> {
    let log = sweep.join("logs").join(format!("{}.log", job.id));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(exe);
    crate::device::leave_spincount_to_child(&mut cmd);
    cmd.args(job_args(sweep, job, resume))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// `sweep submit --slurm`'s options.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// `--time`, in any format sbatch takes (`30`, `1:00:00`).
    pub time: Option<String>,
    /// At most this many array tasks at once (`%M`).
    pub max_parallel: Option<usize>,
    /// More sbatch arguments, split like a shell would.
    pub extra: Vec<String>,
    /// Memory per task, MB.
    pub mem_mb: u64,
    pub dry_run: bool,
    /// `sbatch --wait`: return when the array has finished.
    pub wait: bool,
}

/// Default memory per array task, MB: the measured peak resident set of a distill job on
/// Fashion-MNIST (about 0.9 GB) plus a third for safety.
pub const DEFAULT_MEM_MB: u64 = 1200;

/// Indices as Slurm's array syntax: `0-3,5,7-8`.
pub fn array_ranges(idx: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && idx[j + 1] == idx[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            idx[i].to_string()
        } else {
            format!("{}-{}", idx[i], idx[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The batch script for the unfinished jobs `todo` (0-based `jobs.txt` lines).
pub fn sbatch_script(
    sweep: &Path,
    plan: &Plan,
    todo: &[usize],
    exe: &Path,
    o: &SlurmOptions,
) -> String {
    let name = sweep
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sweep".into());
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!(
        "# kdtrain {name}: {} of {} jobs as a Slurm job array, written by `kdtrain sweep submit`.\n",
        todo.len(),
        plan.jobs.len()
    ));
    s.push_str(
        "# Array task i runs line i (0-based) of jobs.txt: a finished job is skipped, an\n\
         # interrupted one resumed. Logs: logs/slurm-<job>_<task>.out; exit status and seconds:\n\
         # status/<id>.json. Resubmit with `kdtrain sweep submit <dir> --slurm`.\n",
    );
    s.push_str(&format!("#SBATCH --job-name=kdtrain-{name}\n"));
    let cap = o.max_parallel.map(|m| format!("%{m}")).unwrap_or_default();
    s.push_str(&format!("#SBATCH --array={}{cap}\n", array_ranges(todo)));
    s.push_str("#SBATCH --ntasks=1\n");
    s.push_str(&format!(
        "#SBATCH --cpus-per-task={}\n",
        plan.threads.max(1)
    ));
    s.push_str(&format!("#SBATCH --mem={}M\n", o.mem_mb));
    s.push_str(&format!(
        "#SBATCH --output={}\n",
        sweep.join("logs").join("slurm-%A_%a.out").display()
    ));
    if let Some(p) = &o.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = &o.time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    s.push_str("set -euo pipefail\n");
    s.push_str(&format!(
        "exec {} sweep run-one {} --index \"$SLURM_ARRAY_TASK_ID\"\n",
        quote(exe),
        quote(sweep)
    ));
    s
}

/// The first character of `p` that an `#SBATCH --output=` line cannot hold as it is
/// (whitespace, a quote, a backslash, `%`), or U+FFFD for a path that is not UTF-8.
fn slurm_unsafe(p: &Path) -> Option<char> {
    match p.to_str() {
        None => Some(char::REPLACEMENT_CHARACTER),
        Some(s) => s
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '%')),
    }
}

/// A program on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `sweep submit --slurm`: writes `<sweep>/sweep.sbatch` for the unfinished jobs and runs
/// `sbatch` on it (not with `dry_run`).
///
/// # Errors
/// A usage error when `sbatch` is not on `PATH`; a runtime error when it fails.
pub fn submit_slurm(sweep: &Path, o: &SlurmOptions) -> Result<()> {
    let plan = Plan::load(sweep)?;
    // sbatch runs in the sweep folder, and the script names it: both need its full path.
    let sweep = &std::path::absolute(sweep)
        .with_context(|| format!("resolving the sweep folder {}", sweep.display()))?;
    if let Some(c) = slurm_unsafe(sweep) {
        return usage(format!(
            "{} cannot go into a Slurm batch script: its path has {c:?}, and Slurm splits \
             #SBATCH lines at whitespace, treats quotes and backslashes specially and expands \
             `%` in --output; plan the sweep again under an --out-dir without it, or run it \
             here with `kdtrain sweep run {} --jobs K`",
            sweep.display(),
            quote(sweep)
        ));
    }
    if o.max_parallel == Some(0) {
        return usage("--max-parallel 0: expected at least 1 task at a time");
    }
    let todo: Vec<usize> = plan
        .jobs
        .iter()
        .filter(|j| job_state(sweep, j) != JobState::Finished)
        .map(|j| j.index)
        .collect();
    if todo.is_empty() {
        crate::outln!(
            "sweep {}: nothing to submit; all {} jobs finished (`kdtrain sweep collect {}`)",
            sweep.display(),
            plan.jobs.len(),
            quote(sweep)
        );
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the kdtrain binary")?;
    std::fs::create_dir_all(sweep.join("logs"))?;
    let script = sweep.join("sweep.sbatch");
    write_atomic(
        &script,
        sbatch_script(sweep, &plan, &todo, &exe, o).as_bytes(),
    )?;
    if o.dry_run {
        crate::outln!(
            "wrote {} ({} array tasks); submit it with: sbatch {}",
            script.display(),
            todo.len(),
            quote(&script)
        );
        return Ok(());
    }
    let Some(sbatch) = which("sbatch") else {
        return usage(format!(
            "sbatch not found on PATH: this machine has no Slurm client (or its module is not \
             loaded). {} is written: copy the sweep folder to a Slurm login node and run \
             `sbatch {}` there, or run the sweep here with `kdtrain sweep run {} --jobs K`",
            script.display(),
            quote(&script),
            quote(sweep)
        ));
    };
    let mut cmd = Command::new(&sbatch);
    crate::device::leave_spincount_to_child(&mut cmd);
    if o.wait {
        cmd.arg("--wait");
    }
    cmd.args(&o.extra).arg(&script).current_dir(sweep);
    crate::errln!(
        "submitting {} array tasks of {}{}",
        todo.len(),
        sweep.display(),
        if o.wait {
            "; waiting for them to finish"
        } else {
            ""
        }
    );
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", sbatch.display()))?;
    // A signal stops this command at once (it has no steps); the handler stops sbatch
    // too, instead of leaving `sbatch --wait` running without us.
    crate::waited_child(Some((
        child.id(),
        &format!(
            "{} (pid {}); the array tasks already submitted stay in Slurm's queue: see \
             `squeue --me`, and cancel them with `scancel` if they are not wanted",
            if o.wait { "sbatch --wait" } else { "sbatch" },
            child.id()
        ),
        &[],
    )));
    let status = child.wait();
    crate::waited_child(None);
    let status = status.with_context(|| format!("waiting for {}", sbatch.display()))?;
    if !status.success() {
        anyhow::bail!(
            "sbatch {} exited with {}{}; see {}/logs/slurm-*.out and `kdtrain sweep collect {}`",
            script.display(),
            status
                .code()
                .map_or_else(|| "a signal".into(), |c| format!("status {c}")),
            if o.wait {
                " (with --wait: some array task failed)"
            } else {
                ""
            },
            sweep.display(),
            quote(sweep)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_ranges_compress_runs() {
        assert_eq!(array_ranges(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_ranges(&[0, 2, 3, 5, 7, 8, 9]), "0,2-3,5,7-9");
        assert_eq!(array_ranges(&[4]), "4");
        assert_eq!(array_ranges(&[]), "");
    }
}
