//! Processes and figures: finding a process, its memory and CPU time from `/proc`, the
//! store check, and latency percentiles ([`Summary`]).

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::bin;

/// The pid of a running process whose executable is named `exe` and whose command line has
/// an argument equal to `arg` (such as a test's unique database path).
pub fn pid_of(exe: &str, arg: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let want = arg.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let Some(argv0) = args.next() else { continue };
        let named = Path::new(std::ffi::OsStr::from_bytes(argv0))
            .file_name()
            .is_some_and(|n| n == exe);
        if named && args.any(|a| a == want) && alive(pid) {
            return Some(pid);
        }
    }
    None
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(after != 'Z' && after != 'X')
        })
        .unwrap_or(false)
}

/// A process's resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_kib: u64,
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB (peak {:.1} MiB)",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

/// Reads `VmRSS` and `VmHWM` from `/proc/PID/status`.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// The CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state); utime
    // and stime are fields 14 and 15, in clock ticks.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 on x86 and Arm.
    Some(Duration::from_millis(ticks * 10))
}

/// The pid of the controller a [`crate::cluster::Cluster`] started (found by its database path).
pub fn controller_pid(db: &Path) -> Option<u32> {
    pid_of("ovl-controller", db)
}

/// Runs `ovl-controller check --db DB` (the controller must be stopped); returns whether the
/// store is consistent and what the command printed.
pub fn check_store(db: &Path) -> (bool, String) {
    check_store_at(&["--db".as_ref(), db.as_os_str()])
}

/// `ovl-controller check` on the store that `store_args` name (`--db FILE` or the
/// `--etcd-…` arguments); returns whether it is consistent and what the command printed.
pub fn check_store_at(store_args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(bin("ovl-controller"))
        .arg("check")
        .args(store_args)
        .output()
        .expect("run ovl-controller check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Latency percentiles of a set of samples (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// `None` when there are no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort();
        let rank = |p: f64| {
            let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[i.clamp(1, s.len()) - 1]
        };
        Some(Summary {
            count: s.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: s[s.len() - 1],
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
            self.count,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        let one = Summary::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn this_process_is_found_and_measured() {
        let me = std::process::id();
        assert!(alive(me));
        let m = memory_of(me).unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib, "{m:?}");
        assert!(!alive(u32::MAX));
    }
}
