//! Peers: other Kafka clients measured beside ours in the same rounds, on
//! the same broker, topics and settings. Each is a separate program, built
//! once per run and run once per round; it prints one JSON line per run
//! (rate, timed span, CPU, versions) and exits non-zero on a failure or a
//! shortfall. Two:
//!
//! - Go xkafka (`github.com/gojekfarm/xtools/xkafka`), a framework on
//!   confluent-kafka-go and librdkafka: `crates/xkafka-bench/peers/go-xkafka`,
//!   built with `go build` into `--out`. Its comparisons are named
//!   `<comparison>_vs_go`.
//! - The pure-Rust `confluent-kafka` client (no librdkafka; a translation of
//!   the Java client, async on tokio): `crates/xkafka-bench/peers/confluent-rust`,
//!   a Cargo program outside the workspace (so the library and CI never
//!   compile it), built with `cargo build --release --locked` into
//!   `target/peers/confluent-rust`. Raw client loops, no framework, each
//!   mirroring the raw rdkafka baseline's loop: `consume_seq` (also on the
//!   1 KiB topic, for `consume_seq_1k`), `consume_batch` (each poll's records
//!   counted at once), `publish_async` (a callback per send) and
//!   `publish_sync` (64 sends awaited at once). Not `consume_conc16_1ms`: a
//!   raw client has no concurrent handler to compare. Its consumers join with
//!   KIP-848 (`group.protocol=consumer`), the only group protocol it has, so
//!   it needs Kafka 4.0 or newer. On librdkafka's mock cluster it is tried
//!   (with a 20 s bound) and, failing there, left out of the rest of the
//!   mock column with a one-line note: version 1.0.0 reads the mock's first
//!   answer as a 20-minute throttle and never gets further.
//!   Comparisons `<comparison>_vs_rust`.
//!
//! Without the toolchain, or if a build fails, a one-line warning is printed
//! and that peer is skipped: the rest of the bench runs as before
//! (`--no-go`, `--no-rust-peer` skip them on purpose).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::figures::{GoRun, PeerComparison, PeerKind, PeerRun, RustRun};
use crate::topics::Topics;
use crate::usage;
use crate::vocab::{median, unique, BoxResult, Sizes, Target, RUN_TIMEOUT};

/// A built peer program.
struct Program {
    kind: PeerKind,
    bin: PathBuf,
}

impl Program {
    /// Runs the program with `args` and returns its JSON line, parsed, with
    /// the process's CPU time and peak RSS as `wait4` reported them (the
    /// same measure as ours: see `usage`).
    fn run<R: DeserializeOwned + PeerRun>(&self, name: &str, args: &[String]) -> BoxResult<R> {
        let id = self.kind.id();
        let mut child = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut out);
                }
                out
            })
        };
        let stdout = read(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = read(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(usage::wait(child));
        });
        // The program bounds its own wait by the same timeout; this is for a
        // run stuck elsewhere (a group join that never ends).
        let ended = match rx.recv_timeout(RUN_TIMEOUT + Duration::from_secs(30)) {
            Ok(ended) => ended?,
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                return Err(format!("{id} {name} did not finish; killed pid {pid}").into());
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let stdout = String::from_utf8_lossy(&stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        let stderr = String::from_utf8_lossy(&stderr);
        if !ended.success {
            let why = line
                .or_else(|| stderr.lines().last())
                .unwrap_or("no output");
            return Err(format!("{id} {name} failed ({}): {why}", ended.status).into());
        }
        let line = line.ok_or_else(|| format!("{id} {name} printed no result"))?;
        let mut run: R = serde_json::from_str(line)?;
        run.figures_mut().usage = ended.usage;
        Ok(run)
    }
}

/// The last line of a failed build's output, for its one-line warning.
fn last_line(output: &[u8]) -> String {
    String::from_utf8_lossy(output)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_owned()
}

/// Where the Go program's source is.
fn go_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/go-xkafka")
}

/// Go xkafka's published source (v0.11.1), which the Go module proxy this
/// project reaches does not serve: used from outside the repository at
/// build time (`XKAFKA_GO_XKAFKA_SRC`, default `../shared/peers/go-xkafka-v0.11.1`
/// beside the repository), never copied into it.
fn go_xkafka_source() -> PathBuf {
    std::env::var_os("XKAFKA_GO_XKAFKA_SRC").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peers/go-xkafka-v0.11.1"),
        PathBuf::from,
    )
}

/// A copy of the peer's `go.mod` (and `go.sum`) in `out`, with Go xkafka
/// replaced by its source outside the repository; `go build -modfile` uses it.
fn go_modfile(out: &Path) -> Result<PathBuf, String> {
    let source = std::path::absolute(go_xkafka_source())
        .map_err(|e| format!("no absolute path for Go xkafka's source: {e}"))?;
    if !source.join("consumer.go").is_file() {
        return Err(format!(
            "Go xkafka's source is not at {} (set XKAFKA_GO_XKAFKA_SRC)",
            source.display()
        ));
    }
    let dir = go_source_dir();
    let module = std::fs::read_to_string(dir.join("go.mod")).map_err(|e| e.to_string())?;
    let modfile = std::path::absolute(out.join("go-xkafka.mod")).map_err(|e| e.to_string())?;
    std::fs::write(
        &modfile,
        format!(
            "{module}\nreplace github.com/gojekfarm/xtools/xkafka => {}\n",
            source.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::copy(dir.join("go.sum"), modfile.with_extension("sum")).map_err(|e| e.to_string())?;
    Ok(modfile)
}

/// The built Go xkafka program.
pub(crate) struct GoPeer {
    program: Program,
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
        let modfile = match go_modfile(out) {
            Ok(modfile) => modfile,
            Err(why) => return warn(why),
        };
        eprintln!("building the Go xkafka peer (go build) …");
        let built = Command::new("go")
            .arg("build")
            .arg(format!("-modfile={}", modfile.display()))
            // No VCS stamp: the work tree may be another user's or have no
            // .git (a copy); the binary is rebuilt every run anyway.
            .arg("-buildvcs=false")
            .arg("-o")
            .arg(&bin)
            .arg(".")
            .current_dir(go_source_dir())
            .stdin(Stdio::null())
            .output();
        match built {
            Err(e) => warn(format!("cannot run `go` ({e}); install Go to measure it")),
            Ok(o) if !o.status.success() => warn(format!(
                "`go build` failed ({}): {}",
                o.status,
                last_line(&o.stderr)
            )),
            Ok(_) => Some(GoPeer {
                program: Program {
                    kind: PeerKind::Go,
                    bin,
                },
            }),
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
        let mut args: Vec<String> = [
            "-brokers",
            brokers,
            "-topic",
            topic,
            "-scenario",
            name,
            "-messages",
            &messages.to_string(),
            "-group",
            &unique("go-xkafka"),
            // xkafka's consumer default, given to the raw loop too: the same
            // settings on every side (librdkafka's 1000 ms stalls a fast
            // consumer for up to a second; BENCHMARKS.md, "The fetch queue
            // backoff"). Producers ignore it.
            "-consumer-config",
            "fetch.queue.backoff.ms=10",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.program.run(name, &args)
    }
}

/// Where the Rust peer's Cargo program is.
fn rust_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/confluent-rust")
}

/// Where it is built: under the repository's (ignored) `target/`, kept from
/// run to run so that only the first build compiles the client.
fn rust_target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/peers/confluent-rust")
}

/// The Rust peer's own bound of a run on the mock cluster (see
/// [`RustPeer::run`]).
const MOCK_RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// The built pure-Rust confluent-kafka program.
pub(crate) struct RustPeer {
    program: Program,
    /// Targets it failed on where it is not expected to work (the mock
    /// cluster): not tried again there.
    left_out: Mutex<BTreeSet<&'static str>>,
}

impl RustPeer {
    /// Builds the program (release) into `target/peers/confluent-rust`;
    /// `None` (after a one-line warning) if `cargo` is missing or the build
    /// fails.
    pub(crate) fn build() -> Option<RustPeer> {
        let warn = |why: String| {
            eprintln!("warning: confluent-kafka Rust peer skipped: {why}");
            None
        };
        let target_dir = match std::path::absolute(rust_target_dir()) {
            Ok(dir) => dir,
            Err(e) => return warn(format!("no absolute path for its target dir: {e}")),
        };
        let manifest = rust_source_dir().join("Cargo.toml");
        // Under `cargo run` the same cargo; otherwise the one on PATH.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!(
            "building the confluent-kafka Rust peer (cargo build --release; minutes the first time) …"
        );
        let built = Command::new(cargo)
            .args(["build", "--release", "--locked", "--quiet"])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .stdin(Stdio::null())
            .output();
        match built {
            Err(e) => warn(format!("cannot run `cargo` ({e})")),
            Ok(o) if !o.status.success() => warn(format!(
                "`cargo build` failed ({}): {}",
                o.status,
                last_line(&o.stderr)
            )),
            Ok(_) => Some(RustPeer {
                program: Program {
                    kind: PeerKind::Rust,
                    bin: target_dir.join("release/confluent-rust-peer"),
                },
                left_out: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// The program's scenario, topic and message count of a comparison, if
    /// it has a counterpart.
    fn job<'a>(
        name: &str,
        topics: &'a Topics,
        sizes: &Sizes,
    ) -> Option<(&'static str, &'a str, u64)> {
        Some(match name {
            "consume_seq" => ("consume_seq", topics.small.as_str(), sizes.consume),
            // The same loop on the 1 KiB topic.
            "consume_seq_1k" => ("consume_seq", topics.large.as_str(), sizes.consume_1k),
            "consume_batch" => ("consume_batch", topics.small.as_str(), sizes.consume),
            "publish_async" => ("publish_async", topics.sink.as_str(), sizes.publish),
            "publish_sync" => ("publish_sync", topics.sink.as_str(), sizes.publish_sync),
            _ => return None,
        })
    }

    /// Whether comparison `name` has a counterpart here.
    pub(crate) fn covers(name: &str) -> bool {
        matches!(
            name,
            "consume_seq" | "consume_seq_1k" | "consume_batch" | "publish_async" | "publish_sync"
        )
    }

    /// Whether it is still tried on `target` (see [`leave_out`](Self::leave_out)).
    pub(crate) fn runs_on(&self, target: &Target) -> bool {
        !self.left_out.lock().unwrap().contains(target.name)
    }

    /// Not tried on `target` any more.
    pub(crate) fn leave_out(&self, target: &Target) {
        self.left_out.lock().unwrap().insert(target.name);
    }

    /// One run of comparison `name` (which must be [`covered`](Self::covers)).
    pub(crate) fn run(
        &self,
        name: &str,
        target: &Target,
        topics: &Topics,
        sizes: &Sizes,
    ) -> BoxResult<RustRun> {
        let (scenario, topic, messages) = Self::job(name, topics, sizes)
            .ok_or_else(|| format!("no confluent-kafka Rust counterpart of {name}"))?;
        // On the mock cluster a run lasts about a second, and confluent-kafka
        // 1.0.0 gets nowhere with it: it reads the mock's first answer as a
        // throttle of 1,179,648 ms on the bootstrap connection, so its
        // consumer is never assigned and its producer never finds the
        // topic. Fail fast there.
        let timeout = match target.mock() {
            Some(_) => MOCK_RUN_TIMEOUT,
            None => RUN_TIMEOUT,
        };
        let args = [
            "--brokers",
            &target.brokers,
            "--topic",
            topic,
            "--scenario",
            scenario,
            "--messages",
            &messages.to_string(),
            "--group",
            &unique("confluent-rust"),
            "--timeout-secs",
            &timeout.as_secs().to_string(),
        ]
        .map(str::to_owned);
        self.program.run(name, &args)
    }
}

/// One comparison's runs, for [`against`].
pub(crate) struct PeerSide<'a, R> {
    pub(crate) kind: PeerKind,
    pub(crate) name: &'a str,
    pub(crate) target: &'a Target,
    /// Our median and runs.
    pub(crate) ours: f64,
    pub(crate) ours_runs: &'a [f64],
    /// Our process's CPU seconds around each of our runs.
    pub(crate) ours_cpu: &'a [f64],
    /// Our process's peak RSS (KiB) during each of our runs.
    pub(crate) ours_rss: &'a [f64],
    /// `consume_conc16_1ms`: our sequential rate with the same handler.
    pub(crate) ours_sequential: Option<f64>,
    pub(crate) runs: Vec<R>,
    /// `consume_conc16_1ms` (Go only): the peer's `consume_seq_1ms` runs.
    pub(crate) sequential_runs: Vec<R>,
}

/// Ours against a peer in one comparison, if the peer ran.
pub(crate) fn against<R: PeerRun>(side: PeerSide<'_, R>) -> Option<PeerComparison> {
    if side.runs.is_empty() {
        return None;
    }
    let rates = |runs: &[R]| runs.iter().map(R::msgs_per_sec).collect::<Vec<_>>();
    let theirs = median(&rates(&side.runs));
    let theirs_sequential =
        (!side.sequential_runs.is_empty()).then(|| median(&rates(&side.sequential_runs)));
    let ratio_per_sequential = match (side.ours_sequential, theirs_sequential) {
        (Some(os), Some(ts)) => Some((side.ours / os) / (theirs / ts)),
        _ => None,
    };
    // Only Go covers consume_conc16_1ms, the one comparison with sequential
    // runs.
    let note = match (
        side.ours_sequential,
        theirs_sequential,
        ratio_per_sequential,
    ) {
        (Some(os), Some(gs), Some(r)) => format!(
            "ours Order::PerKey, Go any order; sequential with the same 1 ms handler: \
             ours {os:.0}, go {gs:.0} msg/s; 16-way over sequential: ours {:.1}x, go {:.1}x \
             (ratio of those {r:.3})",
            side.ours / os,
            theirs / gs
        ),
        _ => String::new(),
    };
    Some(PeerComparison {
        name: format!("{}_vs_{}", side.name, side.kind.key()),
        peer: side.kind,
        unit: "msg/s".into(),
        ours: side.ours,
        theirs,
        // Paired as ours against the baselines: the peer ran in the first
        // rounds of ours (a failing peer is left out whole), so its run `i`
        // met the same machine as our run `i`.
        ratio: median(
            &side
                .ours_runs
                .iter()
                .zip(&rates(&side.runs))
                .map(|(o, t)| o / t)
                .collect::<Vec<_>>(),
        ),
        ratio_of_medians: side.ours / theirs,
        ours_runs: side.ours_runs.to_vec(),
        theirs_runs: rates(&side.runs),
        // The mock cluster runs in our process: its CPU would count as ours.
        // Whole clock ticks (10 ms), without the float noise of the sums.
        // Over the same rounds as the peer's.
        ours_cpu_secs: (side.target.mock().is_none())
            .then(|| median(&side.ours_cpu[..side.runs.len().min(side.ours_cpu.len())])),
        theirs_cpu_secs: median(&side.runs.iter().map(R::cpu_secs).collect::<Vec<_>>()),
        ours_peak_rss_kib: median(&side.ours_rss[..side.runs.len().min(side.ours_rss.len())]),
        theirs_peak_rss_kib: median(
            &side
                .runs
                .iter()
                .map(|r| r.peak_rss_kib() as f64)
                .collect::<Vec<_>>(),
        ),
        theirs_cpu_window_secs: median(
            &side.runs.iter().map(R::cpu_window_secs).collect::<Vec<_>>(),
        ),
        ours_sequential_1ms: side.ours_sequential,
        theirs_sequential_1ms: theirs_sequential,
        ratio_per_sequential,
        note,
        details: R::details(side.runs),
    })
}
