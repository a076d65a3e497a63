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
mod charts;
mod clock;
mod compare;
mod eos;
mod figures;
mod limit;
mod ours;
mod peers;
mod report;
mod sweep;
mod topics;
mod transform;
mod usage;
mod vocab;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use xkafka::mock::EmbeddedCluster;

use report::Results;
use vocab::{Side, Sizes, Target};

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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(json) = &args.sweep_charts {
        return charts::sweep_charts_from(json, &args.out);
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
            alo_commit_interval_ms: transform::ALO_COMMIT_INTERVAL_MS,
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
        let topics = topics::prepare(target, &sizes, &bar).await?;
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
    charts::charts(&results, &args.out)?;
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
        topics: &topics::Topics,
        sizes: &Sizes,
        who: Who<'_>,
        results: &mut Results,
        bar: &ProgressBar,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let Who { side, go, rust } = who;
        match self {
            Step::Compare(name) => {
                let (comparison, against_peers) =
                    compare::compare(name, target, topics, sizes, side, go, rust).await?;
                results.add(target.name, comparison);
                for c in against_peers {
                    match &c.details {
                        figures::PeerDetails::Go(runs) => {
                            results.go_peer = runs.first().map(figures::GoRun::versions);
                        }
                        figures::PeerDetails::Rust(runs) => {
                            results.rust_peer = runs.first().map(figures::RustRun::versions);
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
