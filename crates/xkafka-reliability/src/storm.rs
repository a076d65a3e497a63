//! The rebalance storm: several workers of one group, one of them killed
//! (SIGKILL) or restarted (SIGTERM) every few seconds while messages flow.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xkafka::BoxError;

use crate::cluster::{self, Input};
use crate::ledger::{self, Tally};
use crate::process::{self, Worker, WorkerSpec};
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
    /// Seconds from the end of the storm until every message was handled.
    pub drain_seconds: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl StormReport {
    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "storm workers={} partitions={} kills={} restarts={} messages={} handled={} lost={} \
             duplicated={} drain={:.1}s {:.0}s",
            self.workers,
            self.partitions,
            self.kills,
            self.restarts,
            self.tally.expected,
            self.tally.handled,
            self.tally.lost,
            self.tally.duplicated,
            self.drain_seconds,
            self.seconds,
        )
    }
}

/// Runs the storm and counts.
pub async fn run(plan: &StormPlan) -> Result<StormReport, BoxError> {
    let started = Instant::now();
    let name = cluster::unique("storm");
    let dir = process::run_dir(&plan.dir, &name)?;
    cluster::create_topic(&plan.brokers, &name, plan.partitions).await?;
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
    };
    let input = Input::new(&plan.brokers, &name)?;
    let stop_feeding = Arc::new(AtomicBool::new(false));
    let feeder = {
        let input = input.clone();
        let stop = stop_feeding.clone();
        let rate = plan.rate;
        tokio::spawn(async move { input.feed(rate, stop).await })
    };
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
    stop_feeding.store(true, Ordering::Relaxed);
    feeder.await??;
    let acked = input.finish().await;
    let storm_over = Instant::now();
    let deadline = storm_over + Duration::from_secs(180);
    loop {
        let recorded: HashSet<u64> = ledger::read(&ledger::files(&dir)?)?.into_iter().collect();
        let missing = acked.ids.iter().filter(|id| !recorded.contains(id)).count();
        let lag = cluster::lag_async(&plan.brokers, &name, &name, plan.partitions).await?;
        if missing == 0 && lag == 0 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("[storm] drain timed out: {missing} missing, lag {lag}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_seconds = storm_over.elapsed().as_secs_f64();
    for worker in workers {
        worker.terminate(Duration::from_secs(30)).await?;
    }
    let recorded = ledger::read(&ledger::files(&dir)?)?;
    let report = StormReport {
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
