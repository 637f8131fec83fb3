//! Device selection: `auto`, `cpu`, `cuda` or `cuda:N`, and the intra-op thread count.

use anyhow::Result;
use tch::Device;

use crate::error::usage;

/// What the user asked for, before checking that it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Auto,
    Cpu,
    Cuda(usize),
}

/// Parses `auto | cpu | cuda | cuda:N`.
pub fn parse(s: &str) -> std::result::Result<Request, String> {
    match s {
        "auto" => Ok(Request::Auto),
        "cpu" => Ok(Request::Cpu),
        "cuda" => Ok(Request::Cuda(0)),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Request::Cuda(n)),
            _ => Err(format!("expected auto, cpu, cuda or cuda:N, found {s:?}")),
        },
    }
}

/// Resolves a device string to a device that exists on this machine.
///
/// # Errors
/// A usage error when CUDA is asked for but libtorch sees no GPU, or `cuda:N` is past
/// the last GPU.
pub fn resolve(s: &str) -> Result<Device> {
    let req = parse(s)
        .map_err(|e| crate::error::UsageError(format!("runtime.device (--device): {e}")))?;
    let gpus = tch::Cuda::device_count().max(0) as usize;
    match req {
        Request::Auto if gpus > 0 => Ok(Device::Cuda(0)),
        Request::Auto | Request::Cpu => Ok(Device::Cpu),
        Request::Cuda(_) if gpus == 0 => usage(format!(
            "device {s} (runtime.device, --device): libtorch finds no CUDA device on this \
             machine; use --device cpu (or auto), or build against a CUDA libtorch with a \
             working driver"
        )),
        Request::Cuda(n) if n >= gpus => usage(format!(
            "device {s} (runtime.device, --device): this machine has {gpus} CUDA device(s), \
             numbered 0 to {}",
            gpus - 1
        )),
        Request::Cuda(n) => Ok(Device::Cuda(n)),
    }
}

/// Sets libtorch's intra-op thread count; 0 means the number of physical cores.
/// Returns the count in force.
pub fn set_threads(requested: usize) -> usize {
    let n = if requested == 0 {
        physical_cores()
    } else {
        requested
    };
    tch::set_num_threads(n as i32);
    tch::get_num_threads() as usize
}

/// Physical cores (not hyper-threads), from `/proc/cpuinfo` where it tells, else the
/// logical count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(info) => cores_in(&info, logical),
        Err(_) => logical,
    }
}

/// The distinct (physical id, core id) pairs of a `/proc/cpuinfo` text, at most
/// `logical`; `logical` when it names none (a virtual machine may not).
fn cores_in(info: &str, logical: usize) -> usize {
    let mut cores = std::collections::BTreeSet::new();
    let (mut phys, mut core) = (None, None);
    for line in info.lines() {
        let mut kv = line.splitn(2, ':').map(str::trim);
        match (kv.next(), kv.next()) {
            (Some("physical id"), Some(v)) => phys = Some(v.to_string()),
            (Some("core id"), Some(v)) => core = Some(v.to_string()),
            (Some(""), None) | (None, _) => {}
            _ => {}
        }
        if line.trim().is_empty()
            && let (Some(p), Some(c)) = (phys.take(), core.take())
        {
            cores.insert((p, c));
        }
    }
    if let (Some(p), Some(c)) = (phys, core) {
        cores.insert((p, c));
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// Set (to the spin count chosen) by `kdtrain`'s start-up when it, not the user, put
/// `GOMP_SPINCOUNT` into the environment; see `tune_openmp_wait` in `src/main.rs`.
pub const CHOSEN_SPINCOUNT: &str = "KDTRAIN_CHOSEN_GOMP_SPINCOUNT";

/// Keeps the OpenMP spin count this process chose from the load at its start out of a
/// child kdtrain (a sweep's local job, or `sbatch` and so its array tasks), which then
/// chooses from the load it finds itself. A `GOMP_SPINCOUNT` the user set is passed on.
pub fn leave_spincount_to_child(cmd: &mut std::process::Command) {
    if std::env::var_os(CHOSEN_SPINCOUNT).is_some() {
        cmd.env_remove("GOMP_SPINCOUNT")
            .env_remove(CHOSEN_SPINCOUNT);
    }
}

/// Bytes of memory the kernel says are available (`MemAvailable` in /proc/meminfo);
/// `None` where that cannot be read (not Linux).
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!(parse("auto"), Ok(Request::Auto));
        assert_eq!(parse("cuda:3"), Ok(Request::Cuda(3)));
        assert!(parse("cuda:x").is_err());
        assert!(parse("gpu").is_err());
    }

    /// Two sockets of two cores with two hyper-threads each: 4 physical cores of 8
    /// logical; capped by the CPUs this process may use; without core ids, the logical
    /// count.
    #[test]
    fn physical_cores_counts_distinct_socket_and_core_pairs() {
        let mut info = String::new();
        for (p, c) in [
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
            (0, 0),
            (0, 1),
            (1, 0),
            (1, 1),
        ] {
            info.push_str(&format!(
                "processor\t: x\nphysical id\t: {p}\ncore id\t\t: {c}\nflags\t\t: fpu\n\n"
            ));
        }
        assert_eq!(cores_in(&info, 8), 4);
        assert_eq!(cores_in(&info, 3), 3);
        assert_eq!(cores_in("processor\t: 0\n\nprocessor\t: 1\n", 2), 2);
        // The last block needs no trailing blank line.
        assert_eq!(cores_in(info.trim_end(), 8), 4);
        // One core per socket and core id, however many blocks name it; a block without
        // a core id does not count as a core of its own.
        let partial = "processor\t: 0\nphysical id\t: 0\ncore id\t: 0\n\n\
                       processor\t: 1\nphysical id\t: 0\n\n";
        assert_eq!(cores_in(partial, 2), 1);
    }
}
