//! What the test kit reads of a process from /proc: its CPU time
//! (`/proc/PID/stat`, `/proc/PID/task/*/sched`) and memory
//! (`/proc/PID/status`), and the machine's load average.

use std::io;

/// The machine's 1-minute load average (`/proc/loadavg`).
pub fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The children of process `pid` (`/proc/PID/task/PID/children`, the
/// main thread's: a process whose threads never fork, as a daemon's
/// sandbox parent).
pub fn children(pid: u32) -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    text.split_whitespace()
        .map(|c| {
            c.parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("child pid {c:?}")))
        })
        .collect()
}

/// The process that serves for `pid`: its only child where it forked one
/// (a backend in a pid-namespace sandbox: `xfused virtiofs`, virtiofsd),
/// else `pid` itself.
pub fn server_pid(pid: u32) -> u32 {
    match children(pid).as_deref() {
        Ok([child]) => *child,
        _ => pid,
    }
}

/// A daemon's resource use at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// User + system CPU time of every thread (dead ones included), in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size now, in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, in KiB (`VmHWM`).
    pub hwm_kib: u64,
}

impl Usage {
    /// Reads the usage of process `pid`.
    pub fn of(pid: u32) -> io::Result<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}: {what}"));
        let cpu_ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| bad("no utime/stime in stat"))?;
        let rss_kib = parse_status_kib(&status, "VmRSS").ok_or_else(|| bad("no VmRSS in status"))?;
        let hwm_kib = parse_status_kib(&status, "VmHWM").ok_or_else(|| bad("no VmHWM in status"))?;
        Ok(Usage {
            cpu_ticks,
            rss_kib,
            hwm_kib,
        })
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s times (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// CPU time of every live thread of process `pid`, in nanoseconds: the sum
/// of `se.sum_exec_runtime` over `/proc/PID/task/*/sched` (nanosecond
/// resolution, where the kernel has CONFIG_SCHED_DEBUG), else utime + stime
/// of `/proc/PID/stat` (clock-tick resolution, 10 ms here). Threads that
/// already exited count only in the second.
pub fn cpu_time_ns(pid: u32) -> io::Result<u64> {
    match sched_runtime_ns(pid) {
        Ok(ns) => Ok(ns),
        Err(_) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let ticks = parse_stat_cpu_ticks(&stat)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat")))?;
            Ok(ticks.saturating_mul(1_000_000_000) / clock_ticks_per_second().max(1))
        }
    }
}

fn sched_runtime_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let sched = match std::fs::read_to_string(task?.path().join("sched")) {
            Ok(text) => text,
            // A thread that ended between the listing and the read: the
            // file is gone (ENOENT), or its task is (ESRCH), or the read
            // finds it half torn down (empty).
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if sched.is_empty() {
            continue;
        }
        let ns = parse_sched_runtime_ns(&sched)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no se.sum_exec_runtime"))?;
        total = total.saturating_add(ns);
    }
    Ok(total)
}

/// `se.sum_exec_runtime` (milliseconds with six decimals) of a
/// `/proc/PID/task/TID/sched` file, in nanoseconds.
pub fn parse_sched_runtime_ns(sched: &str) -> Option<u64> {
    let value = sched.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "se.sum_exec_runtime").then(|| value.trim())
    })?;
    let (ms, frac) = value.split_once('.').unwrap_or((value, "0"));
    let ms: u64 = ms.parse().ok()?;
    let frac_digits = frac.get(..6.min(frac.len()))?;
    let mut ns_part: u64 = frac_digits.parse().ok()?;
    for _ in frac_digits.len()..6 {
        ns_part *= 10;
    }
    ms.checked_mul(1_000_000)?.checked_add(ns_part)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and
    // parentheses itself: the fields that follow start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The value in KiB of a `Key:   1234 kB` line of `/proc/PID/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times() {
        // A command name with spaces and a parenthesis.
        let stat = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    17 29 0 0 20 0 3 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(46));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn status_values() {
        let status = "Name:\txfused\nVmHWM:\t   10240 kB\nVmRSS:\t    8192 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(8192));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn sched_runtime() {
        let sched = "x (1, #threads: 1)\n---\nse.exec_start   :   19110532.210394\n\
                     se.sum_exec_runtime                          :           154.588015\n";
        assert_eq!(parse_sched_runtime_ns(sched), Some(154_588_015));
        assert_eq!(
            parse_sched_runtime_ns("se.sum_exec_runtime : 3\n"),
            Some(3_000_000)
        );
        assert_eq!(parse_sched_runtime_ns("nothing\n"), None);
        // The stat fallback counts in clock ticks (10 ms): spin until this
        // process has used some, so the check holds on a fresh process too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut spins = 0u64;
        while cpu_time_ns(std::process::id()).unwrap() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no CPU time after 10 s of spinning"
            );
            for i in 0..1_000_000u64 {
                spins = std::hint::black_box(spins.wrapping_add(i));
            }
        }
    }

    #[test]
    fn own_usage_is_readable() {
        let u = Usage::of(std::process::id()).unwrap();
        assert!(u.rss_kib > 0 && u.hwm_kib >= u.rss_kib);
        assert!(clock_ticks_per_second() > 0);
        assert!(loadavg_1m().is_some_and(|l| l >= 0.0));
    }
}
