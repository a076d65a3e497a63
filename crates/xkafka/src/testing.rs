//! Test your own handlers the way you test an axum app: no cluster for the
//! logic, the embedded one for the wiring.
//!
//! - [`HandlerTest`] runs messages built in the test through a consumer's
//!   handler **with its whole middleware stack** and its error handler, and
//!   says what happened ([`Outcome`]: success, skip, failure with the error
//!   handler's decision, panic). Under `#[tokio::test(start_paused = true)]`
//!   a retry layer's backoff takes no real time.
//! - [`RecordingProducer`] is a [`Producer`] that records what is published
//!   instead of sending it (through a [`DeadLetterLayer`](crate::dlq::DeadLetterLayer)
//!   too), and can be told to fail.
//! - [`TestCluster`] starts the embedded cluster, creates topics, publishes
//!   fixtures (each bounded by a timeout) and reads topics back — everything
//!   in them, so duplicates show ([`TestCluster::read_exactly`] fails on
//!   them); [`run_until`] runs your real
//!   [`Consumer`] until it handled N messages or committed given offsets.
//!   Every wait has a timeout and an error ([`KitError`]) saying what did
//!   not happen.
//!
//! ```
//! use std::time::Duration;
//! use xkafka::dlq::DeadLetterLayer;
//! use xkafka::middleware::retry::{Backoff, RetryLayer};
//! use xkafka::testing::{run_until, HandlerTest, Outcome, RecordingProducer, TestCluster, Until};
//! use xkafka::{Ack, BoxError, Consumer, Decision, Message};
//!
//! async fn bill(msg: Message) -> Result<Ack, BoxError> {
//!     match msg.value_str() {
//!         Some(amount) if amount.parse::<u32>().is_ok() => Ok(Ack::Success),
//!         _ => Err("not an amount".into()),
//!     }
//! }
//!
//! // The service as main() builds it, with the brokers left to the caller.
//! fn billing(dead_letters: xkafka::Producer) -> xkafka::ConsumerBuilder {
//!     Consumer::builder("billing")
//!         .error_handler(|_| Decision::Stop)
//!         .layer(DeadLetterLayer::new(dead_letters, "orders.dlq"))
//!         .layer(RetryLayer::new(Backoff::new().initial_delay(Duration::from_secs(1)).max_attempts(5)))
//!         .handler(bill)
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. No broker: the handler and its middleware, message by message.
//! //    (Paused time: five attempts with 1 s, 2 s, 4 s, 8 s backoffs take
//! //    no real time.)
//! let recorder = RecordingProducer::new()?;
//! let test = HandlerTest::new(billing(recorder.producer()))?;
//! let ok = Message::builder("orders").partition(0).offset(1).value("12").build();
//! assert_eq!(test.call(ok).await, Outcome::Success);
//! let bad = Message::builder("orders").partition(0).offset(2).value("twelve").build();
//! assert_eq!(test.call(bad).await, Outcome::Skip, "dead-lettered, then skipped");
//! let dead = recorder.published_to("orders.dlq");
//! assert_eq!(dead[0].value_str(), Some("twelve"));
//! # Ok(()) }
//! ```
//!
//! And with the embedded cluster (real client, real group, real commits):
//!
//! ```
//! # use std::time::Duration;
//! # use xkafka::testing::{run_until, TestCluster, Until};
//! # use xkafka::{Ack, Consumer, Decision, Message};
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cluster = TestCluster::start()?;
//! cluster.create_topic("orders", 2)?;
//! cluster
//!     .publish((0..10).map(|i| Message::builder("orders").key(format!("{i}")).value("1").build()))
//!     .await?;
//! let consumer = Consumer::builder("billing")
//!     .brokers([cluster.brokers()])
//!     .topics(["orders"])
//!     .config("auto.offset.reset", "earliest")
//!     .error_handler(|_| Decision::Stop)
//!     .handler(|_m: Message| async { Ack::Success })
//!     .build()?;
//! let summary = run_until(consumer, Until::Handled(10), Duration::from_secs(30)).await?;
//! assert_eq!(summary.succeeded, 10);
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};
use xkafka_core::middleware::recover::Panicked;

use crate::consumer::{BatchConsumer, StatusHandle};
use crate::error::ErrorHandlerFn;
use crate::mock::EmbeddedCluster;
use crate::{
    Ack, BoxError, Consumer, ConsumerBuilder, Decision, Delivery, Error, Message, Producer,
    ShutdownHandle, Summary,
};

/// What happened to one message in a [`HandlerTest`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The stack returned [`Ack::Success`].
    Success,
    /// The stack returned [`Ack::Skip`] (a dead-letter layer that published
    /// the message returns this too).
    Skip,
    /// The stack failed; the consumer's error handler decided `decision`.
    Failed {
        /// The error as the error handler received it ([`Error::Handler`]).
        error: Error,
        /// What the error handler decided.
        decision: Decision,
    },
    /// The stack panicked (no [`RecoverLayer`](crate::middleware::recover::RecoverLayer)
    /// caught it); the consumer would report it as a failure, and the
    /// error handler decided `decision`.
    Panicked {
        /// The panic's message.
        message: String,
        /// What the error handler decided.
        decision: Decision,
    },
}

/// Outcomes compare by kind and decision (and panic message); a failure's
/// error is compared by its text.
impl PartialEq for Outcome {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Outcome::Success, Outcome::Success) | (Outcome::Skip, Outcome::Skip) => true,
            (
                Outcome::Failed { error, decision },
                Outcome::Failed {
                    error: e2,
                    decision: d2,
                },
            ) => decision == d2 && error.to_string() == e2.to_string(),
            (
                Outcome::Panicked { message, decision },
                Outcome::Panicked {
                    message: m2,
                    decision: d2,
                },
            ) => message == m2 && decision == d2,
            _ => false,
        }
    }
}

impl Outcome {
    /// Whether the message's offset would be stored: success, skip, or a
    /// failure the error handler skipped.
    pub fn offset_stored(&self) -> bool {
        match self {
            Outcome::Success | Outcome::Skip => true,
            Outcome::Failed { decision, .. } | Outcome::Panicked { decision, .. } => {
                *decision == Decision::Continue
            }
        }
    }
}

/// Runs messages through a streaming consumer's handler, middleware and
/// error handler, with no client and no broker. See the [module](self)
/// example.
pub struct HandlerTest {
    group: Arc<str>,
    service: BoxCloneService<Message, Ack, BoxError>,
    error_handler: ErrorHandlerFn,
}

impl HandlerTest {
    /// Takes what `builder` was given: its handler, its layers and its
    /// error handler (brokers, topics and the rest are not needed).
    pub fn new(builder: ConsumerBuilder) -> Result<Self, Error> {
        let (group, service, error_handler) = builder.into_test_parts()?;
        Ok(HandlerTest {
            group,
            service,
            error_handler,
        })
    }

    /// Handles `message` as the consumer would, and says how it ended.
    /// Messages without a group get this consumer's (as fetched ones do).
    pub async fn call(&self, message: Message) -> Outcome {
        let mut message = message;
        if message.group().is_none() {
            message.set_group(Some(self.group.clone()));
        }
        let (topic, partition, offset) = (
            message.topic_arc().clone(),
            message.partition().unwrap_or(0),
            message.offset().unwrap_or(0),
        );
        let called = AssertUnwindSafe(self.service.clone().oneshot(message))
            .catch_unwind()
            .await;
        let error = |source: BoxError| Error::Handler {
            topic: topic.clone(),
            partition,
            offset,
            source,
        };
        match called {
            Ok(Ok(Ack::Success)) => Outcome::Success,
            Ok(Ok(Ack::Skip)) => Outcome::Skip,
            Ok(Err(source)) => {
                let error = error(source);
                let decision = (self.error_handler)(&error);
                Outcome::Failed { error, decision }
            }
            Err(payload) => {
                let panicked = Panicked::from_payload(payload);
                let message = panicked.message.clone();
                let decision = (self.error_handler)(&error(Box::new(panicked)));
                Outcome::Panicked { message, decision }
            }
        }
    }
}

impl fmt::Debug for HandlerTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerTest")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// A [`Producer`] that records what is published and acknowledges it at
/// once, without a broker (librdkafka is created without brokers and never
/// connects). Offsets count up per topic and partition from 0; a message
/// without a partition lands in partition 0.
#[derive(Clone)]
pub struct RecordingProducer {
    log: Arc<Recorded>,
    producer: Producer,
}

#[derive(Default)]
struct Recorded {
    messages: Mutex<Vec<Message>>,
    next: Mutex<BTreeMap<(Arc<str>, i32), i64>>,
    failures: Mutex<VecDeque<String>>,
}

impl RecordingProducer {
    /// A recording producer; must be called inside a tokio runtime.
    pub fn new() -> Result<Self, Error> {
        let log = Arc::new(Recorded::default());
        let producer = Producer::builder("xkafka-recording")
            .offline()
            .error_handler(|err| tracing::debug!(%err, "recording producer"))
            .layer(RecordLayer(log.clone()))
            .build()?;
        Ok(RecordingProducer { log, producer })
    }

    /// The producer to hand to the code under test (clones record into the
    /// same log).
    pub fn producer(&self) -> Producer {
        self.producer.clone()
    }

    /// Everything published so far, in order (failed publishes excluded).
    pub fn published(&self) -> Vec<Message> {
        self.log
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What was published to `topic`, in order.
    pub fn published_to(&self, topic: &str) -> Vec<Message> {
        self.published()
            .into_iter()
            .filter(|m| m.topic() == topic)
            .collect()
    }

    /// The next `count` publishes fail with `reason` (as a broker refusal
    /// would: `publish` returns an error and nothing is recorded).
    pub fn fail_next(&self, count: usize, reason: impl Into<String>) {
        let reason = reason.into();
        let mut failures = self.log.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.extend(std::iter::repeat_n(reason, count));
    }
}

impl fmt::Debug for RecordingProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingProducer")
            .field("published", &self.published().len())
            .finish_non_exhaustive()
    }
}

/// The producer middleware that answers in place of the broker.
#[derive(Clone)]
struct RecordLayer(Arc<Recorded>);

impl<S> Layer<S> for RecordLayer {
    type Service = RecordService;
    fn layer(&self, _inner: S) -> RecordService {
        RecordService(self.0.clone())
    }
}

#[derive(Clone)]
struct RecordService(Arc<Recorded>);

impl Service<Message> for RecordService {
    type Response = Delivery;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Delivery, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let failure = self
            .0
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        if let Some(reason) = failure {
            return std::future::ready(Err(reason.into()));
        }
        let topic = message.topic_arc().clone();
        let partition = message.partition().unwrap_or(0);
        let offset = {
            let mut next = self.0.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = next.entry((topic.clone(), partition)).or_insert(0);
            *slot += 1;
            *slot - 1
        };
        self.0
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
        std::future::ready(Ok(Delivery::new(topic, partition, offset)))
    }
}

/// What a test kit wait did not see happen in time, or the consumer's own
/// error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    /// The wait's timeout passed first.
    #[error("{waited_for} did not happen within {timeout:?}: {got}")]
    Timeout {
        /// What was awaited.
        waited_for: String,
        /// What had happened by then.
        got: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A read found more messages than the test expected: duplicates (a
    /// handler that published twice, a redelivery the service did not
    /// deduplicate) or stray publishes. See [`TestCluster::read_exactly`].
    #[error("expected {expected} messages in {topic}, found {found}: {surplus}")]
    TooMany {
        /// The topic read.
        topic: String,
        /// How many the test expected.
        expected: usize,
        /// How many the topic holds.
        found: usize,
        /// The messages alike (same partition, key, value and headers as
        /// an earlier one), or else that none are alike.
        surplus: String,
    },
    /// The consumer (or a client) failed.
    #[error(transparent)]
    Kafka(#[from] Error),
}

/// When [`run_until`] stops the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Until {
    /// Once this many messages were handled (succeeded, skipped or failed).
    Handled(u64),
    /// Once the committed offset of each `(topic, partition)` reached the
    /// given offset (the next one to read).
    Committed(Vec<(String, i32, i64)>),
}

/// A consumer [`run_until`] can drive: [`Consumer`] or [`BatchConsumer`].
///
/// Sealed: only xkafka's consumers implement it, so its methods can change
/// without breaking anyone.
pub trait Runnable: sealed::Sealed + Send + 'static {
    /// Its status handle.
    fn status(&self) -> StatusHandle;
    /// Its shutdown handle.
    fn stopper(&self) -> ShutdownHandle;
    /// Runs it until `shutdown`.
    fn run_with(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Pin<Box<dyn Future<Output = Result<Summary, Error>> + Send>>;
}

mod sealed {
    /// Implemented by xkafka's consumers only (see [`super::Runnable`]).
    pub trait Sealed {}
    impl Sealed for crate::Consumer {}
    impl Sealed for crate::BatchConsumer {}
}

impl Runnable for Consumer {
    fn status(&self) -> StatusHandle {
        self.status_handle()
    }
    fn stopper(&self) -> ShutdownHandle {
        self.shutdown_handle()
    }
    fn run_with(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Pin<Box<dyn Future<Output = Result<Summary, Error>> + Send>> {
        Box::pin(self.run(shutdown))
    }
}

impl Runnable for BatchConsumer {
    fn status(&self) -> StatusHandle {
        self.status_handle()
    }
    fn stopper(&self) -> ShutdownHandle {
        self.shutdown_handle()
    }
    fn run_with(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Pin<Box<dyn Future<Output = Result<Summary, Error>> + Send>> {
        Box::pin(self.run(shutdown))
    }
}

/// Runs `consumer` until `until` holds, then shuts it down (bounded, as
/// always) and returns its [`Summary`]. Past `timeout` it is shut down too
/// and the error says what had happened by then. An error the consumer
/// stopped on is returned as [`KitError::Kafka`].
pub async fn run_until<C: Runnable>(
    consumer: C,
    until: Until,
    timeout: Duration,
) -> Result<Summary, KitError> {
    let status = consumer.status();
    let stop = consumer.stopper();
    let deadline = Instant::now() + timeout;
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (watch, flag, goal) = (status.clone(), reached.clone(), until.clone());
    let watcher = async move {
        loop {
            if holds(&goal, &watch) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            // The status is refreshed every 100 ms: poll a little faster.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let summary = consumer.run_with(Box::pin(watcher)).await;
    drop(stop);
    let summary = summary?;
    if reached.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(summary);
    }
    Err(KitError::Timeout {
        waited_for: match &until {
            Until::Handled(n) => format!("{n} messages handled"),
            Until::Committed(offsets) => format!("committed offsets {offsets:?}"),
        },
        got: format!(
            "{} handled ({} succeeded, {} skipped, {} failed); committed {:?}",
            summary.succeeded + summary.skipped + summary.failed,
            summary.succeeded,
            summary.skipped,
            summary.failed,
            summary.committed
        ),
        timeout,
    })
}

fn holds(until: &Until, status: &StatusHandle) -> bool {
    let snapshot = status.snapshot();
    match until {
        Until::Handled(n) => {
            let c = snapshot.counters;
            c.succeeded + c.skipped + c.failed >= *n
        }
        Until::Committed(targets) => targets.iter().all(|(topic, partition, offset)| {
            snapshot.partitions.iter().any(|p| {
                p.topic == *topic && p.partition == *partition && p.committed >= Some(*offset)
            })
        }),
    }
}

/// How long [`TestCluster::publish`] waits for each fixture's
/// acknowledgement unless [`TestCluster::publish_timeout`] says otherwise.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded cluster with what a test needs around it. Dropped, it
/// stops.
pub struct TestCluster {
    cluster: EmbeddedCluster,
    producer: Producer,
    publish_timeout: Duration,
}

impl TestCluster {
    /// Starts a one-broker embedded cluster and a producer for fixtures;
    /// must be called inside a tokio runtime.
    pub fn start() -> Result<Self, Error> {
        let cluster = EmbeddedCluster::start(1)?;
        let producer = fixtures_producer(cluster.bootstrap_servers(), DEFAULT_PUBLISH_TIMEOUT)?;
        Ok(TestCluster {
            cluster,
            producer,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
        })
    }

    /// How long [`publish`](Self::publish) waits for each fixture's
    /// acknowledgement (default [`DEFAULT_PUBLISH_TIMEOUT`]). librdkafka
    /// itself gives up on the fixture then (`message.timeout.ms`), so a
    /// fixture reported as timed out is never written later behind the
    /// test's back.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use xkafka::testing::{KitError, TestCluster};
    /// # use xkafka::Message;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = TestCluster::start()?.publish_timeout(Duration::from_secs(2))?;
    /// cluster.create_topic("orders", 1)?;
    /// cluster.cluster().broker_down(1)?;
    /// let err = cluster.publish([Message::builder("orders").value("1").build()]).await;
    /// assert!(matches!(err, Err(KitError::Timeout { .. })), "{err:?}");
    /// # Ok(()) }
    /// ```
    pub fn publish_timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        self.producer = fixtures_producer(self.cluster.bootstrap_servers(), timeout)?;
        self.publish_timeout = timeout;
        Ok(self)
    }

    /// `bootstrap.servers` of the cluster.
    pub fn brokers(&self) -> &str {
        self.cluster.bootstrap_servers()
    }

    /// The cluster itself, for fault injection.
    pub fn cluster(&self) -> &EmbeddedCluster {
        &self.cluster
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), Error> {
        self.cluster.create_topic(name, partitions)
    }

    /// Publishes `messages` in order, each acknowledged before the next;
    /// returns where they landed. A fixture not acknowledged within the
    /// [publish timeout](Self::publish_timeout) fails the call with
    /// [`KitError::Timeout`] (saying how many were published before it),
    /// and the ones after it are not published.
    pub async fn publish(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<Delivery>, KitError> {
        let timeout = self.publish_timeout;
        let mut deliveries = Vec::new();
        for message in messages {
            let what = format!(
                "the acknowledgement of fixture {} (to {})",
                deliveries.len(),
                message.topic()
            );
            let timed_out = |detail: &str| KitError::Timeout {
                waited_for: what.clone(),
                got: format!("{} fixtures published before it{detail}", deliveries.len()),
                timeout,
            };
            // librdkafka fails the fixture at `message.timeout.ms`; the
            // margin only guards against a client that never answers.
            let published = tokio::time::timeout(
                timeout + Duration::from_secs(5),
                self.producer.publish(message),
            )
            .await;
            match published {
                Ok(Ok(delivery)) => deliveries.push(delivery),
                Ok(Err(e)) if e.kafka_code() == Some(RDKafkaErrorCode::MessageTimedOut) => {
                    return Err(timed_out(&format!("; librdkafka gave up on it: {e}")));
                }
                Ok(Err(e)) => return Err(KitError::Kafka(e)),
                Err(_) => return Err(timed_out("; librdkafka did not answer either")),
            }
        }
        Ok(deliveries)
    }

    /// Reads `topic` from the beginning of every partition until it holds
    /// at least `count` messages, then on to the end of every partition,
    /// and returns **everything** it read (in each partition's order;
    /// partitions interleave), as a `read_committed` consumer sees it. So
    /// a test that asserts the length sees duplicates and strays:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use xkafka::testing::TestCluster;
    /// # use xkafka::Message;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = TestCluster::start()?;
    /// # cluster.create_topic("receipts", 2)?;
    /// // A service under test published receipt 1 twice.
    /// let receipt = |i: i32| Message::builder("receipts").key(i.to_string()).value("paid").build();
    /// cluster.publish([receipt(0), receipt(1), receipt(1)]).await?;
    /// let read = cluster.read("receipts", 2, Duration::from_secs(10)).await?;
    /// assert_eq!(read.len(), 3, "the duplicate is there to be seen");
    /// # Ok(()) }
    /// ```
    ///
    /// Fails after `timeout` saying how many it got (fewer than `count`,
    /// or not at the end of every partition yet). Stop the consumer that
    /// publishes first: what arrives after the read reached the end is not
    /// read.
    pub async fn read(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Message>, KitError> {
        let brokers = self.brokers().to_owned();
        let topic = topic.to_owned();
        let read =
            tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, count, timeout));
        read.await.map_err(|e| {
            KitError::Kafka(Error::Panicked {
                place: "the test kit's reader",
                message: e.to_string(),
            })
        })?
    }

    /// [`read`](Self::read), and fails with [`KitError::TooMany`] when the
    /// topic holds more than `count` messages: the assertion that each
    /// expected message is there exactly once (by count; check the
    /// contents on the returned messages).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use xkafka::testing::{KitError, TestCluster};
    /// # use xkafka::Message;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = TestCluster::start()?;
    /// # cluster.create_topic("receipts", 1)?;
    /// let receipt = |i: i32| Message::builder("receipts").key(i.to_string()).value("paid").build();
    /// cluster.publish([receipt(0), receipt(1), receipt(1)]).await?;
    /// let err = cluster.read_exactly("receipts", 2, Duration::from_secs(10)).await.unwrap_err();
    /// assert!(matches!(err, KitError::TooMany { found: 3, .. }), "{err}");
    /// // "expected 2 messages in receipts, found 3: alike: receipts[0]@2 = receipts[0]@1"
    /// assert!(err.to_string().contains("receipts[0]@2 = receipts[0]@1"), "{err}");
    /// # Ok(()) }
    /// ```
    pub async fn read_exactly(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Message>, KitError> {
        let read = self.read(topic, count, timeout).await?;
        if read.len() > count {
            return Err(KitError::TooMany {
                topic: topic.to_owned(),
                expected: count,
                found: read.len(),
                surplus: alike(&read),
            });
        }
        Ok(read)
    }
}

impl fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCluster")
            .field("brokers", &self.brokers())
            .finish_non_exhaustive()
    }
}

fn fixtures_producer(brokers: &str, timeout: Duration) -> Result<Producer, Error> {
    Producer::builder("xkafka-test-fixtures")
        .brokers([brokers])
        // librdkafka's own bound (default 300 s): past it the fixture fails
        // and is never sent.
        .config(
            "message.timeout.ms",
            timeout.as_millis().clamp(1, i32::MAX as u128).to_string(),
        )
        .error_handler(|err| tracing::warn!(%err, "test fixtures producer"))
        .build()
}

/// Names the messages of `read` that repeat an earlier one (same partition,
/// key, value and headers), at most ten.
fn alike(read: &[Message]) -> String {
    /// Partition, key, value and headers: what makes two messages alike.
    type Identity<'a> = (
        i32,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        Vec<(&'a str, Option<&'a [u8]>)>,
    );
    let mut first: HashMap<Identity<'_>, &Message> = HashMap::new();
    let mut pairs = Vec::new();
    for m in read {
        let id = (
            m.partition().unwrap_or(-1),
            m.key().map(|k| &k[..]),
            m.value().map(|v| &v[..]),
            m.headers()
                .iter()
                .map(|h| (h.name(), h.value().map(|v| &v[..])))
                .collect(),
        );
        match first.get(&id) {
            Some(earlier) => pairs.push(format!("{} = {}", m.location(), earlier.location())),
            None => {
                first.insert(id, m);
            }
        }
    }
    if pairs.is_empty() {
        return "no two alike (strays rather than duplicates)".to_owned();
    }
    let more = pairs.len().saturating_sub(10);
    pairs.truncate(10);
    let mut text = format!("alike: {}", pairs.join(", "));
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

fn read_topic(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Message>, KitError> {
    let deadline = Instant::now() + timeout;
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "xkafka-test-kit-reader")
        .set("enable.auto.commit", "false")
        // The end of each partition (its last stable offset, read_committed
        // being librdkafka's default) is reported: the read goes that far.
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| Error::kafka(crate::Operation::Create, e))?;
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::kafka(crate::Operation::Poll, e))?;
    let partitions: HashSet<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    client
        .assign(&tpl)
        .map_err(|e| Error::kafka(crate::Operation::Subscribe, e))?;
    let name: Arc<str> = topic.into();
    let group: Arc<str> = "xkafka-test-kit-reader".into();
    let mut messages = Vec::with_capacity(count);
    // Partitions read to their end since their last message.
    let mut at_end: HashSet<i32> = HashSet::new();
    loop {
        if messages.len() >= count && !partitions.is_empty() && at_end.len() == partitions.len() {
            return Ok(messages);
        }
        if Instant::now() >= deadline {
            let (waited_for, got) = if messages.len() < count {
                (
                    format!("{count} messages in {topic}"),
                    format!("read {} of them", messages.len()),
                )
            } else {
                (
                    format!("the end of every partition of {topic}"),
                    format!(
                        "read {} messages; partitions not at their end: {:?}",
                        messages.len(),
                        partitions.difference(&at_end).collect::<Vec<_>>()
                    ),
                )
            };
            return Err(KitError::Timeout {
                waited_for,
                got,
                timeout,
            });
        }
        match client.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                at_end.remove(&rdkafka::Message::partition(&m));
                messages.push(crate::convert::owned_message(
                    crate::convert::Fetched::of(&m),
                    name.clone(),
                    &group,
                ));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
}
