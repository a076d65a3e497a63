//! `xkafka-bench`: xkafka against a raw `rdkafka` baseline, on the same
//! broker in the same run, alternating the two (A B A B …) so that machine
//! drift cancels out, medians reported as ratios.
//!
//! ```text
//! scripts/bench.sh --quick      # starts the broker, runs this, writes BENCHMARKS data
//! ```
//!
//! Every comparison prints one line `RATIO <name> <ours/baseline> ours=… baseline=…`
//! (for latency the ratio is baseline/ours, so higher is better everywhere).

mod baseline;
mod clock;
mod eos;
mod ours;
mod peers;
mod report;
mod sweep;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use xkafka::mock::EmbeddedCluster;

use report::{Comparison, Results};

#[derive(Parser, Debug)]
#[command(about = "xkafka vs raw rdkafka, same broker, same run")]
struct Args {
    /// Quick mode: smaller runs, 5 rounds after a warm-up round (about 14 minutes on 2 cores; the noisiest comparisons run more rounds).
    #[arg(long)]
    quick: bool,
    /// A real broker (the Apache Kafka node started by scripts/bench.sh);
    /// without it only the embedded mock cluster is measured.
    #[arg(long, env = "XKAFKA_BENCH_BROKERS")]
    brokers: Option<String>,
    /// What the real broker is, for the report.
    #[arg(long, default_value = "Apache Kafka, one node")]
    broker_name: String,
    /// Skip the embedded mock cluster column.
    #[arg(long)]
    no_mock: bool,
    /// Rounds per comparison (each round runs ours and the baseline).
    #[arg(long)]
    rounds: Option<usize>,
    /// Only the comparisons whose name contains one of these. `sweep` (how
    /// cost grows with partitions, message size and concurrency, beside the
    /// raw loop and Go xkafka; real brokers only) runs only when named.
    #[arg(long)]
    only: Vec<String>,
    /// Run only one side of each comparison (`ours` or `baseline`), e.g. to
    /// profile it alone with `perf record`; ratios are then not computed.
    #[arg(long, value_enum, default_value_t = Side::Both)]
    side: Side,
    /// Transaction intervals (ms) of the consume-transform-produce runs,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = eos::INTERVALS_MS)]
    eos_intervals: Vec<u64>,
    /// An experiment, off by default: the raw transactional loop waits
    /// until every output is acknowledged before `commit_transaction`, so
    /// that rdkafka's flush in `commit_transaction` finds nothing in flight
    /// (when something is, it polls for 100 ms whatever arrives).
    #[arg(long)]
    eos_raw_drain: bool,
    /// Skip the Go xkafka peer (otherwise built with `go build` and run in
    /// the same rounds, where it has a counterpart).
    #[arg(long)]
    no_go: bool,
    /// Skip the pure-Rust confluent-kafka peer (otherwise built with
    /// `cargo build --release` into target/peers/confluent-rust and run in
    /// the same rounds, where it has a counterpart).
    #[arg(long)]
    no_rust_peer: bool,
    /// Where to write the JSON results and the SVG charts.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Measure nothing: draw the sweep's charts (`sweep_*.svg`, into
    /// `--out`) again from this `results.json` of a `--only sweep` run.
    #[arg(long)]
    sweep_charts: Option<PathBuf>,
}

/// Which side(s) of a comparison run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    Both,
    Ours,
    Baseline,
}

/// Sizes of one mode.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Sizes {
    pub(crate) rounds: usize,
    pub(crate) consume: u64,
    pub(crate) consume_1k: u64,
    pub(crate) concurrent: u64,
    pub(crate) sequential_slow: u64,
    pub(crate) publish: u64,
    pub(crate) publish_sync: u64,
    pub(crate) latency_rate: u64,
    pub(crate) latency_secs: u64,
    /// Input messages of the consume-transform-produce runs.
    pub(crate) eos: u64,
    /// Messages of each point of the partition sweep (`--only sweep`; a
    /// multiple of 96 partitions × 1,000).
    pub(crate) sweep: u64,
}

impl Sizes {
    fn new(quick: bool, rounds: Option<usize>) -> Self {
        let s = if quick {
            Sizes {
                rounds: 5,
                // Multiples of 6 partitions × 1,000 (the batch size). About
                // 0.4 s of steady consuming on Apache Kafka: at 102,000 a
                // run lasted 40 to 70 ms, mostly librdkafka's first fetches.
                consume: 600_000,
                // 360 MB: about 0.4 s of steady consuming on Apache Kafka,
                // as the 100-byte run. At 120k a run timed 0.15 s and its
                // rounds spread by ±25 %. (The mock cluster keeps 24 MB of
                // it: see MOCK_CONSUME_1K_MAX.)
                consume_1k: 360_000,
                concurrent: 8_000,
                sequential_slow: 600,
                publish: 300_000,
                publish_sync: 10_000,
                latency_rate: 1_000,
                latency_secs: 3,
                eos: 120_000,
                sweep: 192_000,
            }
        } else {
            Sizes {
                rounds: 9,
                consume: 2_004_000,
                consume_1k: 600_000,
                concurrent: 40_000,
                sequential_slow: 3_000,
                publish: 500_000,
                publish_sync: 100_000,
                latency_rate: 1_000,
                latency_secs: 10,
                eos: 300_000,
                sweep: 960_000,
            }
        };
        Sizes {
            rounds: rounds.unwrap_or(s.rounds).max(1),
            ..s
        }
    }
}

/// Most messages prefilled for the 100-byte runs on the mock cluster: it
/// keeps about 5 MB per partition and drops the oldest records beyond (the
/// full mode's 504k lost half of them). 30,000 per partition, whole batches.
const MOCK_CONSUME_MAX: u64 = 180_000;
/// The same for the 1 KiB runs: about 4 MB per partition.
const MOCK_CONSUME_1K_MAX: u64 = 24_000;

impl Sizes {
    /// The sizes used on `target`.
    fn for_target(self, target: &Target) -> Sizes {
        match target.mock {
            Some(_) => Sizes {
                consume: self.consume.min(MOCK_CONSUME_MAX),
                consume_1k: self.consume_1k.min(MOCK_CONSUME_1K_MAX),
                ..self
            },
            None => self,
        }
    }
}

/// One broker to measure on.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) brokers: String,
    pub(crate) description: String,
    mock: Option<EmbeddedCluster>,
}

impl Target {
    /// The embedded cluster, when this target is one.
    pub(crate) fn mock(&self) -> Option<&EmbeddedCluster> {
        self.mock.as_ref()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(json) = &args.sweep_charts {
        return report::sweep_charts_from(json, &args.out);
    }
    let sizes = Sizes::new(args.quick, args.rounds);
    let started = Instant::now();
    let mut targets = Vec::new();
    if let Some(brokers) = &args.brokers {
        targets.push(Target {
            name: "kafka",
            brokers: brokers.clone(),
            description: format!("{} at {brokers}", args.broker_name),
            mock: None,
        });
    }
    if !args.no_mock {
        let mock = EmbeddedCluster::start(1)?;
        targets.push(Target {
            name: "mock",
            brokers: mock.bootstrap_servers().to_owned(),
            description: "librdkafka mock cluster, in process, 1 broker".into(),
            mock: Some(mock),
        });
    }
    if targets.is_empty() {
        return Err("nothing to measure: give --brokers or drop --no-mock".into());
    }
    let wanted =
        |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o.as_str()));
    // The sweep adds minutes: only when asked for by name.
    let sweep = args.only.iter().any(|o| o == "sweep");

    let mut results = Results::new(&sizes, args.quick);
    // Go xkafka beside us, built once, where a wanted comparison has a Go
    // counterpart (both sides only: it is a third side).
    let go = (!args.no_go
        && args.side == Side::Both
        && (sweep || PLAN.iter().any(|n| wanted(n) && peers::GoPeer::covers(n))))
    .then(|| peers::GoPeer::build(&args.out))
    .flatten();
    // The same for the pure-Rust confluent-kafka client.
    let rust = (!args.no_rust_peer
        && args.side == Side::Both
        && PLAN.iter().any(|n| wanted(n) && peers::RustPeer::covers(n)))
    .then(peers::RustPeer::build)
    .flatten();
    for target in &targets {
        results
            .brokers
            .insert(target.name.to_owned(), target.description.clone());
        let eos_plan = eos::Plan {
            intervals: args.eos_intervals.clone(),
            raw_drain: args.eos_raw_drain,
            alo_commit_interval_ms: eos::ALO_COMMIT_INTERVAL_MS,
        };
        // Consume-transform-produce on real brokers only: the mock's
        // transaction coordinator is a simulation, and the runs would add
        // a minute to quick mode.
        let eos = target.mock().is_none().then_some(&eos_plan);
        let mut plan = plan(&sizes, &wanted, eos);
        // On real brokers only: the mock cluster keeps about 5 MB per
        // partition (the 1-partition and 16 KiB topics would lose records)
        // and runs in our process (its CPU would count as ours).
        if sweep && target.mock().is_none() {
            plan.push(Step::Sweep);
        } else if sweep {
            eprintln!("sweep: real brokers only, not run on {}", target.name);
        }
        let bar = ProgressBar::new(plan.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(target.name);
        let sizes = sizes.for_target(target);
        let topics = report::prepare(target, &sizes, &bar).await?;
        for step in plan {
            bar.set_message(step.label());
            let step_started = Instant::now();
            let outcome = step
                .run(
                    target,
                    &topics,
                    &sizes,
                    Who {
                        side: args.side,
                        go: go.as_ref(),
                        rust: rust.as_ref(),
                    },
                    &mut results,
                    &bar,
                )
                .await;
            if let Err(err) = &outcome {
                bar.println(format!("{} {}: failed: {err}", target.name, step.label()));
            }
            if bar.is_hidden() {
                // Not a terminal (CI, a log file): one line per step instead.
                let failure = outcome.as_ref().err().map(|e| format!(" (failed: {e})"));
                eprintln!(
                    "[{}] {} done in {:.1} s{}",
                    target.name,
                    step.label(),
                    step_started.elapsed().as_secs_f64(),
                    failure.unwrap_or_default()
                );
            }
            bar.inc(1);
        }
        bar.finish_with_message("done");
    }
    results.elapsed_secs = started.elapsed().as_secs_f64();
    results.print();
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    report::charts(&results, &args.out)?;
    println!(
        "\nresults: {} · charts: {} · {:.0} s",
        json.display(),
        args.out.join("*.svg").display(),
        results.elapsed_secs
    );
    Ok(())
}

/// A step of a target's run.
enum Step {
    Compare(&'static str),
    Scaling,
    /// How cost grows (see `sweep`).
    Sweep,
    /// Consume-transform-produce, exactly-once and at-least-once.
    Eos(eos::Plan),
}

impl Step {
    fn label(&self) -> String {
        match self {
            Step::Compare(name) => (*name).to_owned(),
            Step::Scaling => "concurrency scaling".into(),
            Step::Sweep => "sweep".into(),
            Step::Eos(_) => "consume-transform-produce".into(),
        }
    }

    async fn run(
        &self,
        target: &Target,
        topics: &report::Topics,
        sizes: &Sizes,
        who: Who<'_>,
        results: &mut Results,
        bar: &ProgressBar,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let Who { side, go, rust } = who;
        match self {
            Step::Compare(name) => {
                let (comparison, against_peers) =
                    compare(name, target, topics, sizes, side, go, rust).await?;
                results.add(target.name, comparison);
                for c in against_peers {
                    match &c.details {
                        peers::PeerDetails::Go(runs) => {
                            results.go_peer = runs.first().map(peers::GoRun::versions);
                        }
                        peers::PeerDetails::Rust(runs) => {
                            results.rust_peer = runs.first().map(peers::RustRun::versions);
                        }
                    }
                    results
                        .peers
                        .entry(target.name.to_owned())
                        .or_default()
                        .push(c);
                }
            }
            Step::Scaling => {
                let mut points = BTreeMap::new();
                for (label, n, order) in [
                    ("1", 1, xkafka::Order::PerKey),
                    ("4", 4, xkafka::Order::PerKey),
                    ("16", 16, xkafka::Order::PerKey),
                    ("64", 64, xkafka::Order::PerKey),
                    ("16 unordered", 16, xkafka::Order::Unordered),
                ] {
                    let messages = if n == 1 {
                        sizes.sequential_slow
                    } else {
                        sizes.concurrent
                    };
                    let rate = ours::consume(
                        &target.brokers,
                        &topics.keyed,
                        messages,
                        ours::Handler::Sleep1ms,
                        n,
                        order,
                    )
                    .await?;
                    points.insert(label.to_owned(), rate);
                }
                results.scaling.insert(target.name.to_owned(), points);
            }
            Step::Sweep => {
                let figures = sweep::run(target, sizes, side, go, bar).await?;
                if figures.go_peer.is_some() {
                    results.go_peer = figures.go_peer.clone();
                }
                results.sweep.insert(target.name.to_owned(), figures);
            }
            Step::Eos(eos_plan) => {
                let (comparisons, figures) = eos::run(target, sizes, side, eos_plan).await?;
                for comparison in comparisons {
                    results.add(target.name, comparison);
                }
                results.eos.insert(target.name.to_owned(), figures);
                results.eos_plan = Some(eos_plan.clone());
            }
        }
        Ok(())
    }
}

/// Who runs: the side(s) of `--side`, and the peers when built.
#[derive(Clone, Copy)]
struct Who<'a> {
    side: Side,
    go: Option<&'a peers::GoPeer>,
    rust: Option<&'a peers::RustPeer>,
}

/// The comparisons, in order.
const PLAN: [&str; 7] = [
    "consume_seq",
    "consume_seq_1k",
    "consume_conc16_1ms",
    "consume_batch",
    "publish_async",
    "publish_sync",
    "e2e_latency_p99",
];

fn plan(_sizes: &Sizes, wanted: &dyn Fn(&str) -> bool, eos: Option<&eos::Plan>) -> Vec<Step> {
    let mut steps: Vec<Step> = PLAN
        .into_iter()
        .filter(|n| wanted(n))
        .map(Step::Compare)
        .collect();
    if wanted("scaling") || wanted("consume_conc16_1ms") {
        steps.push(Step::Scaling);
    }
    if let Some(eos) = eos.filter(|_| wanted("eos")) {
        steps.push(Step::Eos(eos.clone()));
    }
    steps
}

/// Who runs in a turn of a round.
#[derive(Clone, Copy, PartialEq)]
enum Turn {
    Ours,
    Baseline,
    Go,
    Rust,
}

/// Runs ours and the baseline (and the peers, where they have a
/// counterpart) alternately and keeps the medians.
async fn compare(
    name: &'static str,
    target: &Target,
    topics: &report::Topics,
    sizes: &Sizes,
    side: Side,
    go: Option<&peers::GoPeer>,
    rust: Option<&peers::RustPeer>,
) -> Result<(Comparison, Vec<report::PeerComparison>), Box<dyn std::error::Error>> {
    let b = &target.brokers;
    let mut go = go.filter(|_| side == Side::Both && peers::GoPeer::covers(name));
    let mut rust =
        rust.filter(|p| side == Side::Both && peers::RustPeer::covers(name) && p.runs_on(target));
    let mut rust_runs = Vec::new();
    let mut ours_runs = Vec::new();
    let mut base_runs = Vec::new();
    let mut extra_runs = Vec::new();
    let mut ours_cpu = Vec::new();
    let mut base_cpu = Vec::new();
    let mut go_runs = Vec::new();
    let mut go_sequential_runs = Vec::new();
    // A publish_async run lasts a fraction of a second and, on 2 cores shared
    // with the broker, varies by ±30 % from run to run: it gets more rounds
    // (with 11, three runs of the same code gave 0.89, 1.12 and 0.97 on
    // Kafka, paired; with 21, the rounds' paired ratios spread with a
    // standard deviation of 0.12 on the mock and 0.25 on Kafka, so a run's
    // median still moved by ±0.05; with 41, 0.20 on the mock, and a run's
    // median by ±0.04). Longer rounds do not narrow it: with 4 times the
    // messages per round, the mock's rounds spread just as much (0.20), as
    // if each run drew a way of sharing the 2 cores between its 4 busy
    // threads and kept it.
    let rounds = match name {
        "publish_async" => sizes.rounds.max(PUBLISH_ASYNC_ROUNDS),
        // The mock cluster holds little (see MOCK_CONSUME_MAX): a round
        // there times 16 to 120 ms and spreads by ±30 %, for a few seconds
        // of the whole run.
        "consume_seq" | "consume_seq_1k" | "consume_batch" if target.mock().is_some() => {
            sizes.rounds.max(MOCK_CONSUME_ROUNDS)
        }
        // A round reads 360 MB in about 0.25 s, at 1 to 2 GB/s through the
        // loopback, on 2 cores shared with the broker: its paired ratio
        // spreads from 0.76 to 1.55 (standard deviation 0.23), and with 5
        // rounds a run's median ranged from 0.86 to 1.35 for the same code.
        // A round takes about a second.
        "consume_seq_1k" => sizes.rounds.max(KAFKA_CONSUME_1K_ROUNDS),
        // A p99 of about 2 ms is set by the worst 30 of 3,000 messages: one
        // scheduling hiccup moves a round's ratio by ±0.3 (0.58 to 1.38 in
        // rounds without a broker stall).
        "e2e_latency_p99" => sizes.rounds.max(LATENCY_ROUNDS),
        _ => sizes.rounds,
    };
    for round in 0..WARM_UP_ROUNDS + rounds {
        // Run, not kept: the first runs of a comparison met a broker (and
        // a process) not yet warm — the JVM compiling, the topic's first
        // writes — and the side that went first in round 0 paid for it.
        let warm_up = round < WARM_UP_ROUNDS;
        let measured = round.saturating_sub(WARM_UP_ROUNDS);
        if name == "e2e_latency_p99" && side == Side::Both {
            // Both sides at once, each on a topic of its own: a p99 is set
            // by the worst 1 % of a few seconds, and the broker's own
            // stalls (its first minutes; hundreds of milliseconds after the
            // publishing steps) hit whichever side ran then. Run together, both meet
            // the same ones; 1,000 msg/s each is no load for the broker.
            let (ours_topic, base_topic) = (
                report::fresh_topic(target).await?,
                report::fresh_topic(target).await?,
            );
            let (ours, base) = tokio::join!(
                ours::latency(b, &ours_topic, sizes),
                baseline::latency(b, &base_topic, sizes)
            );
            let (ours, base) = (ours?, base?);
            if !warm_up {
                ours_runs.push(ours);
                base_runs.push(base);
            }
            continue;
        }
        // Alternate who goes first, too (with Go: O B G, B G O, G O B, …;
        // with both peers: O B G R, B G R O, …).
        // The peers take part in the first PEER_ROUNDS rounds only: the
        // rounds beyond are there to narrow the spread of our paired ratio,
        // not theirs, and a Go round can last four of ours.
        let peers_too = measured < PEER_ROUNDS;
        let mut turns = vec![Turn::Ours, Turn::Baseline];
        if go.is_some() && peers_too {
            turns.push(Turn::Go);
        }
        if rust.is_some() && peers_too {
            turns.push(Turn::Rust);
        }
        let first = measured % turns.len();
        turns.rotate_left(first);
        for turn in turns {
            if turn == Turn::Ours && side == Side::Baseline
                || turn == Turn::Baseline && side == Side::Ours
            {
                continue;
            }
            match (turn, go) {
                (Turn::Ours, _) => {
                    let cpu = peers::process_cpu_secs();
                    let run = run_ours(name, target, topics, sizes).await?;
                    if !warm_up {
                        ours_runs.push(run);
                        ours_cpu.push(peers::process_cpu_secs() - cpu);
                    }
                }
                (Turn::Baseline, _) => {
                    let cpu = peers::process_cpu_secs();
                    let run = run_baseline(name, target, topics, sizes).await?;
                    if !warm_up {
                        base_runs.push(run);
                        base_cpu.push(peers::process_cpu_secs() - cpu);
                    }
                }
                (Turn::Go, Some(peer)) => {
                    let run = peer.run(name, target, topics, sizes).and_then(|run| {
                        if name == "consume_conc16_1ms" && !warm_up {
                            go_sequential_runs
                                .push(peer.run_sequential_1ms(target, topics, sizes)?);
                        }
                        Ok(run)
                    });
                    match run {
                        Ok(_) if warm_up => {}
                        Ok(run) => go_runs.push(run),
                        // A failing peer costs its own line only, not ours.
                        Err(e) => {
                            eprintln!(
                                "warning: Go xkafka {name} on {}: {e}; left out",
                                target.name
                            );
                            (go, go_runs, go_sequential_runs) = (None, Vec::new(), Vec::new());
                        }
                    }
                }
                (Turn::Go, None) => {}
                (Turn::Rust, _) => {
                    let Some(peer) = rust else { continue };
                    match peer.run(name, target, topics, sizes) {
                        Ok(_) if warm_up => {}
                        Ok(run) => rust_runs.push(run),
                        // The pure-Rust client does not get through to
                        // librdkafka's mock cluster (see `RustPeer::run`):
                        // there it is not tried again.
                        Err(e) if target.mock().is_some() => {
                            eprintln!(
                                "note: confluent-kafka Rust peer left out on {} from {name} on: {e}",
                                target.name
                            );
                            peer.leave_out(target);
                            (rust, rust_runs) = (None, Vec::new());
                        }
                        // A failing peer costs its own line only, not ours.
                        Err(e) => {
                            eprintln!(
                                "warning: confluent-kafka Rust peer {name} on {}: {e}; left out",
                                target.name
                            );
                            (rust, rust_runs) = (None, Vec::new());
                        }
                    }
                }
            }
        }
        if !warm_up && side == Side::Both && (name == "consume_seq" || name == "consume_conc16_1ms")
        {
            // The bare loop (poll + count), for information / the ideal's cap.
            extra_runs.push(baseline::consume(
                b,
                &topics.small,
                sizes.consume,
                baseline::Work::Bare,
            )?);
        }
    }
    let ours = report::median(&ours_runs);
    let mut baseline = report::median(&base_runs);
    // Our sequential rate with the 1 ms handler, for the Go comparison.
    let ours_sequential = (name == "consume_conc16_1ms").then_some(baseline);
    let mut note = String::new();
    if name == "consume_conc16_1ms" {
        // The ideal: 16 × the sequential rate with the same handler, capped
        // by the bare loop.
        let bare = report::median(&extra_runs);
        let ideal = (16.0 * baseline).min(bare);
        note =
            format!("sequential {baseline:.0} msg/s × 16, capped by the bare loop {bare:.0} msg/s");
        baseline = ideal;
    } else if name == "consume_seq" {
        note = format!(
            "bare loop (poll + count): {:.0} msg/s",
            report::median(&extra_runs)
        );
    }
    let latency = name == "e2e_latency_p99";
    let against_peers: Vec<report::PeerComparison> = [
        peers::against(peers::PeerSide {
            kind: peers::PeerKind::Go,
            name,
            target,
            ours,
            ours_runs: &ours_runs,
            ours_cpu: &ours_cpu,
            ours_sequential,
            runs: go_runs,
            sequential_runs: go_sequential_runs,
        }),
        peers::against(peers::PeerSide {
            kind: peers::PeerKind::Rust,
            name,
            target,
            ours,
            ours_runs: &ours_runs,
            ours_cpu: &ours_cpu,
            ours_sequential: None,
            runs: rust_runs,
            sequential_runs: Vec::new(),
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Each round runs both sides back to back (at once for latency), so
    // each round is a pair that met the same machine and broker: the ratio
    // is taken within each round, then the median of those. On 2 shared
    // cores the machine drifts between a fast and a slow state (the CPU
    // time of the same run doubles, for both sides); a ratio of the two
    // medians could set a fast round of one side against a slow one of the
    // other. It is printed beside. The concurrency comparison's baseline is
    // an ideal made of medians, not a round of its own: ratio of medians.
    let of_medians = if latency {
        baseline / ours
    } else {
        ours / baseline
    };
    let paired = side == Side::Both
        && name != "consume_conc16_1ms"
        && ours_runs.len() == base_runs.len()
        && !ours_runs.is_empty();
    let ratio = if paired {
        let ratios: Vec<f64> = ours_runs
            .iter()
            .zip(&base_runs)
            .map(|(o, b)| if latency { b / o } else { o / b })
            .collect();
        let both = if latency { "both at once; " } else { "" };
        let sep = if note.is_empty() { "" } else { "; " };
        note = format!(
            "{both}median of the rounds' ratios (of the medians: {of_medians:.3}){sep}{note}"
        );
        report::median(&ratios)
    } else {
        of_medians
    };
    // CPU time per message, raw over ours (higher is better for ours), over
    // all rounds: a 10 ms tick is a few per cent of one round. Left out
    // below a second a side (the mock's 1 KiB rounds take 2 to 4 ticks).
    let (ours_total, base_total): (f64, f64) = (ours_cpu.iter().sum(), base_cpu.iter().sum());
    let cpu_ratio = (ours_cpu.len() == base_cpu.len()
        && ours_total.min(base_total) >= MIN_CPU_SECS
        && name != "consume_conc16_1ms"
        && !latency)
        .then(|| base_total / ours_total)
        .filter(|r| r.is_finite());
    let comparison = Comparison {
        name: name.to_owned(),
        unit: if latency { "ms".into() } else { "msg/s".into() },
        ours,
        baseline,
        ratio,
        ours_runs,
        baseline_runs: base_runs,
        ours_cpu_secs: ours_cpu,
        baseline_cpu_secs: base_cpu,
        cpu_ratio,
        note,
    };
    Ok((comparison, against_peers))
}

async fn run_ours(
    name: &str,
    target: &Target,
    topics: &report::Topics,
    sizes: &Sizes,
) -> Result<f64, Box<dyn std::error::Error>> {
    use ours::Handler;
    let brokers = target.brokers.as_str();
    use xkafka::Order;
    Ok(match name {
        "consume_seq" => {
            ours::consume(
                brokers,
                &topics.small,
                sizes.consume,
                Handler::Noop,
                1,
                Order::PerPartition,
            )
            .await?
        }
        "consume_seq_1k" => {
            ours::consume(
                brokers,
                &topics.large,
                sizes.consume_1k,
                Handler::Noop,
                1,
                Order::PerPartition,
            )
            .await?
        }
        "consume_conc16_1ms" => {
            ours::consume(
                brokers,
                &topics.keyed,
                sizes.concurrent,
                Handler::Sleep1ms,
                16,
                Order::PerKey,
            )
            .await?
        }
        "consume_batch" => ours::consume_batch(brokers, &topics.small, sizes.consume).await?,
        "publish_async" => ours::publish_async(brokers, &topics.sink, sizes.publish).await?,
        "publish_sync" => ours::publish_sync(brokers, &topics.sink, sizes.publish_sync).await?,
        "e2e_latency_p99" => {
            ours::latency(brokers, &report::fresh_topic(target).await?, sizes).await?
        }
        other => return Err(format!("unknown comparison {other}").into()),
    })
}

async fn run_baseline(
    name: &str,
    target: &Target,
    topics: &report::Topics,
    sizes: &Sizes,
) -> Result<f64, Box<dyn std::error::Error>> {
    use baseline::Work;
    let brokers = target.brokers.as_str();
    Ok(match name {
        "consume_seq" => {
            baseline::consume(brokers, &topics.small, sizes.consume, Work::CopyAndStore)?
        }
        "consume_seq_1k" => {
            baseline::consume(brokers, &topics.large, sizes.consume_1k, Work::CopyAndStore)?
        }
        // The sequential rate with the same handler, for the ideal.
        "consume_conc16_1ms" => {
            ours::consume(
                brokers,
                &topics.keyed,
                sizes.sequential_slow,
                ours::Handler::Sleep1ms,
                1,
                xkafka::Order::PerKey,
            )
            .await?
        }
        "consume_batch" => {
            baseline::consume(brokers, &topics.small, sizes.consume, Work::CopyAndStore)?
        }
        "publish_async" => baseline::publish_async(brokers, &topics.sink, sizes.publish)?,
        "publish_sync" => baseline::publish_sync(brokers, &topics.sink, sizes.publish_sync).await?,
        "e2e_latency_p99" => {
            baseline::latency(brokers, &report::fresh_topic(target).await?, sizes).await?
        }
        other => return Err(format!("unknown comparison {other}").into()),
    })
}

/// A group id no earlier run used, so every run reads from the start.
pub(crate) fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Rounds run before the measured ones and not kept (see `compare`).
const WARM_UP_ROUNDS: usize = 1;

/// Least rounds for `publish_async` (see `compare`).
const PUBLISH_ASYNC_ROUNDS: usize = 81;

/// Most measured rounds the peers (Go xkafka, the pure-Rust client) take
/// part in (see `compare`).
const PEER_ROUNDS: usize = 21;

/// Least CPU time a side must have used over its rounds for the CPU ratio
/// to be reported (100 ticks: ±1 %).
const MIN_CPU_SECS: f64 = 1.0;

/// Least rounds for the consuming comparisons on the mock cluster (see
/// `compare`).
const MOCK_CONSUME_ROUNDS: usize = 15;

/// Least rounds for `consume_seq_1k` on a real broker (see `compare`).
const KAFKA_CONSUME_1K_ROUNDS: usize = 41;

/// Least rounds for `e2e_latency_p99` (see `compare`).
const LATENCY_ROUNDS: usize = 11;

/// Bounded wait used while a run is in progress.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(120);
