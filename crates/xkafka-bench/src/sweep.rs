//! How cost grows (`--only sweep`): throughput of ours, the raw rdkafka loop
//! and Go xkafka as one thing changes at a time, and the CPU each spends.
//!
//! - **Partitions:** the streaming consumer (no-op handler, 100-byte
//!   messages; the raw side is the `consume_seq` loop) on topics of 1, 6, 24
//!   and 96 partitions holding the same number of messages.
//! - **Message size:** the same on 6 partitions with 100 B, 1 KiB and
//!   16 KiB values; the counts shrink with the size so that each run lasts
//!   about as long (see [`SIZES`]).
//! - **Concurrency:** the 1 ms handler at N = 1, 4, 16, 64, ours
//!   (`Order::PerKey`) and Go xkafka (`Concurrency(N)`, any order); each side
//!   is also given relative to its own N = 1 rate, as a 1 ms sleep lasts
//!   about 2 ms in tokio and 1.1 ms in Go.
//! - **`publish_async`**, for its CPU.
//!
//! Every point runs the sides in turns whose order rotates from one round to
//! the next (rounds are the outer loop, so drift spreads over all points).
//! CPU (user + system) per run is our process's around each of our and the
//! raw loop's runs (`/proc/self/stat`, client start to close) and the Go
//! process's, start to exit; on real brokers only (the mock cluster runs in
//! our process).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::figures::{GoRun, GoVersions, PeerRun as _};
use crate::topics::{self as report, Spread};
use crate::vocab::{median, unique, BoxResult, Side, Sizes, Target};
use crate::{baseline, ours, peers, usage};

/// Partition counts of the partition sweep.
pub(crate) const PARTITION_COUNTS: [i32; 4] = [1, 6, 24, 96];

/// Value sizes of the size sweep and the share of the 100-byte count each
/// reads (1/1, 1/2, 1/24): chosen from a probe run so that each run lasts
/// about as long (0.2-0.4 s for ours in quick mode), not to move the same
/// bytes (that would leave 16 KiB runs of a few hundred messages, or
/// 100-byte runs of millions).
pub(crate) const SIZES: [(usize, u64); 3] = [(100, 1), (1024, 2), (16 * 1024, 24)];

/// Concurrency settings of the 1 ms handler runs and their message counts,
/// in multiples of [`Sizes::sequential_slow`]: ≈ 1 s per run for ours.
pub(crate) const CONCURRENCY: [(usize, u64); 4] = [(1, 1), (4, 4), (16, 12), (64, 24)];

/// One side's figures at one point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Figure {
    /// Median msg/s.
    pub(crate) msgs_per_sec: f64,
    pub(crate) runs: Vec<f64>,
    /// Median CPU seconds per run (see the module), on real brokers only.
    pub(crate) cpu_secs: Option<f64>,
    pub(crate) cpu_runs: Vec<f64>,
    /// `cpu_secs` per million messages.
    pub(crate) cpu_per_million_secs: Option<f64>,
    /// Concurrency: this side's rate over its own N = 1 rate.
    pub(crate) over_n1: Option<f64>,
}

/// One point of a sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Point {
    /// The label on the chart's x axis.
    pub(crate) x: String,
    pub(crate) partitions: i32,
    pub(crate) value_bytes: usize,
    pub(crate) concurrency: usize,
    pub(crate) messages: u64,
    /// `ours`, `raw`, `go`.
    pub(crate) sides: BTreeMap<String, Figure>,
}

/// A broker's sweep.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Figures {
    pub(crate) rounds: usize,
    pub(crate) partitions: Vec<Point>,
    pub(crate) sizes: Vec<Point>,
    pub(crate) concurrency: Vec<Point>,
    pub(crate) publish_async: Vec<Point>,
    /// The Go peer's versions, once it ran.
    pub(crate) go_peer: Option<GoVersions>,
    /// How long the step took, topic filling included.
    pub(crate) secs: f64,
}

/// What a point runs.
#[derive(Clone)]
enum Job {
    /// No-op handler (ours), the copy-and-store poll loop (raw), Go's
    /// `consume_seq`.
    Consume {
        topic: String,
    },
    /// 1 ms handler with concurrency N: ours and Go only.
    Slow {
        topic: String,
        n: usize,
    },
    Publish {
        topic: String,
    },
}

/// The sides of a job.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Ours,
    Raw,
    Go,
}

impl Who {
    fn key(self) -> &'static str {
        match self {
            Who::Ours => "ours",
            Who::Raw => "raw",
            Who::Go => "go",
        }
    }
}

struct Planned {
    axis: usize,
    point: Point,
    job: Job,
    /// Per side: rates and CPU seconds.
    runs: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)>,
}

/// Creates and fills the sweep's topics, then runs every point `rounds`
/// times.
pub(crate) async fn run(
    target: &Target,
    sizes: &Sizes,
    side: Side,
    go: Option<&peers::GoPeer>,
    bar: &indicatif::ProgressBar,
) -> BoxResult<Figures> {
    let started = std::time::Instant::now();
    let brokers = target.brokers.as_str();
    let base = sizes.sweep;
    let mut planned = Vec::new();
    let point = |x: String, partitions, value_bytes, concurrency, messages| Point {
        x,
        partitions,
        value_bytes,
        concurrency,
        messages,
        sides: BTreeMap::new(),
    };
    bar.set_message("sweep: filling topics");
    for partitions in PARTITION_COUNTS {
        let topic = unique(&format!("bench-sweep-p{partitions}"));
        report::create(target, &topic, partitions).await?;
        report::fill(brokers, &topic, base, 100, Spread::EvenOver(partitions))?;
        planned.push((
            0,
            point(partitions.to_string(), partitions, 100, 1, base),
            Job::Consume { topic },
        ));
    }
    for (bytes, share) in SIZES {
        let messages = base / share;
        // 100 B: the partition sweep's 6-partition topic.
        let same = planned
            .iter()
            .find_map(|(_, point, job): &(_, Point, Job)| match job {
                Job::Consume { topic } if point.partitions == report::PARTITIONS => {
                    Some(topic.clone())
                }
                _ => None,
            });
        let topic = if let (100, Some(topic)) = (bytes, same) {
            topic
        } else {
            let topic = unique(&format!("bench-sweep-{bytes}b"));
            report::create(target, &topic, report::PARTITIONS).await?;
            report::fill(brokers, &topic, messages, bytes, Spread::Even)?;
            topic
        };
        let x = match bytes {
            100 => "100 B".to_owned(),
            b => format!("{} KiB", b / 1024),
        };
        planned.push((
            1,
            point(x, report::PARTITIONS, bytes, 1, messages),
            Job::Consume { topic },
        ));
    }
    let keyed = unique("bench-sweep-keyed");
    report::create(target, &keyed, report::PARTITIONS).await?;
    let most = CONCURRENCY.iter().map(|c| c.1).max().unwrap_or(1) * sizes.sequential_slow;
    report::fill(brokers, &keyed, most, 100, Spread::ByKey)?;
    for (n, share) in CONCURRENCY {
        planned.push((
            2,
            point(
                format!("{n}"),
                report::PARTITIONS,
                100,
                n,
                share * sizes.sequential_slow,
            ),
            Job::Slow {
                topic: keyed.clone(),
                n,
            },
        ));
    }
    let sink = unique("bench-sweep-sink");
    report::create(target, &sink, report::PARTITIONS).await?;
    planned.push((
        3,
        point(
            "publish_async".into(),
            report::PARTITIONS,
            100,
            1,
            sizes.publish,
        ),
        Job::Publish { topic: sink },
    ));
    let mut planned: Vec<Planned> = planned
        .into_iter()
        .map(|(axis, point, job)| Planned {
            axis,
            point,
            job,
            runs: BTreeMap::new(),
        })
        .collect();
    let real = target.mock().is_none();
    let mut go = go;
    let mut go_peer = None;
    let total = planned.len();
    for round in 0..sizes.rounds {
        for (i, p) in planned.iter_mut().enumerate() {
            bar.set_message(format!(
                "sweep round {}/{}, point {}/{total}",
                round + 1,
                sizes.rounds,
                i + 1
            ));
            let mut turns = vec![Who::Ours];
            if !matches!(p.job, Job::Slow { .. }) {
                turns.push(Who::Raw);
            }
            if go.is_some() {
                turns.push(Who::Go);
            }
            turns.retain(|w| match (w, side) {
                (Who::Raw, Side::Ours) | (Who::Ours, Side::Baseline) => false,
                (Who::Go, s) => s == Side::Both,
                _ => true,
            });
            let len = turns.len().max(1);
            turns.rotate_left((round + i) % len);
            for who in turns {
                let (rate, cpu) = match (who, go) {
                    (Who::Go, Some(peer)) => {
                        match run_go(peer, brokers, &p.job, p.point.messages) {
                            Ok(run) => {
                                go_peer.get_or_insert_with(|| run.versions());
                                (run.msgs_per_sec(), run.cpu_secs())
                            }
                            Err(e) => {
                                // A failing peer costs its own figures only.
                                eprintln!(
                                    "warning: Go xkafka sweep on {}: {e}; left out",
                                    target.name
                                );
                                go = None;
                                continue;
                            }
                        }
                    }
                    (Who::Go, None) => continue,
                    (who, _) => {
                        let before = usage::self_cpu_secs();
                        let rate = run_rust(who, brokers, &p.job, p.point.messages).await?;
                        (rate, usage::self_cpu_secs() - before)
                    }
                };
                let entry = p.runs.entry(who.key()).or_default();
                entry.0.push(rate);
                entry.1.push(cpu);
            }
        }
    }
    let mut figures = Figures {
        rounds: sizes.rounds,
        go_peer,
        ..Figures::default()
    };
    for p in planned {
        let mut point = p.point;
        for (who, (rates, cpus)) in p.runs {
            // Go stopped after a failure: only its points with every round.
            if rates.len() < sizes.rounds {
                continue;
            }
            let cpu = real.then(|| (median(&cpus) * 100.0).round() / 100.0);
            point.sides.insert(
                who.to_owned(),
                Figure {
                    msgs_per_sec: median(&rates),
                    runs: rates,
                    cpu_secs: cpu,
                    cpu_runs: if real { cpus } else { Vec::new() },
                    cpu_per_million_secs: cpu.map(|c| c / point.messages as f64 * 1e6),
                    over_n1: None,
                },
            );
        }
        match p.axis {
            0 => figures.partitions.push(point),
            1 => figures.sizes.push(point),
            2 => figures.concurrency.push(point),
            _ => figures.publish_async.push(point),
        }
    }
    // Each side relative to its own N = 1.
    let first: BTreeMap<String, f64> = figures
        .concurrency
        .first()
        .map(|p| {
            p.sides
                .iter()
                .map(|(k, f)| (k.clone(), f.msgs_per_sec))
                .collect()
        })
        .unwrap_or_default();
    for p in &mut figures.concurrency {
        for (who, f) in &mut p.sides {
            f.over_n1 = first.get(who).map(|n1| f.msgs_per_sec / n1);
        }
    }
    figures.secs = started.elapsed().as_secs_f64();
    Ok(figures)
}

async fn run_rust(who: Who, brokers: &str, job: &Job, messages: u64) -> BoxResult<f64> {
    use xkafka::Order;
    match (who, job) {
        (Who::Ours, Job::Consume { topic }) => {
            ours::consume(
                brokers,
                topic,
                messages,
                ours::Handler::Noop,
                1,
                Order::PerPartition,
            )
            .await
        }
        (Who::Raw, Job::Consume { topic }) => {
            baseline::consume(brokers, topic, messages, baseline::Work::CopyAndStore)
        }
        (Who::Ours, Job::Slow { topic, n }) => {
            ours::consume(
                brokers,
                topic,
                messages,
                ours::Handler::Sleep1ms,
                *n,
                Order::PerKey,
            )
            .await
        }
        (Who::Ours, Job::Publish { topic }) => ours::publish_async(brokers, topic, messages).await,
        (Who::Raw, Job::Publish { topic }) => baseline::publish_async(brokers, topic, messages),
        (who, _) => Err(format!("no {who:?} side for this sweep point").into()),
    }
}

fn run_go(peer: &peers::GoPeer, brokers: &str, job: &Job, messages: u64) -> BoxResult<GoRun> {
    match job {
        Job::Consume { topic } => peer.run_scenario("consume_seq", brokers, topic, messages, &[]),
        Job::Slow { topic, n: 1 } => {
            peer.run_scenario("consume_seq_1ms", brokers, topic, messages, &[])
        }
        Job::Slow { topic, n } => peer.run_scenario(
            "consume_conc_1ms",
            brokers,
            topic,
            messages,
            &["-concurrency", &n.to_string()],
        ),
        Job::Publish { topic } => peer.run_scenario("publish_async", brokers, topic, messages, &[]),
    }
}
