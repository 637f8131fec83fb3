//! How busy other processes keep the CPUs this process may run on, read from `/proc`
//! (Linux; elsewhere every function returns `None`). Used twice: at start, to choose how
//! libgomp's OpenMP workers wait (`src/main.rs`), and after each epoch, to notice a load
//! that arrived later ([`LateLoad`]), which that choice cannot follow.

/// libgomp's spin count (`GOMP_SPINCOUNT`: how long libtorch's OpenMP workers spin
/// between parallel regions before they sleep) when the CPUs the workers will run on are
/// free: about 0.1 ms. libgomp's own default, 300,000 spins, keeps a core from any other
/// process that wants it.
pub const SPIN_WHEN_FREE: &str = "10000";

/// The spin count when other processes already keep some of those CPUs busy: sleep at
/// once. A worker that shares its core with another process then gives the core up at
/// each barrier and gets it back when woken, instead of spinning through its time slice
/// while the parallel region waits for a sibling that the other process holds off. On a
/// free machine sleeping costs a wake-up at every parallel region, which makes epochs
/// slower, hence two values. Measured by `scripts/busy_bench.sh` (`bench/BUSY.md`; its
/// `BUSY_SPINS` variants time fixed spin counts).
pub const SPIN_WHEN_BUSY: &str = "0";

/// Test hook: replaces the load [`LateLoad::check`] measures, in CPUs.
pub const TEST_EPOCH_LOAD: &str = "KDTRAIN_TEST_EPOCH_LOAD";

/// Whether fewer of the `cpus` CPUs are left free by other processes' `load` (in CPUs)
/// than `threads` workers need, with half a CPU of slack.
pub fn too_busy(cpus: usize, load: f64, threads: usize) -> bool {
    (cpus as f64 - load) < threads.min(cpus) as f64 - 0.5
}

/// The CPUs this process may run on (`Cpus_allowed_list` in `/proc/self/status`).
pub fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut allowed = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        allowed.extend(a..=b.min(a + 4096));
    }
    (!allowed.is_empty()).then_some(allowed)
}

/// Per CPU of `cpus`: (busy, total) time in clock ticks since boot, from `/proc/stat`.
/// Busy is user, nice, system, irq, softirq and steal time; total adds idle and iowait.
pub fn cpu_ticks(cpus: &[usize]) -> Option<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut out = Vec::with_capacity(cpus.len());
    for &cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() < 8 {
            return None;
        }
        let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
        out.push((busy, busy + f[3] + f[4]));
    }
    Some(out)
}

/// This process's CPU time, all threads, user plus system, in clock ticks
/// (`/proc/self/stat` fields 14 and 15).
pub fn own_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces; the
    // first of them is field 3 (the state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The CPUs other processes kept busy between two samples, in CPUs: the busy time of
/// `cpus` less this process's own (`own` ticks), over the time that passed.
pub fn others(before: &[(u64, u64)], after: &[(u64, u64)], own: u64) -> f64 {
    let (busy, total) = before
        .iter()
        .zip(after)
        .fold((0u64, 0u64), |(b, t), (x, y)| {
            (b + y.0.saturating_sub(x.0), t + y.1.saturating_sub(x.1))
        });
    if total == 0 {
        return 0.0;
    }
    // Ticks per CPU that passed, so that the result is in CPUs.
    let per_cpu = total as f64 / before.len() as f64;
    (busy.saturating_sub(own) as f64 / per_cpu).max(0.0)
}

/// Notices a load that arrives after kdtrain chose to let its OpenMP workers spin
/// ([`SPIN_WHEN_FREE`], chosen by `src/main.rs` when the CPUs were free at start).
/// libgomp reads its spin count once, when libtorch loads, and has no setter, and the
/// thread count cannot change without changing the results' bits; so the run cannot
/// adapt itself, but it can say so once, with what to do (`bench/BUSY.md` measures the
/// cost: about 2.3 times slower teacher epochs with one other busy process on 2 CPUs).
pub struct LateLoad {
    cpus: Vec<usize>,
    threads: usize,
    last: Vec<(u64, u64)>,
    own: u64,
}

/// The note is given once per process (a `reproduce` fits many models).
static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl LateLoad {
    /// Starts watching, for a run on the CPU with `threads` intra-op threads. `None` when
    /// there is nothing to notice: the spin count was not chosen by kdtrain as
    /// [`SPIN_WHEN_FREE`] (a user's `GOMP_SPINCOUNT`, or a busy start), one thread, the
    /// note already given, or no `/proc`.
    pub fn start(threads: usize) -> Option<Self> {
        let chosen = std::env::var(crate::device::CHOSEN_SPINCOUNT).ok()?;
        if chosen != SPIN_WHEN_FREE
            || threads < 2
            || NOTED.load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        let cpus = allowed_cpus()?;
        Some(Self {
            last: cpu_ticks(&cpus)?,
            own: own_ticks()?,
            cpus,
            threads,
        })
    }

    /// The note to give, once per process, when other processes left fewer CPUs free
    /// since the last call than the workers need ([`too_busy`]); `epoch` names the
    /// epoch that just ended, `resume` the way to restart this run.
    pub fn check(&mut self, epoch: usize, resume: &str) -> Option<String> {
        let now = cpu_ticks(&self.cpus)?;
        let own = own_ticks()?;
        let mut load = others(&self.last, &now, own.saturating_sub(self.own));
        (self.last, self.own) = (now, own);
        if let Some(v) = std::env::var_os(TEST_EPOCH_LOAD) {
            load = v.to_str()?.parse().ok()?;
        }
        let cpus = self.cpus.len();
        if !too_busy(cpus, load, self.threads)
            || NOTED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        Some(format!(
            "note: other processes took {load:.1} of the {cpus} CPUs during epoch {epoch}. \
             They were free when kdtrain started, so its {} OpenMP workers spin while they \
             wait, and epochs can run about 2 times slower while the load lasts. For \
             workers that sleep instead: {resume}, since a new process measures the load \
             again; or start with GOMP_SPINCOUNT=0 or --threads 1",
            self.threads
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{others, too_busy};

    #[test]
    fn workers_sleep_when_other_processes_leave_too_few_cpus_free() {
        // 2 CPUs, 2 threads: idle, a little noise, one CPU taken.
        assert!(!too_busy(2, 0.0, 2));
        assert!(!too_busy(2, 0.4, 2));
        assert!(too_busy(2, 0.6, 2));
        assert!(too_busy(2, 1.0, 2));
        // More threads than CPUs count as one per CPU; many free CPUs absorb the load.
        assert!(!too_busy(2, 0.0, 8));
        assert!(!too_busy(16, 3.0, 8));
        assert!(too_busy(16, 8.0, 9));
    }

    #[test]
    fn others_is_busy_time_less_this_process_in_cpus() {
        // 2 CPUs, 100 ticks each passed: both fully busy, this process took 100 ticks
        // (one CPU), so others took one CPU.
        let before = [(0, 0), (50, 50)];
        let after = [(100, 100), (150, 150)];
        assert!((others(&before, &after, 100) - 1.0).abs() < 1e-9);
        // All the busy time is this process's: others took none.
        assert_eq!(others(&before, &after, 200), 0.0);
        // Half busy, all of it others'.
        let after = [(50, 100), (100, 150)];
        assert!((others(&before, &after, 0) - 1.0).abs() < 1e-9);
        // No time passed.
        assert_eq!(others(&before, &before, 0), 0.0);
    }
}
