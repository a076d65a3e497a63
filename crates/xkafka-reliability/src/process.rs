//! Worker processes: start, SIGKILL, SIGTERM, resident memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use xkafka::BoxError;

use crate::worker::Mode;

/// The transform workers' log filter: warnings, plus the consumer's
/// "partitions assigned" / "partitions revoked" lines.
pub const TRANSFORM_LOG: &str = "warn,xkafka::consumer::context=info";

/// How to start workers of one run.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The `xkafka-chaos` binary.
    pub exe: PathBuf,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Input topic.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Consumption mode.
    pub mode: Mode,
    /// Simulated work per message, ms.
    pub work_ms: u64,
    /// `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// The consumer's in-flight bound.
    pub max_in_flight: usize,
    /// The per-partition bound (`None`: the total bound).
    pub max_in_flight_per_partition: Option<usize>,
    /// Where ledgers and logs go.
    pub dir: PathBuf,
    /// Extra librdkafka properties.
    pub configs: Vec<(String, String)>,
    /// The transform modes: the output topic.
    pub output: Option<String>,
    /// [`Mode::EosTransform`]: the output producer's `transaction.timeout.ms`
    /// (`None`: librdkafka's default).
    pub transaction_timeout_ms: Option<u32>,
    /// [`Mode::EosTransform`]: messages per transaction at most (`None`:
    /// the library's default).
    pub transaction_max_messages: Option<usize>,
}

/// A running worker.
pub struct Worker {
    child: Child,
    /// Its ledger file.
    pub ledger: PathBuf,
    /// A name for progress lines.
    pub name: String,
}

impl WorkerSpec {
    /// Starts a worker named `name`: ledger `<dir>/<name>.ledger`, log
    /// `<dir>/<name>.log`.
    pub fn spawn(&self, name: &str, work_ms: u64) -> Result<Worker, BoxError> {
        self.spawn_transactional(name, work_ms, None)
    }

    /// [`spawn`](Self::spawn), with the output producer's
    /// `transactional.id` ([`Mode::EosTransform`]). The transform modes'
    /// ledgers count handler runs, not the verdict (the output topic is), so
    /// they are written without `fdatasync`: a SIGKILL cannot lose a
    /// completed `write`.
    pub fn spawn_transactional(
        &self,
        name: &str,
        work_ms: u64,
        transactional_id: Option<&str>,
    ) -> Result<Worker, BoxError> {
        let ledger = self.dir.join(format!("{name}.ledger"));
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&self.exe);
        command.arg("worker");
        if self.mode.is_transform() {
            // The transform harnesses count assignments and aborted
            // transactions in the workers' logs.
            command.env("RUST_LOG", TRANSFORM_LOG);
        }
        for (key, value) in &self.configs {
            command.arg("--config").arg(format!("{key}={value}"));
        }
        let child = command
            .args(["--brokers", &self.brokers])
            .args(["--topic", &self.topic])
            .args(["--group", &self.group])
            .args(["--mode", self.mode.name()])
            .arg("--out")
            .arg(&ledger)
            .args(["--work-ms", &work_ms.to_string()])
            .args(["--session-timeout-ms", &self.session_timeout_ms.to_string()])
            .args(["--max-in-flight", &self.max_in_flight.to_string()])
            .args(
                self.max_in_flight_per_partition
                    .map(|n| ["--max-in-flight-per-partition".to_owned(), n.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(self.output.iter().flat_map(|t| ["--output", t.as_str()]))
            .args(
                transactional_id
                    .into_iter()
                    .flat_map(|id| ["--transactional-id", id]),
            )
            .args(
                self.transaction_timeout_ms
                    .map(|ms| ["--transaction-timeout-ms".to_owned(), ms.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(
                self.transaction_max_messages
                    .map(|n| ["--transaction-max-messages".to_owned(), n.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(self.mode.is_transform().then_some("--no-fsync"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.exe.display()))?;
        Ok(Worker {
            child,
            ledger,
            name: name.to_owned(),
        })
    }
}

impl Worker {
    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it exited on its own, and how.
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>, BoxError> {
        Ok(self.child.try_wait()?)
    }

    /// SIGKILL, then reap.
    pub async fn kill(mut self) -> Result<(), BoxError> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit (status 0).
    pub async fn terminate(mut self, timeout: Duration) -> Result<(), BoxError> {
        if let Some(pid) = self.child.id() {
            signal(pid, "TERM")?;
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if status.success() {
                    Ok(())
                } else {
                    Err(format!("{} exited with {status}", self.name).into())
                }
            }
            Err(_) => {
                self.child.kill().await?;
                Err(format!("{} did not stop within {timeout:?} of SIGTERM", self.name).into())
            }
        }
    }

    /// Resident memory in KiB, from `/proc`.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id()?)
    }
}

/// Sends a signal with `kill(1)` (no libc binding needed for one call).
fn signal(pid: u32, name: &str) -> Result<(), BoxError> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid} failed").into())
    }
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A fresh directory for one run's ledgers and logs.
pub fn run_dir(base: &Path, name: &str) -> Result<PathBuf, BoxError> {
    let dir = base.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
