//! `confluent-rust-peer`: the pure-Rust `confluent-kafka` client (no
//! librdkafka) measured beside xkafka by `crates/xkafka-bench`, on the same
//! broker, topics and settings. Raw client loops, no framework: each mirrors
//! the raw rdkafka baseline's loop (`crates/xkafka-bench/src/baseline.rs`).
//! One scenario per invocation; the result is one JSON line on stdout
//! (diagnostics go to stderr); a run that falls short exits non-zero.
//!
//! ```text
//! confluent-rust-peer --brokers 127.0.0.1:9192 --topic bench-100b-1-0 --scenario consume_seq --messages 600000
//! ```
//!
//! Scenarios:
//!
//! ```text
//! consume_seq     KafkaConsumer poll loop, each record taken (owned) and counted
//! consume_batch   the same loop counting each poll's records at once
//!                 (max.poll.records = --batch-size, 1,000)
//! publish_async   KafkaProducer::send with a completion callback per record,
//!                 counted as the callbacks run; send returns once the record
//!                 is in the accumulator, so many are in flight
//! publish_sync    send, then await the record's future, --in-flight (64) at once
//! ```
//!
//! Consumers are timed from message N/10 (the first tenth is a warm-up: the
//! group join and the first fetches) to the N-th; publish_async from the
//! first send (after one acknowledged warm-up message) to the N-th callback;
//! publish_sync from the first send to the last acknowledgement. The rate is
//! the timed messages over the time: N - N/10 for consumers, N - 1 for
//! publish_async, N for publish_sync, as the baseline's `Clock`.
//!
//! Producers use the bench's settings (linger.ms=5, acks=all,
//! enable.idempotence=true); consumers a fresh group (KIP-848,
//! `group.protocol=consumer`, the only protocol this client has) reading
//! from the earliest offset.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use confluent_kafka::common::serialization::{ByteArraySerializer, BytesDeserializer};
use confluent_kafka::common::Error as KafkaError;
use confluent_kafka::consumer::{Consumer, ConsumerConfig, KafkaConsumer};
use confluent_kafka::producer::{
    KafkaProducer, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
use futures_util::stream::{self, StreamExt};

type BoxResult<T> = Result<T, Box<dyn StdError>>;

/// The crate measured (pinned with `=` in Cargo.toml).
const CONFLUENT_KAFKA_VERSION: &str = "1.0.0";

/// Rounds bounded as the bench's `RUN_TIMEOUT`.
const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// What a run may take beyond `--timeout-secs`: closing the client.
const CLOSE_ALLOWANCE: Duration = Duration::from_secs(15);

/// The warm-up share of a consumer's messages (the bench's `WARM_UP_SHARE`).
const WARM_UP_SHARE: u64 = 10;

/// The settings every producer of the bench uses (`ours::producer_settings`).
const PRODUCER_SETTINGS: [(&str, &str); 3] = [
    ("linger.ms", "5"),
    ("acks", "all"),
    ("enable.idempotence", "true"),
];

struct Options {
    brokers: String,
    topic: String,
    scenario: String,
    messages: u64,
    group: String,
    batch_size: usize,
    in_flight: usize,
    value_size: usize,
    timeout: Duration,
    /// Extra settings of the consumers (`--consumer-config key=value`).
    consumer_config: Vec<(String, String)>,
    /// Extra settings of the producers (`--producer-config key=value`).
    producer_config: Vec<(String, String)>,
}

const USAGE: &str = "usage: confluent-rust-peer --topic T --scenario \
consume_seq|consume_batch|publish_async|publish_sync --messages N \
[--brokers 127.0.0.1:9192] [--group G] [--batch-size 1000] [--in-flight 64] \
[--value-size 100] [--timeout-secs 120] [--consumer-config k=v]... [--producer-config k=v]...";

impl Options {
    fn parse() -> BoxResult<Options> {
        let mut o = Options {
            brokers: "127.0.0.1:9192".into(),
            topic: String::new(),
            scenario: String::new(),
            messages: 0,
            group: String::new(),
            batch_size: 1000,
            in_flight: 64,
            value_size: 100,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            consumer_config: Vec::new(),
            producer_config: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?,
            };
            let key_value = |kv: &str| -> BoxResult<(String, String)> {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("want key=value, got {kv:?}"))?;
                Ok((k.to_owned(), v.to_owned()))
            };
            match flag.as_str() {
                "--brokers" => o.brokers = value,
                "--topic" => o.topic = value,
                "--scenario" => o.scenario = value,
                "--messages" => o.messages = value.parse()?,
                "--group" => o.group = value,
                "--batch-size" => o.batch_size = value.parse()?,
                "--in-flight" => o.in_flight = value.parse()?,
                "--value-size" => o.value_size = value.parse()?,
                "--timeout-secs" => o.timeout = Duration::from_secs(value.parse()?),
                "--consumer-config" => o.consumer_config.push(key_value(&value)?),
                "--producer-config" => o.producer_config.push(key_value(&value)?),
                other => return Err(format!("unknown flag {other}\n{USAGE}").into()),
            }
        }
        if o.topic.is_empty() || o.scenario.is_empty() || o.messages == 0 {
            return Err(
                format!("--topic, --scenario and --messages > 0 are required\n{USAGE}").into(),
            );
        }
        if o.in_flight == 0 || o.batch_size == 0 {
            return Err("--in-flight and --batch-size must be positive".into());
        }
        if o.group.is_empty() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            o.group = format!("confluent-rust-{}-{nanos}", std::process::id());
        }
        Ok(o)
    }
}

/// User and system CPU seconds of the whole process (getrusage
/// RUSAGE_SELF, microseconds); zeros if it fails, as the Go peer.
fn cpu_secs() -> (f64, f64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` through the pointer, which points
    // to a zeroed, writable `rusage` owned by this frame.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    // SAFETY: zero-initialised (every field is an integer) and filled in by
    // the successful call above.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

fn cpu_total() -> f64 {
    let (user, sys) = cpu_secs();
    user + sys
}

/// When the clock started and stopped, with the process CPU then.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: f64,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            at: Instant::now(),
            cpu: cpu_total(),
        }
    }
}

/// The bench's `Clock` (crates/xkafka-bench/src/clock.rs), with the CPU at
/// both ends as the Go peer's.
struct Clock {
    target: u64,
    /// The count whose tick starts the clock (1: the first message).
    from: u64,
    /// The count when the clock started (a poll's batch may cross `from`).
    counted_at_start: AtomicU64,
    count: AtomicU64,
    first: Mutex<Option<Mark>>,
    last: Mutex<Option<Mark>>,
}

/// The timed span of a run.
struct Timing {
    secs: f64,
    cpu: f64,
    messages: u64,
}

impl Clock {
    fn new(target: u64) -> Clock {
        Clock {
            target,
            from: 1,
            counted_at_start: AtomicU64::new(0),
            count: AtomicU64::new(0),
            first: Mutex::new(None),
            last: Mutex::new(None),
        }
    }

    /// A consumer's clock: started at message `target / 10`.
    fn steady(target: u64) -> Clock {
        Clock {
            from: (target / WARM_UP_SHARE).max(1),
            ..Clock::new(target)
        }
    }

    /// Starts the clock now (a publisher, before its first send).
    fn start(&self) {
        let mut first = self.first.lock().unwrap();
        if first.is_none() {
            *first = Some(Mark::now());
        }
    }

    fn tick(&self, n: u64) {
        let before = self.count.fetch_add(n, Ordering::AcqRel);
        let now_count = before + n;
        if before < self.from && now_count >= self.from {
            if self.first.lock().unwrap().is_none() {
                self.counted_at_start.store(now_count, Ordering::Release);
            }
            self.start();
        }
        if now_count >= self.target && before < self.target {
            *self.last.lock().unwrap() = Some(Mark::now());
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn done(&self) -> bool {
        self.count() >= self.target
    }

    /// The timed span, or an error naming the shortfall.
    fn timing(&self) -> BoxResult<Timing> {
        let first = (*self.first.lock().unwrap()).ok_or("no message arrived")?;
        let last = (*self.last.lock().unwrap())
            .ok_or_else(|| format!("only {} of {} messages", self.count(), self.target))?;
        Ok(Timing {
            secs: (last.at - first.at).as_secs_f64().max(1e-9),
            cpu: last.cpu - first.cpu,
            messages: self
                .target
                .saturating_sub(self.counted_at_start.load(Ordering::Acquire).max(1)),
        })
    }
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

fn props<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    extra: &[(String, String)],
) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    map.extend(extra.iter().cloned());
    map
}

/// The poll loop: `batch` counts each poll's records at once, otherwise
/// each record is taken (owned key and value, zero-copy `Bytes`) and counted.
async fn consume(o: &Options, batch: bool) -> BoxResult<Timing> {
    let batch_size = o.batch_size.to_string();
    let mut settings = vec![
        ("bootstrap.servers", o.brokers.as_str()),
        ("group.id", o.group.as_str()),
        // KIP-848: the only group protocol of this client.
        ("group.protocol", "consumer"),
        ("auto.offset.reset", "earliest"),
    ];
    if batch {
        settings.push(("max.poll.records", batch_size.as_str()));
    }
    let config = ConsumerConfig::new(&props(settings, &o.consumer_config))?;
    let mut consumer: KafkaConsumer<Bytes, Bytes> =
        KafkaConsumer::new(config, BytesDeserializer::new(), BytesDeserializer::new())?;
    consumer
        .subscribe_with_topics(vec![o.topic.clone()])
        .await?;
    let clock = Clock::steady(o.messages);
    let deadline = Instant::now() + o.timeout;
    let mut errors = 0u64;
    while !clock.done() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)).await {
            Ok(records) if batch => {
                let n = records.count() as u64;
                std::hint::black_box(records);
                if n > 0 {
                    clock.tick(n);
                }
            }
            Ok(records) => {
                for record in records {
                    std::hint::black_box(record);
                    clock.tick(1);
                }
            }
            Err(e) => {
                errors += 1;
                if errors <= 10 {
                    eprintln!("confluent-rust consumer error: {e}");
                }
            }
        }
    }
    // Outside the timed span; bounded, as leaving the group may wait on
    // the coordinator.
    if tokio::time::timeout(Duration::from_secs(10), consumer.close())
        .await
        .is_err()
    {
        eprintln!("confluent-rust: consumer close did not finish in 10 s");
    }
    if !clock.done() {
        return Err(format!(
            "consumed only {} of {} messages after {:?} ({errors} poll errors)",
            clock.count(),
            o.messages,
            o.timeout
        )
        .into());
    }
    clock.timing()
}

fn producer(o: &Options) -> BoxResult<KafkaProducer<Vec<u8>, Vec<u8>>> {
    let settings = [("bootstrap.servers", o.brokers.as_str())]
        .into_iter()
        .chain(PRODUCER_SETTINGS);
    let config = ProducerConfig::new(&props(settings, &o.producer_config))?;
    Ok(KafkaProducer::new(
        config,
        ByteArraySerializer::new(),
        ByteArraySerializer::new(),
    )?)
}

/// `send` with a callback per record; the future `send` returns (the
/// acknowledgement) is dropped, the callback counts.
async fn publish_async(o: &Options) -> BoxResult<Timing> {
    let producer = producer(o)?;
    let value = payload(o.value_size);
    // Warm up as the bench's sides do: connected, producer id, metadata.
    producer
        .send(ProducerRecord::new(o.topic.clone(), Some(&value[..])), None)
        .await?
        .get()
        .await
        .map_err(|e| format!("warm-up: {e}"))?;
    let clock = Arc::new(Clock::new(o.messages));
    let failed = Arc::new(AtomicU64::new(0));
    clock.start();
    for i in 0..o.messages {
        let key = format!("k{}", i % 1000);
        let record =
            ProducerRecord::with_key(o.topic.clone(), Some(key.as_bytes()), Some(&value[..]));
        let (ticks, failures) = (clock.clone(), failed.clone());
        let callback = move |_: Option<&RecordMetadata>, error: Option<&KafkaError>| {
            if let Some(e) = error {
                if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("confluent-rust: delivery failed: {e}");
                }
            }
            ticks.tick(1);
        };
        // Resolves once the record is in the accumulator (it waits only for
        // metadata or buffer memory), not for the acknowledgement.
        let _acknowledged = producer.send(record, Some(Box::new(callback))).await?;
    }
    let deadline = Instant::now() + o.timeout;
    while !clock.done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producer.flush().await?;
    producer.close_with_timeout(Duration::from_secs(10)).await?;
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} of {} deliveries failed", o.messages).into());
    }
    if !clock.done() {
        return Err(format!(
            "only {} of {} deliveries reported after {:?}",
            clock.count(),
            o.messages,
            o.timeout
        )
        .into());
    }
    clock.timing()
}

/// `send` then await the acknowledgement, `--in-flight` at once.
async fn publish_sync(o: &Options) -> BoxResult<Timing> {
    let producer = producer(o)?;
    let value = payload(o.value_size);
    let cpu = cpu_total();
    let started = Instant::now();
    let results: Vec<Result<RecordMetadata, KafkaError>> = stream::iter(0..o.messages)
        .map(|i| {
            let (producer, value, topic) = (&producer, &value, &o.topic);
            async move {
                let key = format!("k{}", i % 1000);
                let record =
                    ProducerRecord::with_key(topic.clone(), Some(key.as_bytes()), Some(&value[..]));
                producer.send(record, None).await?.get().await
            }
        })
        .buffer_unordered(o.in_flight)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let cpu = cpu_total() - cpu;
    producer.close_with_timeout(Duration::from_secs(10)).await?;
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(format!("{failed} of {} sends failed, the first: {e}", o.messages).into());
    }
    if results.len() as u64 != o.messages {
        return Err(format!("{} of {} sends completed", results.len(), o.messages).into());
    }
    Ok(Timing {
        secs,
        cpu,
        messages: o.messages,
    })
}

fn fail(error: &dyn std::fmt::Display) -> ! {
    println!("{}", serde_json::json!({ "error": error.to_string() }));
    eprintln!("confluent-rust-peer: {error}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let o = Options::parse().unwrap_or_else(|e| fail(&e));
    let started = Instant::now();
    let run = async {
        match o.scenario.as_str() {
            "consume_seq" => consume(&o, false).await,
            "consume_batch" => consume(&o, true).await,
            "publish_async" => publish_async(&o).await,
            "publish_sync" => publish_sync(&o).await,
            other => Err(format!("unknown scenario {other:?}\n{USAGE}").into()),
        }
    };
    // Every wait inside is bounded by --timeout-secs, but a send awaits its
    // acknowledgement without one: the whole run is bounded too (with room
    // for closing the client).
    let timing = tokio::time::timeout(o.timeout + CLOSE_ALLOWANCE, run)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{} did not finish in {:?} (a broker that never acknowledges?)",
                o.scenario,
                o.timeout + CLOSE_ALLOWANCE
            )
            .into())
        })
        .unwrap_or_else(|e| fail(&e));
    let (user, sys) = cpu_secs();
    let line = serde_json::json!({
        "scenario": o.scenario,
        "messages": o.messages,
        "msgs_per_sec": timing.messages as f64 / timing.secs,
        "timed_messages": timing.messages,
        "elapsed_secs": timing.secs,
        "cpu_user_secs": user,
        "cpu_sys_secs": sys,
        "cpu_window_secs": timing.cpu,
        "wall_secs": started.elapsed().as_secs_f64(),
        "confluent_kafka": CONFLUENT_KAFKA_VERSION,
        "rustc": env!("PEER_RUSTC_VERSION"),
    });
    println!("{line}");
}
