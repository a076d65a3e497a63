//! What a run cost the machine, measured the same way for every side: CPU
//! time from `getrusage` (of this process around an in-process run, of the
//! child for a peer program, from `wait4`), and peak resident memory
//! (this process's high-water mark, reset before each in-process run; the
//! child's `ru_maxrss`).

#![allow(unsafe_code)]

use std::process::Child;

/// One run's cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct Usage {
    /// User + system CPU seconds.
    pub(crate) cpu_secs: f64,
    /// Peak resident set, KiB.
    pub(crate) peak_rss_kib: u64,
}

/// Measures an in-process run: started before it, stopped after.
pub(crate) struct Meter {
    cpu_at_start: f64,
}

impl Meter {
    /// Resets this process's peak RSS to its current RSS (Linux's
    /// `clear_refs` 5) and reads its CPU time so far.
    pub(crate) fn start() -> Meter {
        // Best effort: where refused, the peak is the process's since start.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Meter {
            cpu_at_start: self_cpu_secs(),
        }
    }

    /// The CPU time used since `start` and the peak RSS since then.
    pub(crate) fn stop(self) -> Usage {
        Usage {
            cpu_secs: self_cpu_secs() - self.cpu_at_start,
            peak_rss_kib: self_peak_rss_kib(),
        }
    }
}

fn secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// User + system CPU seconds of this process so far (every thread; with
/// the mock cluster in process, its broker's too). NaN where unreadable.
pub(crate) fn self_cpu_secs() -> f64 {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value it is
    // given and reads nothing else.
    let (rc, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage), usage)
    };
    if rc != 0 {
        return f64::NAN;
    }
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// This process's resident-set high-water mark (`VmHWM`), KiB; 0 where
/// unreadable.
fn self_peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// How a child ended, and what it cost.
pub(crate) struct Ended {
    /// Exited normally with status 0.
    pub(crate) success: bool,
    /// Its exit status or signal, for messages.
    pub(crate) status: String,
    pub(crate) usage: Usage,
}

/// Waits for `child` (whose output the caller reads elsewhere) and reaps
/// it with `wait4`, which reports its own CPU time and peak RSS.
pub(crate) fn wait(child: Child) -> std::io::Result<Ended> {
    let pid = child.id() as libc::pid_t;
    // The child is reaped here, not by `Child::wait`: dropping `Child`
    // neither waits nor kills.
    drop(child);
    loop {
        // SAFETY: `wait4` writes the status and one `rusage` into the
        // values given; `pid` is our own unreaped child.
        let (rc, status, usage) = unsafe {
            let mut status = 0;
            let mut usage: libc::rusage = std::mem::zeroed();
            (libc::wait4(pid, &mut status, 0, &mut usage), status, usage)
        };
        if rc == pid {
            let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
            let status = if libc::WIFEXITED(status) {
                format!("exit status {}", libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("wait status {status}")
            };
            return Ok(Ended {
                success,
                status,
                usage: Usage {
                    cpu_secs: secs(usage.ru_utime) + secs(usage.ru_stime),
                    // Linux reports `ru_maxrss` in KiB.
                    peak_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
                },
            });
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
