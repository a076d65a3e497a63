//! One comparison on one broker: ours, the limit, the safe-API loop and the
//! peers in the same rounds, in turn, and the paired ratios of those rounds.

use crate::figures::{Comparison, PeerComparison, PeerKind, Rss};
use crate::limit::consume::Hand;
use crate::topics::{self, Topics};
use crate::usage::Meter;
use crate::vocab::{median, Side, Sizes, Target};
use crate::{baseline, limit, ours, peers};

/// Who runs in a turn of a round.
#[derive(Clone, Copy, PartialEq)]
enum Turn {
    Ours,
    Baseline,
    Go,
    Rust,
    /// librdkafka's fastest loop for the same work (see `limit`).
    Limit,
    /// The same without copying (consuming only): the ceiling.
    Ceiling,
}

/// The limit's loop for comparison `name`, where it has one.
fn limit_of(name: &str) -> bool {
    matches!(
        name,
        "consume_seq" | "consume_seq_1k" | "consume_batch" | "publish_async" | "publish_sync"
    )
}

/// Runs ours and the baseline (and the peers, where they have a
/// counterpart) alternately and keeps the medians.
pub(crate) async fn compare(
    name: &'static str,
    target: &Target,
    topics: &Topics,
    sizes: &Sizes,
    side: Side,
    go: Option<&peers::GoPeer>,
    rust: Option<&peers::RustPeer>,
) -> Result<(Comparison, Vec<PeerComparison>), Box<dyn std::error::Error>> {
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
    let (mut limit_runs, mut limit_cpu, mut ceiling_runs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_rss, mut base_rss, mut limit_rss) = (Vec::new(), Vec::new(), Vec::new());
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
                topics::fresh_topic(target).await?,
                topics::fresh_topic(target).await?,
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
        if side == Side::Both && limit_of(name) {
            turns.push(Turn::Limit);
        }
        if side == Side::Both && matches!(name, "consume_seq" | "consume_seq_1k") {
            turns.push(Turn::Ceiling);
        }
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
                    let meter = Meter::start();
                    let run = run_ours(name, target, topics, sizes).await?;
                    let used = meter.stop();
                    if !warm_up {
                        ours_runs.push(run);
                        ours_cpu.push(used.cpu_secs);
                        ours_rss.push(used.peak_rss_kib as f64);
                    }
                }
                (Turn::Baseline, _) => {
                    let meter = Meter::start();
                    let run = run_baseline(name, target, topics, sizes).await?;
                    let used = meter.stop();
                    if !warm_up {
                        base_runs.push(run);
                        base_cpu.push(used.cpu_secs);
                        base_rss.push(used.peak_rss_kib as f64);
                    }
                }
                (Turn::Limit, _) => {
                    let meter = Meter::start();
                    let run = run_limit(name, topics, sizes, b, Hand::Copy)?;
                    let used = meter.stop();
                    if !warm_up {
                        limit_runs.push(run);
                        limit_cpu.push(used.cpu_secs);
                        limit_rss.push(used.peak_rss_kib as f64);
                    }
                }
                (Turn::Ceiling, _) => {
                    let run = run_limit(name, topics, sizes, b, Hand::NoCopy)?;
                    if !warm_up {
                        ceiling_runs.push(run);
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
    let ours = median(&ours_runs);
    let mut baseline = median(&base_runs);
    // Our sequential rate with the 1 ms handler, for the Go comparison.
    let ours_sequential = (name == "consume_conc16_1ms").then_some(baseline);
    let mut note = String::new();
    if name == "consume_conc16_1ms" {
        // The ideal: 16 × the sequential rate with the same handler, capped
        // by the bare loop.
        let bare = median(&extra_runs);
        let ideal = (16.0 * baseline).min(bare);
        note =
            format!("sequential {baseline:.0} msg/s × 16, capped by the bare loop {bare:.0} msg/s");
        baseline = ideal;
    } else if name == "consume_seq" {
        note = format!("bare loop (poll + count): {:.0} msg/s", median(&extra_runs));
    }
    let latency = name == "e2e_latency_p99";
    let against_peers: Vec<PeerComparison> = [
        peers::against(peers::PeerSide {
            kind: PeerKind::Go,
            name,
            target,
            ours,
            ours_runs: &ours_runs,
            ours_cpu: &ours_cpu,
            ours_rss: &ours_rss,
            ours_sequential,
            runs: go_runs,
            sequential_runs: go_sequential_runs,
        }),
        peers::against(peers::PeerSide {
            kind: PeerKind::Rust,
            name,
            target,
            ours,
            ours_runs: &ours_runs,
            ours_cpu: &ours_cpu,
            ours_rss: &ours_rss,
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
        median(&ratios)
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
    // Against the limit: paired per round as above; CPU per message ours
    // over the limit's (lower is better for ours), over all rounds.
    let limit = (!limit_runs.is_empty()).then(|| median(&limit_runs));
    let ratio_vs_limit =
        (limit_runs.len() == ours_runs.len() && !limit_runs.is_empty()).then(|| {
            median(
                &ours_runs
                    .iter()
                    .zip(&limit_runs)
                    .map(|(o, l)| o / l)
                    .collect::<Vec<_>>(),
            )
        });
    let limit_total: f64 = limit_cpu.iter().sum();
    let cpu_vs_limit = (limit_cpu.len() == ours_cpu.len() && limit_total > 0.0)
        .then(|| ours_total / limit_total)
        .filter(|r| r.is_finite());
    let ceiling = (!ceiling_runs.is_empty()).then(|| median(&ceiling_runs));
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
        limit,
        limit_runs,
        limit_cpu_secs: limit_cpu,
        ratio_vs_limit,
        cpu_vs_limit,
        ceiling,
        ceiling_runs,
        peak_rss_kib: Rss {
            ours: median(&ours_rss),
            baseline: median(&base_rss),
            limit: (!limit_rss.is_empty()).then(|| median(&limit_rss)),
        },
        note,
    };
    Ok((comparison, against_peers))
}

async fn run_ours(
    name: &str,
    target: &Target,
    topics: &Topics,
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
            ours::latency(brokers, &topics::fresh_topic(target).await?, sizes).await?
        }
        other => return Err(format!("unknown comparison {other}").into()),
    })
}

async fn run_baseline(
    name: &str,
    target: &Target,
    topics: &Topics,
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
            baseline::latency(brokers, &topics::fresh_topic(target).await?, sizes).await?
        }
        other => return Err(format!("unknown comparison {other}").into()),
    })
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

/// One run of the limit's loop for comparison `name` (see [`limit_of`]);
/// `hand` for the consuming ones (`consume_batch` always hands batches).
fn run_limit(
    name: &str,
    topics: &Topics,
    sizes: &Sizes,
    brokers: &str,
    hand: Hand,
) -> Result<f64, Box<dyn std::error::Error>> {
    use limit::{consume, produce};
    match name {
        "consume_seq" => consume::consume(brokers, &topics.small, sizes.consume, hand),
        "consume_seq_1k" => consume::consume(brokers, &topics.large, sizes.consume_1k, hand),
        "consume_batch" => {
            consume::consume(brokers, &topics.small, sizes.consume, Hand::Batches(1_000))
        }
        "publish_async" => produce::publish_async(brokers, &topics.sink, sizes.publish),
        "publish_sync" => produce::publish_sync(brokers, &topics.sink, sizes.publish_sync),
        other => Err(format!("no limit loop for {other}").into()),
    }
}
