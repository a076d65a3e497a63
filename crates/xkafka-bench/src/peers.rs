//! Peers: other Kafka frameworks measured beside ours in the same rounds, on
//! the same broker, topics and settings. Now one: Go xkafka
//! (`github.com/gojekfarm/xtools/xkafka`), a separate program under
//! `crates/xkafka-bench/peers/go-xkafka`, built once per run with `go build`
//! and run once per round; it prints one JSON line per run.
//!
//! Without `go`, or if the build fails, a one-line warning is printed and the
//! peer is skipped: the rest of the bench runs as before.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::Topics;
use crate::{Sizes, Target, RUN_TIMEOUT};

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Where the Go program's source is.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/go-xkafka")
}

/// The built Go xkafka program.
pub(crate) struct GoPeer {
    bin: PathBuf,
}

/// What one run of the Go program printed.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub(crate) struct GoRun {
    pub(crate) msgs_per_sec: f64,
    pub(crate) elapsed_secs: f64,
    pub(crate) cpu_user_secs: f64,
    pub(crate) cpu_sys_secs: f64,
    pub(crate) cpu_window_secs: f64,
    pub(crate) go_xkafka: String,
    pub(crate) confluent_kafka_go: String,
    pub(crate) librdkafka: String,
    pub(crate) go_version: String,
}

/// The versions the peer reported, for the results.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct GoVersions {
    pub(crate) go_xkafka: String,
    pub(crate) confluent_kafka_go: String,
    pub(crate) librdkafka: String,
    pub(crate) go: String,
}

impl GoPeer {
    /// Builds the program into `out/go-xkafka`; `None` (after a one-line
    /// warning) if `go` is missing or the build fails.
    pub(crate) fn build(out: &Path) -> Option<GoPeer> {
        let warn = |why: String| {
            eprintln!("warning: Go xkafka peer skipped: {why}");
            None
        };
        if let Err(e) = std::fs::create_dir_all(out) {
            return warn(format!("cannot create {}: {e}", out.display()));
        }
        let bin = match std::path::absolute(out.join("go-xkafka")) {
            Ok(bin) => bin,
            Err(e) => return warn(format!("no absolute path for {}: {e}", out.display())),
        };
        eprintln!("building the Go xkafka peer (go build) …");
        let built = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(".")
            .current_dir(source_dir())
            .stdin(Stdio::null())
            .output();
        match built {
            Err(e) => warn(format!("cannot run `go` ({e}); install Go to measure it")),
            Ok(o) if !o.status.success() => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let last = stderr
                    .lines()
                    .last()
                    .unwrap_or("no output")
                    .trim()
                    .to_owned();
                warn(format!("`go build` failed ({}): {last}", o.status))
            }
            Ok(_) => Some(GoPeer { bin }),
        }
    }

    /// The Go scenario, topic and message count of a comparison, if it has a
    /// Go counterpart.
    fn job<'a>(name: &str, topics: &'a Topics, sizes: &Sizes) -> Option<(&'a str, u64)> {
        Some(match name {
            "consume_seq" | "consume_batch" => (topics.small.as_str(), sizes.consume),
            "consume_conc16_1ms" => (topics.keyed.as_str(), sizes.concurrent),
            "publish_async" => (topics.sink.as_str(), sizes.publish),
            "publish_sync" => (topics.sink.as_str(), sizes.publish_sync),
            _ => return None,
        })
    }

    /// Whether comparison `name` has a Go counterpart.
    pub(crate) fn covers(name: &str) -> bool {
        matches!(
            name,
            "consume_seq"
                | "consume_batch"
                | "consume_conc16_1ms"
                | "publish_async"
                | "publish_sync"
        )
    }

    /// One run of comparison `name` (which must be [`covered`](Self::covers)).
    pub(crate) fn run(
        &self,
        name: &str,
        target: &Target,
        topics: &Topics,
        sizes: &Sizes,
    ) -> BoxResult<GoRun> {
        let (topic, messages) =
            Self::job(name, topics, sizes).ok_or_else(|| format!("no Go counterpart of {name}"))?;
        let child = Command::new(&self.bin)
            .arg("-brokers")
            .arg(&target.brokers)
            .arg("-topic")
            .arg(topic)
            .arg("-scenario")
            .arg(name)
            .arg("-messages")
            .arg(messages.to_string())
            .arg("-group")
            .arg(crate::unique("go-xkafka"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        // The program bounds its own wait by the same timeout; this is for a
        // run stuck elsewhere (a group join that never ends).
        let output = match rx.recv_timeout(RUN_TIMEOUT + Duration::from_secs(30)) {
            Ok(output) => output?,
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                return Err(format!("go-xkafka {name} did not finish; killed pid {pid}").into());
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let why = line
                .or_else(|| stderr.lines().last())
                .unwrap_or("no output");
            return Err(format!("go-xkafka {name} failed ({}): {why}", output.status).into());
        }
        let line = line.ok_or_else(|| format!("go-xkafka {name} printed no result"))?;
        Ok(serde_json::from_str(line)?)
    }
}

impl GoRun {
    pub(crate) fn versions(&self) -> GoVersions {
        GoVersions {
            go_xkafka: self.go_xkafka.clone(),
            confluent_kafka_go: self.confluent_kafka_go.clone(),
            librdkafka: self.librdkafka.clone(),
            go: self.go_version.clone(),
        }
    }
}

/// User + system CPU seconds of this process so far, from /proc/self/stat
/// (clock ticks of 10 ms: the unit Linux reports to user space; getrusage
/// would need `unsafe`, which the workspace denies). NaN where unreadable.
pub(crate) fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // The fields after the command name (which may hold spaces) in parentheses:
    // state is field 3, utime 14 and stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) as f64 / CLOCK_TICKS_PER_SEC,
        _ => f64::NAN,
    }
}

/// USER_HZ, 100 on every Linux architecture this runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
