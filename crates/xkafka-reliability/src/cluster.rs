//! What the harnesses need from the broker: a topic, a stream of numbered
//! messages with their acknowledgements, and the group's lag.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::{BoxError, Message, Producer};

/// A name no earlier run used.
pub fn unique(prefix: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{prefix}-{ms}-{}", std::process::id())
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), BoxError> {
    xkafka::admin::ensure_topics(
        brokers,
        &[(topic, partitions)],
        &xkafka::Config::new(),
        Duration::from_secs(15),
    )
    .await?;
    Ok(())
}

/// Creates `topic` with `partitions` partitions and the broker's default
/// replication factor (`default.replication.factor`: 3 on the failover
/// cluster) — what [`create_topic`] does; the name says why the failover
/// tests need it.
pub async fn create_replicated_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Result<(), BoxError> {
    create_topic(brokers, topic, partitions).await
}

/// Publishes numbered messages (value = the id, key = `k{id % 1000}`) with
/// `publish_async` and keeps the ids the broker acknowledged.
#[derive(Clone)]
pub struct Input {
    producer: Producer,
    topic: String,
    next: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<u64>>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    failures: Arc<Mutex<Vec<(u64, String)>>>,
    failed: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

/// One acknowledgement: which id, where, when the delivery report arrived.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// The message's id.
    pub id: u64,
    /// The partition it landed in.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// When its delivery report arrived.
    pub at: Instant,
}

impl Input {
    /// A producer for `topic` (acks=all, idempotent: xkafka's defaults).
    pub fn new(brokers: &str, topic: &str) -> Result<Self, BoxError> {
        Self::with_config(brokers, topic, &[])
    }

    /// [`Input::new`] with extra producer properties (e.g. a short
    /// `message.timeout.ms`).
    pub fn with_config(
        brokers: &str,
        topic: &str,
        config: &[(&str, &str)],
    ) -> Result<Self, BoxError> {
        let errors = Arc::new(AtomicU64::new(0));
        let counter = errors.clone();
        let producer = Producer::builder("xkafka-chaos-input")
            .brokers([brokers])
            .config("linger.ms", "5")
            .configs(config.iter().copied())
            .error_handler(move |err| {
                counter.fetch_add(1, Ordering::Relaxed);
                eprintln!("input producer: {err}");
            })
            .build()?;
        Ok(Input {
            producer,
            topic: topic.to_owned(),
            next: Arc::default(),
            acked: Arc::default(),
            acks: Arc::default(),
            failures: Arc::default(),
            failed: Arc::default(),
            errors,
        })
    }

    /// Publishes the next `count` ids.
    pub async fn publish(&self, count: u64) -> Result<(), BoxError> {
        for _ in 0..count {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let message = Message::builder(self.topic.as_str())
                .key(format!("k{}", id % 1000))
                .value(id.to_string())
                .build();
            let acked = self.acked.clone();
            let acks = self.acks.clone();
            let failures = self.failures.clone();
            let failed = self.failed.clone();
            self.producer
                .publish_async_with(message, move |outcome| match outcome {
                    Ok(delivery) => {
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                        acks.lock().unwrap_or_else(|p| p.into_inner()).push(Ack {
                            id,
                            partition: delivery.partition,
                            offset: delivery.offset,
                            at: Instant::now(),
                        });
                    }
                    Err(err) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((id, err.to_string()));
                    }
                })
                .await?;
        }
        Ok(())
    }

    /// Publishes `rate` messages per second (in 20 ms steps) until `stop` is
    /// set.
    pub async fn feed(&self, rate: u64, stop: Arc<AtomicBool>) -> Result<(), BoxError> {
        let step = Duration::from_millis(20);
        let started = Instant::now();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_millis() as u64 * rate) / 1000;
            if due > sent {
                self.publish(due - sent).await?;
                sent = due;
            }
            tokio::time::sleep(step).await;
        }
        Ok(())
    }

    /// Waits until every message published so far was acknowledged or failed
    /// (the producer's close), and returns the acknowledged ids.
    pub async fn finish(&self) -> Acked {
        let report = self.producer.close().await;
        Acked {
            ids: self
                .acked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .copied()
                .collect(),
            published: self.next.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            undelivered_at_close: report.undelivered as u64,
            client_errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// Ids acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every acknowledgement so far, in arrival order.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Ids whose delivery failed so far, with the error.
    pub fn failures(&self) -> Vec<(u64, String)> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ids handed to the producer so far.
    pub fn published(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// [`Input::feed`] on a task of its own, until [`Feeder::stop`].
pub struct Feeder {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), BoxError>>,
}

impl Feeder {
    /// Starts publishing `rate` messages per second.
    pub fn start(input: &Input, rate: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let input = input.clone();
        let flag = stop.clone();
        let task = tokio::spawn(async move { input.feed(rate, flag).await });
        Feeder { stop, task }
    }

    /// Stops publishing; returns the first publish error, if any.
    pub async fn stop(self) -> Result<(), BoxError> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?
    }
}

/// A run's topic (also its group's name) and its directory for ledgers and
/// logs: `<base>/<name>`, fresh.
pub async fn prepare(
    brokers: &str,
    prefix: &str,
    partitions: i32,
    base: &std::path::Path,
) -> Result<(String, std::path::PathBuf), BoxError> {
    let name = unique(prefix);
    let dir = crate::process::run_dir(base, &name)?;
    create_topic(brokers, &name, partitions).await?;
    Ok((name, dir))
}

/// What the broker acknowledged, once the input producer closed.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The acknowledged ids.
    pub ids: HashSet<u64>,
    /// Ids handed to `publish_async`.
    pub published: u64,
    /// Ids whose delivery callback reported an error.
    pub failed: u64,
    /// Of those, purged at close because the broker had not acknowledged them.
    pub undelivered_at_close: u64,
    /// Client errors the producer's error handler saw.
    pub client_errors: u64,
}

/// Per partition: (partition, committed offset or the low watermark when
/// none, end offset). Blocking: call it from `spawn_blocking`.
pub fn positions(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i32, i64, i64)>, BoxError> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = client.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut positions = Vec::new();
    for p in 0..partitions {
        let (low, high) = client.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let at = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        positions.push((p, at, high));
    }
    Ok(positions)
}

/// Messages of `topic` the group has not committed yet (end offset minus
/// committed offset, summed over partitions). Blocking: call it from
/// `spawn_blocking`.
pub fn lag(brokers: &str, group: &str, topic: &str, partitions: i32) -> Result<i64, BoxError> {
    Ok(positions(brokers, group, topic, partitions)?
        .iter()
        .map(|(_, at, high)| (high - at).max(0))
        .sum())
}

/// [`lag`] on a blocking thread.
pub async fn lag_async(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<i64, BoxError> {
    let (b, g, t) = (brokers.to_owned(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || lag(&b, &g, &t, partitions)).await?
}

/// One record of an [`Input`] topic, read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key (`k{id % 1000}`).
    pub key: String,
    /// Its id (the value).
    pub id: u64,
}

/// Every record of `topic` from the start of each partition to its end
/// offset now, in partition then offset order. Blocking: call it from
/// `spawn_blocking`.
pub fn read_all(brokers: &str, topic: &str, partitions: i32) -> Result<Vec<Logged>, BoxError> {
    use xkafka::raw::rdkafka::Message as _;
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("read-all"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in 0..partitions {
        let (low, high) = client.fetch_watermarks(topic, p, Duration::from_secs(15))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
        ends.push(high);
    }
    client.assign(&tpl)?;
    let mut next: Vec<i64> = (0..partitions)
        .map(|p| {
            tpl.find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(0)
        })
        .collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        if Instant::now() > deadline {
            return Err(format!("{topic}: read up to {next:?} of {ends:?} within 60 s").into());
        }
        let Some(msg) = client.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        let p = msg.partition();
        next[p as usize] = msg.offset() + 1;
        let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
        let id = std::str::from_utf8(msg.payload().unwrap_or_default())
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{topic}[{p}]@{}: not an id", msg.offset()))?;
        out.push(Logged {
            partition: p,
            offset: msg.offset(),
            key,
            id,
        });
    }
    out.sort_by_key(|l| (l.partition, l.offset));
    Ok(out)
}
