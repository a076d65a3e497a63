//! The shared vocabulary every measuring module speaks: which side runs, the
//! sizes of a mode, the broker measured on, the payload and producer settings
//! both sides use, and the few helpers (unique names, medians, a bounded
//! wait) they all need. It imports nothing of this crate: every other module
//! points down to it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xkafka::mock::EmbeddedCluster;

/// What every fallible step of a run returns.
pub(crate) type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

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
    pub(crate) fn new(quick: bool, rounds: Option<usize>) -> Self {
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
    pub(crate) fn for_target(self, target: &Target) -> Sizes {
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
    pub(crate) mock: Option<EmbeddedCluster>,
}

impl Target {
    /// The embedded cluster, when this target is one.
    pub(crate) fn mock(&self) -> Option<&EmbeddedCluster> {
        self.mock.as_ref()
    }
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

/// Bounded wait used while a run is in progress.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Resolves when `done()` holds (or after the run timeout).
pub(crate) async fn until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The settings both sides publish with.
pub(crate) fn producer_settings() -> [(&'static str, &'static str); 3] {
    [
        ("linger.ms", "5"),
        ("acks", "all"),
        ("enable.idempotence", "true"),
    ]
}

/// Microseconds since the epoch: the send stamp the latency runs carry.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Publishes `rate` messages a second for the configured time, each stamped
/// with its send time, whatever the consumer does (open loop).
pub(crate) async fn open_loop<F, Fut>(sizes: &Sizes, mut publish: F) -> BoxResult<()>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let total = sizes.latency_rate * sizes.latency_secs;
    let interval = Duration::from_secs_f64(1.0 / sizes.latency_rate as f64);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        publish(now_micros()).await?;
    }
    Ok(())
}
