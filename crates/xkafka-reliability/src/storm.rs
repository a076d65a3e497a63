//! The rebalance storm: several workers of one group, one of them killed
//! (SIGKILL) or restarted (SIGTERM) every few seconds while messages flow.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use xkafka::BoxError;

use crate::cluster::{self, Feeder, Input};
use crate::ledger::{self, Tally};
use crate::process::{Worker, WorkerSpec};
use crate::worker::Mode;

/// One storm.
#[derive(Clone, Debug)]
pub struct StormPlan {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Worker processes in the group.
    pub workers: usize,
    /// Partitions of the input topic.
    pub partitions: i32,
    /// How long workers are killed and restarted.
    pub duration: Duration,
    /// Time between two kills or restarts (uniformly drawn).
    pub every: (Duration, Duration),
    /// Of the disruptions, the share that are SIGKILLs (the rest are
    /// graceful SIGTERM restarts).
    pub kill_share: f64,
    /// Messages per second published during the storm.
    pub rate: u64,
    /// How the workers consume.
    pub mode: Mode,
    /// Simulated work per message, ms.
    pub work_ms: u64,
    /// Seeds victims, actions and intervals.
    pub seed: u64,
    /// The workers' `max.poll.interval.ms` (the rebalance timeout); `None`:
    /// librdkafka's default (300 s).
    pub max_poll_interval_ms: Option<u32>,
    /// The workers' `group.protocol`: `classic` (eager `range` assignment)
    /// or `consumer` (KIP-848: the broker assigns, incrementally).
    pub group_protocol: String,
    /// The `xkafka-chaos` binary.
    pub exe: PathBuf,
    /// Base directory for ledgers and logs.
    pub dir: PathBuf,
}

impl StormPlan {
    /// The documented storm: 3 workers, 12 partitions, a disruption every
    /// 2–5 s for a minute, per-key `Concurrency(16)`.
    pub fn new(brokers: impl Into<String>, exe: PathBuf, dir: PathBuf) -> Self {
        StormPlan {
            brokers: brokers.into(),
            workers: 3,
            partitions: 12,
            duration: Duration::from_secs(60),
            every: (Duration::from_secs(2), Duration::from_secs(5)),
            kill_share: 0.7,
            rate: 500,
            mode: Mode::PerKey,
            work_ms: 2,
            seed: 7,
            max_poll_interval_ms: None,
            group_protocol: "classic".into(),
            exe,
            dir,
        }
    }
}

/// What a storm measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StormReport {
    /// Worker processes in the group.
    pub workers: usize,
    /// Partitions.
    pub partitions: i32,
    /// SIGKILLs.
    pub kills: u32,
    /// Graceful restarts.
    pub restarts: u32,
    /// The ledger against the acknowledged input.
    pub tally: Tally,
    /// Seconds from the end of the storm until every message was handled
    /// (or the drain gave up).
    pub drain_seconds: f64,
    /// Acknowledged messages the surviving workers had not handled when the
    /// drain gave up (then handed to a fresh worker).
    pub stalled: u64,
    /// Partitions with uncommitted messages at that moment: (partition,
    /// committed, end).
    pub stalled_partitions: Vec<(i32, i64, i64)>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl StormReport {
    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "storm workers={} partitions={} kills={} restarts={} messages={} handled={} lost={} \
             duplicated={} drain={:.1}s stalled={} {:.0}s",
            self.workers,
            self.partitions,
            self.kills,
            self.restarts,
            self.tally.expected,
            self.tally.handled,
            self.tally.lost,
            self.tally.duplicated,
            self.drain_seconds,
            self.stalled,
            self.seconds,
        )
    }
}

/// Runs the storm and counts.
pub async fn run(plan: &StormPlan) -> Result<StormReport, BoxError> {
    let started = Instant::now();
    let (name, dir) = cluster::prepare(&plan.brokers, "storm", plan.partitions, &plan.dir).await?;
    let spec = WorkerSpec {
        exe: plan.exe.clone(),
        brokers: plan.brokers.clone(),
        topic: name.clone(),
        group: name.clone(),
        mode: plan.mode,
        work_ms: plan.work_ms,
        session_timeout_ms: 6_000,
        max_in_flight: 500,
        dir: dir.clone(),
        max_in_flight_per_partition: None,
        // librdkafka's default rebalance timeout (300 s) unless asked: Kafka
        // drops a killed member at its session timeout even while a
        // rebalance waits for it. (Tansu did not, and the storm ran with
        // 20 s on it.)
        configs: plan
            .max_poll_interval_ms
            .map(|ms| ("max.poll.interval.ms".into(), ms.to_string()))
            .into_iter()
            .chain([("group.protocol".into(), plan.group_protocol.clone())])
            .collect(),
        output: None,
        transaction_timeout_ms: None,
        transaction_max_messages: None,
    };
    let input = Input::new(&plan.brokers, &name)?;
    let feeder = Feeder::start(&input, plan.rate);
    let mut incarnation = 0u32;
    let mut spawn = |slot: usize| {
        incarnation += 1;
        spec.spawn(&format!("w{slot}-{incarnation:03}"), plan.work_ms)
    };
    let mut workers: Vec<Worker> = Vec::new();
    for slot in 0..plan.workers {
        workers.push(spawn(slot)?);
    }
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let (kills, restarts) = (&mut 0u32, &mut 0u32);
    let storm_ends = Instant::now() + plan.duration;
    while Instant::now() < storm_ends {
        let wait = rng.u64(plan.every.0.as_millis() as u64..=plan.every.1.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for (slot, worker) in workers.iter_mut().enumerate() {
            if let Some(status) = worker.exited()? {
                return Err(format!("worker {slot} ({}) died: {status}", worker.name).into());
            }
        }
        let slot = rng.usize(..workers.len());
        let replacement = spawn(slot)?;
        let victim = std::mem::replace(&mut workers[slot], replacement);
        let action = if rng.f64() < plan.kill_share {
            *kills += 1;
            victim.kill().await?;
            "killed"
        } else {
            *restarts += 1;
            victim.terminate(Duration::from_secs(30)).await?;
            "restarted"
        };
        eprintln!(
            "[storm] {action} worker {slot}; published {}, acked {}, {:.0}s",
            input.published(),
            input.acked(),
            started.elapsed().as_secs_f64()
        );
    }
    feeder.stop().await?;
    let acked = input.finish().await;
    let storm_over = Instant::now();
    let missing = drain(plan, &dir, &name, &acked.ids, Duration::from_secs(90)).await?;
    let drain_seconds = storm_over.elapsed().as_secs_f64();
    for worker in workers {
        worker.terminate(Duration::from_secs(30)).await?;
    }
    // Messages the surviving workers did not reach: their partitions were
    // still assigned to killed members (see RELIABILITY.md). A new worker
    // alone in the group must get them — if it does, they were stalled, not
    // lost: their offsets were never committed.
    let mut stalled_partitions = Vec::new();
    if missing > 0 {
        let (b, g, t, n) = (
            plan.brokers.clone(),
            name.clone(),
            name.clone(),
            plan.partitions,
        );
        stalled_partitions = tokio::task::spawn_blocking(move || cluster::positions(&b, &g, &t, n))
            .await??
            .into_iter()
            .filter(|(_, committed, end)| committed < end)
            .collect();
        eprintln!("[storm] {missing} messages not reached; uncommitted: {stalled_partitions:?}; one fresh worker drains");
        let recovery = spec.spawn("recovery", 0)?;
        drain(plan, &dir, &name, &acked.ids, Duration::from_secs(120)).await?;
        recovery.terminate(Duration::from_secs(30)).await?;
    }
    let recorded = ledger::read(&ledger::files(&dir)?)?;
    let report = StormReport {
        stalled: missing,
        stalled_partitions,
        workers: plan.workers,
        partitions: plan.partitions,
        kills: *kills,
        restarts: *restarts,
        tally: Tally::new(&acked.ids, &recorded),
        drain_seconds,
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!("[storm] {}", report.line());
    Ok(report)
}

/// Waits until every acknowledged id is in the ledgers and the group has
/// committed everything, or `limit`; returns how many ids are missing.
async fn drain(
    plan: &StormPlan,
    dir: &std::path::Path,
    name: &str,
    acked: &HashSet<u64>,
    limit: Duration,
) -> Result<u64, BoxError> {
    let deadline = Instant::now() + limit;
    loop {
        let recorded: HashSet<u64> = ledger::read(&ledger::files(dir)?)?.into_iter().collect();
        let missing = acked.iter().filter(|id| !recorded.contains(id)).count() as u64;
        let lag = cluster::lag_async(&plan.brokers, name, name, plan.partitions).await?;
        if missing == 0 && lag == 0 {
            return Ok(0);
        }
        if Instant::now() > deadline {
            eprintln!("[storm] drain gave up after {limit:?}: {missing} missing, lag {lag}");
            return Ok(missing);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
