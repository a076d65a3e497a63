//! The memory soak: a slow worker flooded with messages faster than it can
//! handle them; its resident memory is sampled every second. Pause-based
//! backpressure must keep it flat: the backlog stays in the broker.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xkafka::BoxError;

use crate::cluster::{self, Feeder, Input};
use crate::ledger;
use crate::process::WorkerSpec;
use crate::worker::Mode;

/// One soak.
#[derive(Clone, Debug)]
pub struct SoakPlan {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// How long to flood.
    pub duration: Duration,
    /// Samples before this are the warm-up (librdkafka's fetch buffers and
    /// the allocator's arenas fill), not counted as growth.
    pub warm_up: Duration,
    /// Messages per second published.
    pub rate: u64,
    /// Partitions of the input topic.
    pub partitions: i32,
    /// Simulated work per message, ms (the worker runs `Concurrency(16)`).
    pub work_ms: u64,
    /// The worker's in-flight bound, in all.
    pub max_in_flight: usize,
    /// The worker's in-flight bound per partition (the library's default).
    /// Below the total bound over the partitions, a partition that filled the
    /// total would pause the others until it drained by half.
    pub max_in_flight_per_partition: usize,
    /// The worker's `session.timeout.ms`.
    pub session_timeout_ms: u32,
    /// librdkafka's `fetch.max.bytes`, also its prefetch queue bound
    /// (`queued.max.messages.kbytes`).
    pub fetch_max_bytes: u64,
    /// The `xkafka-chaos` binary.
    pub exe: PathBuf,
    /// Base directory for the ledger and log.
    pub dir: PathBuf,
}

impl SoakPlan {
    /// The documented soak: 10 minutes, 2,000 msg/s into a worker that can
    /// handle ~800 msg/s.
    pub fn new(brokers: impl Into<String>, exe: PathBuf, dir: PathBuf) -> Self {
        SoakPlan {
            brokers: brokers.into(),
            duration: Duration::from_secs(600),
            warm_up: Duration::from_secs(20),
            rate: 2_000,
            partitions: 6,
            work_ms: 20,
            max_in_flight: 30_000,
            max_in_flight_per_partition: 5_000,
            fetch_max_bytes: 4 << 20,
            session_timeout_ms: 10_000,
            exe,
            dir,
        }
    }
}

/// What a soak measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SoakReport {
    /// Messages published.
    pub published: u64,
    /// Messages the worker handled.
    pub handled: u64,
    /// RSS when the warm-up ended, KiB.
    pub start_rss_kib: u64,
    /// RSS at the end, KiB.
    pub end_rss_kib: u64,
    /// Highest RSS after the warm-up, KiB.
    pub max_rss_kib: u64,
    /// Median RSS of the first 10 samples after the warm-up, KiB.
    pub start_median_kib: u64,
    /// Median RSS of the last 10 samples, KiB.
    pub end_median_kib: u64,
    /// One sample per second: (seconds, KiB).
    pub samples: Vec<(u64, u64)>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl SoakReport {
    /// One summary line.
    pub fn line(&self) -> String {
        format!(
            "soak published={} handled={} backlog={} rss_start={:.1}MiB rss_end={:.1}MiB \
             rss_max={:.1}MiB (medians {:.1} -> {:.1} MiB) {:.0}s",
            self.published,
            self.handled,
            self.published.saturating_sub(self.handled),
            self.start_rss_kib as f64 / 1024.0,
            self.end_rss_kib as f64 / 1024.0,
            self.max_rss_kib as f64 / 1024.0,
            self.start_median_kib as f64 / 1024.0,
            self.end_median_kib as f64 / 1024.0,
            self.seconds,
        )
    }
}

/// Floods a slow worker and samples its memory.
pub async fn run(plan: &SoakPlan) -> Result<SoakReport, BoxError> {
    let started = Instant::now();
    let (name, dir) = cluster::prepare(&plan.brokers, "soak", plan.partitions, &plan.dir).await?;
    let spec = WorkerSpec {
        exe: plan.exe.clone(),
        brokers: plan.brokers.clone(),
        topic: name.clone(),
        group: name.clone(),
        mode: Mode::Concurrent,
        work_ms: plan.work_ms,
        session_timeout_ms: plan.session_timeout_ms,
        max_in_flight: plan.max_in_flight,
        dir: dir.clone(),
        max_in_flight_per_partition: Some(plan.max_in_flight_per_partition),
        configs: vec![
            // librdkafka's own buffers, bounded like ours: one fetch
            // response (default up to 50 MiB, which a broker with a backlog
            // fills) and the prefetch queue (default 64 MiB).
            ("fetch.max.bytes".into(), plan.fetch_max_bytes.to_string()),
            (
                "queued.max.messages.kbytes".into(),
                (plan.fetch_max_bytes / 1024).to_string(),
            ),
        ],
        output: None,
        transaction_timeout_ms: None,
        transaction_max_messages: None,
    };
    let input = Input::new(&plan.brokers, &name)?;
    let feeder = Feeder::start(&input, plan.rate);
    let mut worker = spec.spawn("worker", plan.work_ms)?;
    let mut samples = Vec::new();
    let mut next = Instant::now();
    while started.elapsed() < plan.duration {
        next += Duration::from_secs(1);
        tokio::time::sleep_until(next.into()).await;
        if let Some(status) = worker.exited()? {
            return Err(format!("the soak worker died: {status}").into());
        }
        let rss = worker.rss_kib().ok_or("cannot read the worker's RSS")?;
        let at = started.elapsed().as_secs();
        samples.push((at, rss));
        if at % 10 == 0 {
            eprintln!(
                "[soak] {at:>4}s rss {:.1} MiB, published {}, handled ~{}",
                rss as f64 / 1024.0,
                input.published(),
                ledger::size(std::slice::from_ref(&worker.ledger)) / 6,
            );
        }
    }
    feeder.stop().await?;
    let ledger_file = worker.ledger.clone();
    worker.terminate(Duration::from_secs(30)).await?;
    let acked = input.finish().await;
    let after_warm_up: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at >= plan.warm_up.as_secs())
        .map(|(_, rss)| *rss)
        .collect();
    let report = SoakReport {
        published: acked.published,
        handled: ledger::read(&[ledger_file])?.len() as u64,
        start_rss_kib: after_warm_up.first().copied().unwrap_or_default(),
        end_rss_kib: after_warm_up.last().copied().unwrap_or_default(),
        max_rss_kib: after_warm_up.iter().copied().max().unwrap_or_default(),
        start_median_kib: median(after_warm_up.iter().take(10).copied()),
        end_median_kib: median(after_warm_up.iter().rev().take(10).copied()),
        samples,
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!("[soak] {}", report.line());
    Ok(report)
}

fn median(samples: impl Iterator<Item = u64>) -> u64 {
    let mut samples: Vec<u64> = samples.collect();
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}
