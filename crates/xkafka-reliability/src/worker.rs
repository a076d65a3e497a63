//! The worker: an xkafka consumer that records every message it handled,
//! durably, before acknowledging it.
//!
//! The harnesses run it as a separate process (`xkafka-chaos worker …`) so
//! that they can kill it with SIGKILL. Each message's value is its id (a
//! decimal number); the worker appends the ids it handled to its ledger file
//! — one `write` of whole lines, then `fdatasync` — and only then returns
//! success, so an id in the ledger means "handled" even if the process dies
//! the next instant. SIGTERM stops it gracefully; it then prints its
//! [`Summary`] as one JSON line on stdout.
//!
//! The two transform modes ([`Mode::EosTransform`], [`Mode::AloTransform`])
//! also turn each input into one output message (same key, value = the
//! input's id) on `--output`; there the output topic is the verdict (see
//! [`crate::exactly_once`]) and the ledger counts handler runs.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use xkafka::{
    Ack, Batch, BatchConsumer, BoxError, CommitMode, Consumer, ConsumerBuilder, Decision, Error,
    Message, Order, Producer, Summary,
};

/// How the worker consumes: one scenario of the crash suite each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One message at a time, automatic offset commits.
    Sequential,
    /// `Concurrency(16)`, per-partition order.
    Concurrent,
    /// `Concurrency(16)`, per-key order.
    PerKey,
    /// The batch consumer, batches of up to 100 messages.
    Batch,
    /// `CommitMode::Manual`: a synchronous commit after each message.
    Manual,
    /// `CommitMode::AtMostOnce`: committed before the handler runs.
    AtMostOnce,
    /// Exactly-once consume-transform-produce: `Concurrency(8)` per key,
    /// each input published as one output message through a transactional
    /// producer (`--transactional-id`), `CommitMode::Transactional`
    /// (transactions every 100 ms).
    EosTransform,
    /// The same transform at-least-once: an idempotent (not transactional)
    /// producer and `CommitMode::Auto` with librdkafka's default automatic
    /// commit interval, [`ALO_TRANSFORM_COMMIT_INTERVAL`].
    AloTransform,
}

impl Mode {
    /// Every scenario, in the order the suite reports them.
    pub const ALL: [Mode; 6] = [
        Mode::Sequential,
        Mode::Concurrent,
        Mode::PerKey,
        Mode::Batch,
        Mode::Manual,
        Mode::AtMostOnce,
    ];

    /// The transform scenarios (their verdict is the output topic, see
    /// [`crate::exactly_once`]); not in [`Mode::ALL`].
    pub const TRANSFORMS: [Mode; 2] = [Mode::EosTransform, Mode::AloTransform];

    /// Whether the mode promises at-least-once (every other mode promises
    /// at-most-once; [`Mode::EosTransform`] promises more: exactly-once
    /// output).
    pub fn at_least_once(self) -> bool {
        self != Mode::AtMostOnce
    }

    /// Whether the worker publishes one output message per input
    /// ([`Mode::TRANSFORMS`]).
    pub fn is_transform(self) -> bool {
        Mode::TRANSFORMS.contains(&self)
    }

    /// Handlers running at once.
    pub fn concurrency(self) -> usize {
        match self {
            Mode::Concurrent | Mode::PerKey => 16,
            Mode::EosTransform | Mode::AloTransform => 8,
            _ => 1,
        }
    }

    /// Messages per batch (1 for the streaming modes).
    pub fn batch_size(self) -> usize {
        if self == Mode::Batch {
            100
        } else {
            1
        }
    }

    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Concurrent => "concurrent",
            Mode::PerKey => "per-key",
            Mode::Batch => "batch",
            Mode::Manual => "manual",
            Mode::AtMostOnce => "at-most-once",
            Mode::EosTransform => "eos-transform",
            Mode::AloTransform => "alo-transform",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The automatic commit interval the worker uses: it bounds how many handled
/// messages a kill can send round again in the automatic modes.
pub const AUTO_COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// The automatic commit interval of [`Mode::AloTransform`]: librdkafka's
/// default, what an application gets when it sets nothing. librdkafka
/// starts this timer when the consumer is created, so a worker killed less
/// than this long after it started has committed nothing.
pub const ALO_TRANSFORM_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// How often [`Mode::EosTransform`] ends a transaction (the library's
/// default, as Kafka Streams' exactly-once commit interval).
pub const EOS_TRANSACTION_INTERVAL: Duration = Duration::from_millis(100);

/// The worker's command line.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// `bootstrap.servers`.
    #[arg(long, env = "XKAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The topic to consume (values are decimal ids).
    #[arg(long)]
    pub topic: String,
    /// The consumer group.
    #[arg(long)]
    pub group: String,
    /// How to consume.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The ledger: ids are appended here, one per line, before each ack.
    #[arg(long)]
    pub out: PathBuf,
    /// Simulated work per message (per batch in batch mode), milliseconds.
    #[arg(long, default_value_t = 1)]
    pub work_ms: u64,
    /// `session.timeout.ms`: how soon the group notices a killed worker.
    #[arg(long, default_value_t = 6000)]
    pub session_timeout_ms: u32,
    /// The consumer's total in-flight bound (messages taken, not settled).
    #[arg(long, default_value_t = 1000)]
    pub max_in_flight: usize,
    /// The per-partition in-flight bound (default: the total bound, so one
    /// partition may fill it).
    #[arg(long)]
    pub max_in_flight_per_partition: Option<usize>,
    /// Extra librdkafka properties, `key=value` (e.g. `debug=fetch,cgrp`).
    #[arg(long = "config", value_parser = parse_property)]
    pub configs: Vec<(String, String)>,
    /// Skip the `fdatasync` after each ledger write (a SIGKILL cannot lose a
    /// completed `write`; only a machine crash can).
    #[arg(long)]
    pub no_fsync: bool,
    /// The transform modes: the topic each input's output message goes to.
    #[arg(long)]
    pub output: Option<String>,
    /// [`Mode::EosTransform`]: the output producer's `transactional.id`. A
    /// restarted worker must reuse its predecessor's: that fences it and
    /// aborts the transaction it left open.
    #[arg(long)]
    pub transactional_id: Option<String>,
    /// [`Mode::EosTransform`]: the output producer's
    /// `transaction.timeout.ms` (how long the broker lets a transaction stay
    /// open before aborting it; librdkafka's default 60 s when not given).
    #[arg(long)]
    pub transaction_timeout_ms: Option<u32>,
    /// [`Mode::EosTransform`]: a transaction ends once this many messages
    /// were dispatched in it (the library's default, 10,000, when not
    /// given), or [`EOS_TRANSACTION_INTERVAL`] after its first.
    #[arg(long)]
    pub transaction_max_messages: Option<usize>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// Appends ids to the ledger: one `write` per call, then `fdatasync`.
#[derive(Clone)]
struct Ledger {
    file: Arc<Mutex<File>>,
    fsync: bool,
}

impl Ledger {
    fn open(path: &Path, fsync: bool) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Ledger {
            file: Arc::new(Mutex::new(file)),
            fsync,
        })
    }

    fn record(&self, ids: &[u64]) -> io::Result<()> {
        let mut lines = String::with_capacity(ids.len() * 8);
        for id in ids {
            lines.push_str(&id.to_string());
            lines.push('\n');
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // O_APPEND + one write: a line is never torn or interleaved.
        file.write_all(lines.as_bytes())?;
        if self.fsync {
            file.sync_data()?;
        }
        Ok(())
    }
}

fn id_of(message: &Message) -> Result<u64, BoxError> {
    let text = message
        .value_str()
        .ok_or_else(|| format!("{}: value is not an id", message.location()))?;
    text.parse()
        .map_err(|e| format!("{}: value {text:?}: {e}", message.location()).into())
}

/// What every mode shares: the broker, short session, frequent automatic
/// commits, the in-flight bound, an error handler that stops on anything that
/// could mean an unrecorded acknowledgement.
fn configure<K: xkafka::consumer::Kind>(
    builder: ConsumerBuilder<K>,
    args: &WorkerArgs,
) -> ConsumerBuilder<K> {
    // A quarter of the session: xkafka refuses more than a third.
    let heartbeat = (args.session_timeout_ms / 4).max(1);
    let total = args.max_in_flight.max(2 * args.mode.batch_size());
    let per_partition = args
        .max_in_flight_per_partition
        .unwrap_or(total)
        .clamp(2 * args.mode.batch_size(), total);
    // KIP-848 groups: the broker owns the session timeout and the heartbeat
    // interval, and librdkafka refuses both client properties.
    let kip848 = args
        .configs
        .iter()
        .any(|(k, v)| k == "group.protocol" && v.eq_ignore_ascii_case("consumer"));
    let builder = if kip848 {
        builder
    } else {
        builder
            .config("session.timeout.ms", args.session_timeout_ms.to_string())
            .config("heartbeat.interval.ms", heartbeat.to_string())
    };
    let commit_interval = if args.mode == Mode::AloTransform {
        ALO_TRANSFORM_COMMIT_INTERVAL
    } else {
        AUTO_COMMIT_INTERVAL
    };
    builder
        .brokers([args.brokers.as_str()])
        .topics([args.topic.as_str()])
        .config("auto.offset.reset", "earliest")
        .config(
            "auto.commit.interval.ms",
            commit_interval.as_millis().to_string(),
        )
        .configs(args.configs.iter().cloned())
        .max_in_flight(total)
        .max_in_flight_per_partition(per_partition)
        .shutdown_timeout(Duration::from_secs(10))
        .error_handler(|err: &Error| {
            eprintln!("worker: {err}");
            // A failed handler here is a broken ledger (disk full…): stop, so
            // that nothing is acknowledged unrecorded.
            if err.message_location().is_some() || err.is_fatal() {
                Decision::Stop
            } else {
                Decision::Continue
            }
        })
}

/// Runs the worker until SIGTERM (or SIGINT), then returns the consumer's
/// summary.
pub async fn run(args: WorkerArgs) -> Result<Summary, BoxError> {
    let ledger = Ledger::open(&args.out, !args.no_fsync)?;
    let work = Duration::from_millis(args.work_ms);
    let mode = args.mode;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let summary = if mode.is_transform() {
        return transform(args, ledger, work, shutdown).await;
    } else if mode == Mode::Batch {
        let ledger = ledger.clone();
        configure(BatchConsumer::builder(args.group.clone()), &args)
            .batch_size(mode.batch_size())
            .batch_timeout(Duration::from_millis(100))
            .handler(move |batch: Batch| {
                let ledger = ledger.clone();
                async move {
                    if !work.is_zero() {
                        tokio::time::sleep(work).await;
                    }
                    let ids = batch.iter().map(id_of).collect::<Result<Vec<_>, _>>()?;
                    ledger.record(&ids)?;
                    Ok::<_, BoxError>(())
                }
            })
            .build()?
            .run(shutdown)
            .await?
    } else {
        let (commit_mode, order) = match mode {
            Mode::Manual => (CommitMode::Manual, Order::PerPartition),
            Mode::AtMostOnce => (CommitMode::AtMostOnce, Order::PerPartition),
            Mode::PerKey => (CommitMode::Auto, Order::PerKey),
            _ => (CommitMode::Auto, Order::PerPartition),
        };
        configure(Consumer::builder(args.group.clone()), &args)
            .commit_mode(commit_mode)
            .concurrency(mode.concurrency())
            .order(order)
            .handler(move |message: Message| {
                let ledger = ledger.clone();
                async move {
                    if !work.is_zero() {
                        tokio::time::sleep(work).await;
                    }
                    ledger.record(&[id_of(&message)?])?;
                    Ok::<_, BoxError>(Ack::Success)
                }
            })
            .build()?
            .run(shutdown)
            .await?
    };
    Ok(summary)
}

/// The transform modes: each input becomes one output message on
/// `--output` (the input's key, value = its id), published and
/// acknowledged before the input's id goes to the ledger and the handler
/// returns.
async fn transform(
    args: WorkerArgs,
    ledger: Ledger,
    work: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Summary, BoxError> {
    let output: Arc<str> = args
        .output
        .as_deref()
        .ok_or("the transform modes need --output")?
        .into();
    let eos = args.mode == Mode::EosTransform;
    let mut producer = Producer::builder("xkafka-chaos-transform")
        .brokers([args.brokers.as_str()])
        .config("linger.ms", "5")
        .error_handler(|err: &Error| eprintln!("worker: output producer: {err}"));
    if eos {
        let id = args
            .transactional_id
            .as_deref()
            .ok_or("eos-transform needs --transactional-id")?;
        producer = producer.transactional_id(id);
        if let Some(ms) = args.transaction_timeout_ms {
            // Each transaction step within a third of the broker's bound on
            // the whole transaction: xkafka refuses a transaction interval
            // plus step bound that reaches it.
            producer = producer
                .config("transaction.timeout.ms", ms.to_string())
                .transaction_timeout(Duration::from_millis(u64::from(ms) / 3));
        }
    }
    let producer = producer.build()?;
    let builder = configure(Consumer::builder(args.group.clone()), &args)
        .concurrency(args.mode.concurrency())
        .order(Order::PerKey);
    let builder = if eos {
        let builder = builder
            .transactional(producer.clone())
            .transaction_interval(EOS_TRANSACTION_INTERVAL);
        match args.transaction_max_messages {
            Some(n) => builder.transaction_max_messages(n),
            None => builder,
        }
    } else {
        builder.commit_mode(CommitMode::Auto)
    };
    let publisher = producer.clone();
    let summary = builder
        .handler(move |message: Message| {
            let ledger = ledger.clone();
            let producer = publisher.clone();
            let output = output.clone();
            async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                let id = id_of(&message)?;
                let out = Message::builder(output)
                    .key(message.key().cloned().unwrap_or_default())
                    .value(id.to_string())
                    .build();
                producer.publish(out).await?;
                ledger.record(&[id])?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()?
        .run(shutdown)
        .await;
    producer.close().await;
    Ok(summary?)
}
