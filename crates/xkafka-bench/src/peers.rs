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

use crate::report::{median, PeerComparison, Topics};
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
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
            // No VCS stamp: the work tree may be another user's or have no
            // .git (a copy); the binary is rebuilt every run anyway.
            .arg("-buildvcs=false")
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
        self.run_scenario(name, &target.brokers, topic, messages, &[])
    }

    /// The sequential rate with the 1 ms handler (`consume_seq_1ms`), which
    /// `consume_conc16_1ms` is compared with: the same topic and count as
    /// our sequential run.
    pub(crate) fn run_sequential_1ms(
        &self,
        target: &Target,
        topics: &Topics,
        sizes: &Sizes,
    ) -> BoxResult<GoRun> {
        self.run_scenario(
            "consume_seq_1ms",
            &target.brokers,
            &topics.keyed,
            sizes.sequential_slow,
            &[],
        )
    }

    /// One run of the program's scenario `name` (see its `-scenario`), with
    /// `extra` flags (e.g. `["-concurrency", "4"]`).
    pub(crate) fn run_scenario(
        &self,
        name: &str,
        brokers: &str,
        topic: &str,
        messages: u64,
        extra: &[&str],
    ) -> BoxResult<GoRun> {
        let child = Command::new(&self.bin)
            .arg("-brokers")
            .arg(brokers)
            .arg("-topic")
            .arg(topic)
            .arg("-scenario")
            .arg(name)
            .arg("-messages")
            .arg(messages.to_string())
            .arg("-group")
            .arg(crate::unique("go-xkafka"))
            // xkafka's consumer default, given to the raw loop too: the same
            // settings on every side (librdkafka's 1000 ms stalls a fast
            // consumer for up to a second; BENCHMARKS.md, "The fetch queue
            // backoff"). Producers ignore it.
            .args(["-consumer-config", "fetch.queue.backoff.ms=10"])
            .args(extra)
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

/// One comparison's runs, for [`against_go`].
pub(crate) struct GoSide<'a> {
    pub(crate) name: &'a str,
    pub(crate) target: &'a Target,
    /// Our median and runs.
    pub(crate) ours: f64,
    pub(crate) ours_runs: &'a [f64],
    /// Our process's CPU seconds around each of our runs.
    pub(crate) ours_cpu: &'a [f64],
    /// `consume_conc16_1ms`: our sequential rate with the same handler.
    pub(crate) ours_sequential: Option<f64>,
    pub(crate) go_runs: Vec<GoRun>,
    /// `consume_conc16_1ms`: Go's `consume_seq_1ms` runs.
    pub(crate) go_sequential_runs: Vec<GoRun>,
}

/// Ours against Go xkafka in one comparison, if Go ran.
pub(crate) fn against_go(side: GoSide<'_>) -> Option<PeerComparison> {
    if side.go_runs.is_empty() {
        return None;
    }
    let rates = |runs: &[GoRun]| runs.iter().map(|r| r.msgs_per_sec).collect::<Vec<_>>();
    let go = median(&rates(&side.go_runs));
    let go_sequential =
        (!side.go_sequential_runs.is_empty()).then(|| median(&rates(&side.go_sequential_runs)));
    let ratio_per_sequential = match (side.ours_sequential, go_sequential) {
        (Some(os), Some(gs)) => Some((side.ours / os) / (go / gs)),
        _ => None,
    };
    let note = match (side.ours_sequential, go_sequential, ratio_per_sequential) {
        (Some(os), Some(gs), Some(r)) => format!(
            "ours Order::PerKey, Go any order; sequential with the same 1 ms handler: \
             ours {os:.0}, go {gs:.0} msg/s; 16-way over sequential: ours {:.1}x, go {:.1}x \
             (ratio of those {r:.3})",
            side.ours / os,
            go / gs
        ),
        _ => String::new(),
    };
    Some(PeerComparison {
        name: format!("{}_vs_go", side.name),
        peer: "go-xkafka".into(),
        unit: "msg/s".into(),
        ours: side.ours,
        go,
        ratio: side.ours / go,
        ours_runs: side.ours_runs.to_vec(),
        go_runs: rates(&side.go_runs),
        // The mock cluster runs in our process: its CPU would count as ours.
        // Whole clock ticks (10 ms), without the float noise of the sums.
        ours_cpu_secs: (side.target.mock().is_none())
            .then(|| (median(side.ours_cpu) * 100.0).round() / 100.0),
        go_cpu_secs: median(
            &side
                .go_runs
                .iter()
                .map(|r| r.cpu_user_secs + r.cpu_sys_secs)
                .collect::<Vec<_>>(),
        ),
        go_cpu_window_secs: median(
            &side
                .go_runs
                .iter()
                .map(|r| r.cpu_window_secs)
                .collect::<Vec<_>>(),
        ),
        ours_sequential_1ms: side.ours_sequential,
        go_sequential_1ms: go_sequential,
        ratio_per_sequential,
        note,
        go_details: side.go_runs,
    })
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
