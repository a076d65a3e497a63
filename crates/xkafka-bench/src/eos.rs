//! Exactly-once consume-transform-produce: a prefilled input topic, each
//! input turned into one output message (its value uppercased, same key),
//! measured until every input's output is committed.
//!
//! Variants, all on the same input, the same broker, the same run:
//! - ours, transactional ([`ConsumerBuilder::transactional`](xkafka::ConsumerBuilder::transactional)),
//!   one run per commit interval;
//! - the raw rdkafka transactional loop at the same intervals (`BaseConsumer`
//!   and a transactional `ThreadedProducer`: begin, produce per message, every
//!   interval `send_offsets_to_transaction` + `commit_transaction`);
//! - ours and the raw loop at-least-once: auto commit every
//!   [`ALO_COMMIT_INTERVAL_MS`](crate::transform::ALO_COMMIT_INTERVAL_MS), a plain idempotent producer, the offset stored
//!   once the output is queued.
//!
//! A transaction ends only on time (both sides): `interval` after its first
//! message. Every run ends when [`Watch`](crate::transform::Watch) sees the group's committed offsets
//! at the input's end offsets and every output acknowledged, so a
//! transaction still open, or offsets not committed yet, count against the
//! run. The clock starts at the first input handled (group join and
//! `init_transactions` are not counted).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::ClientConfig;

use crate::figures::Comparison;
use crate::topics::{self, PARTITIONS};
use crate::transform::{Job, Mode, Outcome};
use crate::vocab::{median, unique, BoxResult, Side, Sizes, Target};
use crate::{baseline, ours};

/// The transaction intervals measured by default, in milliseconds.
pub(crate) const INTERVALS_MS: [u64; 3] = [10, 100, 1_000];

/// What the comparison runs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Plan {
    /// Transaction intervals, ms.
    pub(crate) intervals: Vec<u64>,
    /// The raw transactional loop waits for every acknowledgement before
    /// `commit_transaction` (an experiment; see `--eos-raw-drain`).
    pub(crate) raw_drain: bool,
    /// The at-least-once runs' `auto.commit.interval.ms`.
    pub(crate) alo_commit_interval_ms: u64,
}

/// The topics of the comparison: `input` prefilled, `output` shared by
/// every run (nobody reads it).
pub(crate) struct Topics {
    input: String,
    output: String,
    ends: Vec<i64>,
}

/// Creates and fills the input (round robin over the partitions, 1,000
/// keys, 100-byte values) and creates the output.
pub(crate) async fn prepare(target: &Target, sizes: &Sizes) -> BoxResult<Topics> {
    let input = unique("bench-eos-in");
    let output = unique("bench-eos-out");
    topics::create(target, &input, PARTITIONS).await?;
    topics::create(target, &output, PARTITIONS).await?;
    topics::fill(
        &target.brokers,
        &input,
        sizes.eos,
        100,
        topics::Spread::Even,
    )?;
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &target.brokers)
        .create()?;
    let ends = (0..PARTITIONS)
        .map(|p| {
            client
                .fetch_watermarks(&input, p, Duration::from_secs(10))
                .map(|(_, high)| high)
        })
        .collect::<Result<Vec<i64>, _>>()?;
    if ends.iter().sum::<i64>() != sizes.eos as i64 {
        return Err(format!("{input} holds {ends:?}, not {} messages", sizes.eos).into());
    }
    Ok(Topics {
        input,
        output,
        ends,
    })
}

/// One variant of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Variant {
    ours: bool,
    mode: Mode,
}

impl Variant {
    fn name(&self) -> String {
        let side = if self.ours { "ours" } else { "raw" };
        match self.mode {
            Mode::Transactional(i) => format!("{side}_txn_{}ms", i.as_millis()),
            Mode::AtLeastOnce => format!("{side}_alo"),
        }
    }
}

/// Where variant `name` (as in [`Figures`]' keys) goes in tables and
/// charts: by interval (at-least-once last), ours before raw.
pub(crate) fn order_key(name: &str) -> (u64, bool, String) {
    let interval = name
        .split("_txn_")
        .nth(1)
        .and_then(|ms| ms.trim_end_matches("ms").parse().ok())
        .unwrap_or(u64::MAX);
    (interval, !name.starts_with("ours"), name.to_owned())
}

/// The medians of one variant.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Figures {
    /// Input consumed, msg/s (median).
    pub(crate) consumed: f64,
    /// Output committed, msg/s (median).
    pub(crate) committed: f64,
    /// Last input → everything committed, ms (median).
    pub(crate) tail_ms: f64,
    /// Every run's input consumed, msg/s.
    pub(crate) consumed_runs: Vec<f64>,
    /// Every run's output committed, msg/s.
    pub(crate) committed_runs: Vec<f64>,
    /// Every run's tail, ms.
    pub(crate) tail_runs: Vec<f64>,
}

/// Runs every variant `sizes.rounds` times, alternating: ours and the raw
/// loop at the same setting run next to each other, and every other round
/// goes through the list backwards (so each pair also alternates who goes
/// first). Returns the comparisons (committed throughput) and every
/// variant's figures.
pub(crate) async fn run(
    target: &Target,
    sizes: &Sizes,
    side: Side,
    plan: &Plan,
) -> BoxResult<(Vec<Comparison>, BTreeMap<String, Figures>)> {
    let topics = prepare(target, sizes).await?;
    let job = Job {
        brokers: &target.brokers,
        input: &topics.input,
        output: &topics.output,
        messages: sizes.eos,
        ends: &topics.ends,
        raw_drain: plan.raw_drain,
    };
    let intervals = plan.intervals.as_slice();
    let mut variants = Vec::new();
    for mode in intervals
        .iter()
        .map(|&ms| Mode::Transactional(Duration::from_millis(ms)))
        .chain([Mode::AtLeastOnce])
    {
        for ours in [true, false] {
            let wanted = match side {
                Side::Both => true,
                Side::Ours => ours,
                Side::Baseline => !ours,
            };
            if wanted {
                variants.push(Variant { ours, mode });
            }
        }
    }
    let mut runs: BTreeMap<String, Vec<Outcome>> = BTreeMap::new();
    for round in 0..sizes.rounds {
        let mut order = variants.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for v in order {
            let outcome = if v.ours {
                ours::transform(&job, v.mode).await
            } else {
                baseline::transform(&job, v.mode)
            };
            let outcome = outcome.map_err(|e| format!("{}: {e}", v.name()))?;
            runs.entry(v.name()).or_default().push(outcome);
        }
    }
    let figures: BTreeMap<String, Figures> = runs
        .into_iter()
        .map(|(name, outcomes)| {
            let pick = |f: fn(&Outcome) -> f64| outcomes.iter().map(f).collect::<Vec<f64>>();
            let (consumed_runs, committed_runs, tail_runs) = (
                pick(|o| o.consumed),
                pick(|o| o.committed),
                pick(|o| o.tail_ms),
            );
            let figures = Figures {
                consumed: median(&consumed_runs),
                committed: median(&committed_runs),
                tail_ms: median(&tail_runs),
                consumed_runs,
                committed_runs,
                tail_runs,
            };
            (name, figures)
        })
        .collect();
    Ok((comparisons(&figures, plan), figures))
}

/// `eos_txn_<T>ms`: ours/raw transactional; `eos_alo`: ours/raw
/// at-least-once; `eos_vs_alo_<T>ms`: ours transactional / ours
/// at-least-once. All on committed throughput.
fn comparisons(figures: &BTreeMap<String, Figures>, plan: &Plan) -> Vec<Comparison> {
    let pair = |name: String, a: &str, b: &str, what: &str| -> Option<Comparison> {
        let (x, y) = (figures.get(a)?, figures.get(b)?);
        Some(Comparison {
            name,
            unit: "msg/s".into(),
            ours: x.committed,
            baseline: y.committed,
            ratio: x.committed / y.committed,
            ours_runs: x.committed_runs.clone(),
            baseline_runs: y.committed_runs.clone(),
            ours_cpu_secs: Vec::new(),
            baseline_cpu_secs: Vec::new(),
            cpu_ratio: None,
            limit: None,
            limit_runs: Vec::new(),
            limit_cpu_secs: Vec::new(),
            ratio_vs_limit: None,
            cpu_vs_limit: None,
            ceiling: None,
            ceiling_runs: Vec::new(),
            peak_rss_kib: Default::default(),
            note: format!(
                "{what}; consumed {:.0} / {:.0} msg/s, tail {:.0} / {:.0} ms",
                x.consumed, y.consumed, x.tail_ms, y.tail_ms
            ),
        })
    };
    let mut out = Vec::new();
    let raw = if plan.raw_drain {
        "committed, ours/raw (raw drained before each commit: --eos-raw-drain)"
    } else {
        "committed, ours/raw"
    };
    for &ms in &plan.intervals {
        out.extend(pair(
            format!("eos_txn_{ms}ms"),
            &format!("ours_txn_{ms}ms"),
            &format!("raw_txn_{ms}ms"),
            raw,
        ));
    }
    out.extend(pair(
        "eos_alo".into(),
        "ours_alo",
        "raw_alo",
        "committed, ours/raw at-least-once",
    ));
    for &ms in &plan.intervals {
        out.extend(pair(
            format!("eos_vs_alo_{ms}ms"),
            &format!("ours_txn_{ms}ms"),
            "ours_alo",
            "committed, ours exactly-once / ours at-least-once (baseline = ours_alo)",
        ));
    }
    out
}
