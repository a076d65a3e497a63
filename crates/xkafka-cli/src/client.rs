//! What every command needs: the error type and its exit codes, the client
//! configuration, metadata and offsets with bounded waits, and a reader of
//! offset ranges.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::Message;

use crate::cli::Global;

/// Why a command failed; each kind has its exit code.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit code 2.
    Usage(String),
    /// Failed while running: exit code 1.
    Runtime(String),
    /// Stopped by Ctrl-C: exit code 130.
    Interrupted(String),
    /// Standard output was closed (`| head`): stop quietly, exit code 0.
    Closed,
}

impl Failure {
    /// The process's exit code.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Runtime(_) => 1,
            Failure::Interrupted(_) => 130,
            Failure::Closed => 0,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Runtime(m) | Failure::Interrupted(m) => {
                // One line, whatever librdkafka's text holds.
                f.write_str(&m.replace(['\n', '\r'], " "))
            }
            Failure::Closed => f.write_str("standard output closed"),
        }
    }
}

/// A runtime failure.
pub(crate) fn runtime(message: impl Into<String>) -> Failure {
    Failure::Runtime(message.into())
}

/// Writes `text` and a newline to standard output, flushed (so that a
/// script reading a pipe sees each line at once).
pub(crate) fn say(text: &str) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
        Err(e) => Err(runtime(format!("cannot write to standard output: {e}"))),
    }
}

/// What the commands' clients set unless `-X` says otherwise.
pub(crate) const CONSUMER_DEFAULTS: [(&str, &str); 3] = [
    ("client.id", "xkafka-cli"),
    ("auto.offset.reset", "earliest"),
    ("socket.connection.setup.timeout.ms", "10000"),
];

/// How to reach the cluster: brokers, `-X` properties and the bounded wait.
#[derive(Debug)]
pub(crate) struct Conn {
    brokers: String,
    properties: Vec<(String, String)>,
    /// Bound on every wait for the brokers.
    pub(crate) timeout: Duration,
}

impl Conn {
    /// Checks the global options: brokers given (or in `-X
    /// bootstrap.servers`), every `-X` property known to librdkafka.
    pub(crate) fn new(global: &Global) -> Result<Conn, Failure> {
        let from_x = global
            .properties
            .iter()
            .rev()
            .find(|(k, _)| k == "bootstrap.servers" || k == "metadata.broker.list")
            .map(|(_, v)| v.clone());
        let brokers = match global.brokers.clone().or(from_x) {
            Some(b) if !b.trim().is_empty() => b,
            _ => {
                return Err(Failure::Usage(
                    "no brokers: pass --brokers HOST:PORT or set XKAFKA_BROKERS".into(),
                ))
            }
        };
        let conn = Conn {
            brokers,
            properties: global.properties.clone(),
            timeout: global.timeout,
        };
        // librdkafka validates names and values without connecting.
        let mut config = conn.config(&[], &[]);
        config.set_log_level(rdkafka::config::RDKafkaLogLevel::Emerg);
        if let Err(e) = config.create_native_config() {
            return Err(Failure::Usage(match e {
                KafkaError::ClientConfig(_, reason, key, _) => {
                    let shown = if xkafka::Config::is_secret(&key) {
                        "<redacted>".to_owned()
                    } else {
                        conn.property(&key).unwrap_or_default().to_owned()
                    };
                    format!("invalid -X {key}={shown}: {reason}")
                }
                other => format!("invalid -X property: {other}"),
            }));
        }
        Ok(conn)
    }

    /// The last `-X` value of `key`.
    pub(crate) fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `defaults`, then the `-X` properties, then `forced` (what the command
    /// relies on), then the brokers.
    pub(crate) fn config(
        &self,
        defaults: &[(&str, &str)],
        forced: &[(&str, &str)],
    ) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        for (k, v) in forced {
            config.set(*k, *v);
        }
        config.set("bootstrap.servers", &self.brokers);
        config
    }

    /// A consumer that reads by assignment (no subscription), never commits
    /// by itself and reports the end of each partition. `group` is only
    /// needed to read or commit a group's offsets.
    pub(crate) fn consumer(&self, group: Option<&str>) -> Result<StreamConsumer, Failure> {
        let group = group.unwrap_or("xkafka-cli");
        self.config(
            &CONSUMER_DEFAULTS,
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
            ],
        )
        .create()
        .map_err(|e| runtime(format!("cannot create the Kafka client: {e}")))
    }

    /// An idempotent producer with `acks=all` (forced: the commands promise
    /// it); records not acknowledged within `message.timeout.ms` (default:
    /// `--timeout`, at least 30 s) fail. Client-level errors (brokers down,
    /// authentication) are kept in `last_error`, for the failure message.
    pub(crate) fn producer(
        &self,
        name: &str,
        last_error: Arc<std::sync::Mutex<Option<String>>>,
    ) -> Result<xkafka::Producer, Failure> {
        let delivery = self.delivery_timeout().as_millis().to_string();
        let mut builder = xkafka::Producer::builder(name)
            .brokers([self.brokers.clone()])
            .config("message.timeout.ms", delivery)
            .configs(self.properties.iter().cloned())
            .config("acks", "all")
            .config("enable.idempotence", "true")
            .close_timeout(self.timeout)
            .error_handler(move |e| {
                *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            });
        if self.property("client.id").is_none() {
            builder = builder.config("client.id", name);
        }
        builder
            .build()
            .map_err(|e| runtime(format!("cannot create the producer: {e}")))
    }

    /// How long a record may wait for its acknowledgement: `--timeout`, at
    /// least 30 s (`-X message.timeout.ms` overrides it).
    pub(crate) fn delivery_timeout(&self) -> Duration {
        self.property("message.timeout.ms")
            .and_then(|ms| ms.parse().ok())
            .map_or_else(
                || self.timeout.max(Duration::from_secs(30)),
                Duration::from_millis,
            )
    }

    /// What to say when the brokers did not answer.
    pub(crate) fn unreachable(&self, error: impl fmt::Display) -> Failure {
        runtime(format!(
            "no answer from the brokers at {} within {}: {error}",
            self.brokers,
            humantime::format_duration(self.timeout)
        ))
    }
}

/// The partitions of `topic` (ascending); a runtime failure naming the
/// topic when it does not exist.
pub(crate) fn partitions(
    conn: &Conn,
    consumer: &StreamConsumer,
    topic: &str,
) -> Result<Vec<i32>, Failure> {
    let deadline = Instant::now() + conn.timeout;
    // A topic created a moment ago may not be in every broker's metadata
    // yet: ask again, briefly.
    let unknown_until = Instant::now() + conn.timeout.min(Duration::from_millis(1500));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let metadata = consumer
            .fetch_metadata(Some(topic), left.max(Duration::from_millis(100)))
            .map_err(|e| conn.unreachable(e))?;
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        let retry = match found {
            Some(t) => match t.error() {
                None if !t.partitions().is_empty() => {
                    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                    ps.sort_unstable();
                    return Ok(ps);
                }
                Some(e) => {
                    let code = RDKafkaErrorCode::from(e);
                    if code == RDKafkaErrorCode::UnknownTopicOrPartition
                        && Instant::now() >= unknown_until
                    {
                        return Err(missing_topic(topic));
                    }
                    match code {
                        RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::LeaderNotAvailable => code.to_string(),
                        other => return Err(runtime(format!("topic {topic}: {other}"))),
                    }
                }
                None => "no partitions".to_owned(),
            },
            None if Instant::now() >= unknown_until => return Err(missing_topic(topic)),
            None => "not in the metadata".to_owned(),
        };
        if Instant::now() >= deadline {
            return Err(runtime(format!("topic {topic}: {retry}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A topic that does not exist, and how to create it.
pub(crate) fn missing_topic(topic: &str) -> Failure {
    runtime(format!(
        "topic {topic} does not exist (create it with: xkafka topics create {topic} \
         --partitions N)"
    ))
}

/// `(low, high)` watermarks of each partition.
pub(crate) fn watermarks(
    conn: &Conn,
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, (i64, i64)>, Failure> {
    let mut out = HashMap::with_capacity(partitions.len());
    for &p in partitions {
        let marks = consumer
            .fetch_watermarks(topic, p, conn.timeout)
            .map_err(|e| runtime(format!("end offsets of {topic}[{p}]: {e}")))?;
        out.insert(p, marks);
    }
    Ok(out)
}

/// Reads `[start, end)` of some partitions of one topic: yields each record
/// once, in offset order within a partition, and ends when every partition
/// reached its end (or the broker says it has nothing more).
pub(crate) struct RangeReader<'c> {
    consumer: &'c StreamConsumer,
    topic: String,
    end: HashMap<i32, i64>,
    left: HashSet<i32>,
    /// Longest wait for the next record (or end of partition).
    stall: Duration,
}

impl<'c> RangeReader<'c> {
    /// Assigns `ranges` (`partition → (start, end)`); empty ranges are not
    /// read.
    pub(crate) fn new(
        consumer: &'c StreamConsumer,
        topic: &str,
        ranges: &HashMap<i32, (i64, i64)>,
        stall: Duration,
    ) -> Result<Self, Failure> {
        let mut tpl = TopicPartitionList::new();
        let mut end = HashMap::new();
        let mut left = HashSet::new();
        for (&p, &(start, stop)) in ranges {
            if start < stop {
                tpl.add_partition_offset(topic, p, Offset::Offset(start))
                    .map_err(|e| runtime(format!("{topic}[{p}]: {e}")))?;
                end.insert(p, stop);
                left.insert(p);
            }
        }
        if !left.is_empty() {
            consumer
                .assign(&tpl)
                .map_err(|e| runtime(format!("cannot read {topic}: {e}")))?;
        }
        Ok(RangeReader {
            consumer,
            topic: topic.to_owned(),
            end,
            left,
            stall,
        })
    }

    /// The next record, `None` at the end of every range.
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, Failure> {
        let mut last_error: Option<KafkaError> = None;
        let mut waited_since = Instant::now();
        while !self.left.is_empty() {
            let received = match tokio::time::timeout(
                Duration::from_millis(250),
                self.consumer.recv(),
            )
            .await
            {
                Ok(received) => received,
                Err(_) => {
                    if waited_since.elapsed() >= self.stall {
                        let why = last_error.map_or_else(
                            || "no records nor end of partition".to_owned(),
                            |e| e.to_string(),
                        );
                        return Err(runtime(format!(
                            "reading {} stalled for {}: {why}",
                            self.topic,
                            humantime::format_duration(self.stall)
                        )));
                    }
                    continue;
                }
            };
            match received {
                Ok(m) => {
                    waited_since = Instant::now();
                    let p = m.partition();
                    let Some(&stop) = self.end.get(&p) else {
                        continue;
                    };
                    if !self.left.contains(&p) || m.offset() >= stop {
                        self.left.remove(&p);
                        continue;
                    }
                    if m.offset() + 1 >= stop {
                        self.left.remove(&p);
                    }
                    return Ok(Some(owned(&m)));
                }
                Err(KafkaError::PartitionEOF(p)) => {
                    waited_since = Instant::now();
                    self.left.remove(&p);
                }
                Err(e) => {
                    if let Some(code) = e.rdkafka_error_code() {
                        if fatal(code) {
                            return Err(runtime(format!("reading {}: {e}", self.topic)));
                        }
                    }
                    last_error = Some(e);
                }
            }
        }
        Ok(None)
    }
}

/// A consume error that waiting will not cure.
pub(crate) fn fatal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
    )
}

/// An owned copy of a fetched record (xkafka's own conversion: header
/// names that are not UTF-8 are decoded lossily instead of panicking).
pub(crate) fn owned(m: &BorrowedMessage<'_>) -> Message {
    xkafka::raw::owned_message(m)
}

/// Set once Ctrl-C was pressed (after [`watch_ctrl_c`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Interrupt(Arc<AtomicBool>, Arc<tokio::sync::Notify>);

impl Interrupt {
    /// Whether Ctrl-C was pressed.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Resolves once Ctrl-C was pressed.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.1.notified();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// Takes over Ctrl-C: from now on it sets the returned flag instead of
/// killing the process (a second Ctrl-C still kills it).
pub(crate) fn watch_ctrl_c() -> Interrupt {
    let flag = Interrupt::default();
    let set = flag.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            set.0.store(true, Ordering::Release);
            set.1.notify_waiters();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    flag
}

/// An admin client (create / delete topics, configs, partitions, groups)
/// and the options that bound each request by `--timeout`.
pub(crate) fn admin(
    conn: &Conn,
) -> Result<
    (
        rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
        rdkafka::admin::AdminOptions,
    ),
    Failure,
> {
    let client = conn
        .config(
            &[
                ("client.id", "xkafka-cli"),
                ("socket.connection.setup.timeout.ms", "10000"),
            ],
            &[],
        )
        .create()
        .map_err(|e| runtime(format!("cannot create the Kafka admin client: {e}")))?;
    let options = rdkafka::admin::AdminOptions::new()
        .request_timeout(Some(conn.timeout))
        // Wait until the change is done on the brokers, not only accepted.
        .operation_timeout(Some(conn.timeout));
    Ok((client, options))
}

/// Runs an admin request within `--timeout` (librdkafka bounds it too;
/// this also bounds the wait for a broker that never answers).
pub(crate) async fn bounded<T>(
    conn: &Conn,
    what: &str,
    request: impl std::future::Future<Output = rdkafka::error::KafkaResult<T>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(conn.timeout + Duration::from_secs(1), request).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(conn.unreachable(format!("{what}: {e}"))),
        Err(_) => Err(conn.unreachable(what)),
    }
}
