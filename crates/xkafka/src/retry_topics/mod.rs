//! Non-blocking retries through retry topics with delay tiers.
//!
//! A message that fails moves to `<topic>.retry.1` (due after the first
//! delay), then `<topic>.retry.2`, …, then the dead-letter topic — while
//! the main topic keeps flowing. Only once the broker acknowledged the copy
//! does the original count as skipped (its offset may move), as with
//! [`DeadLetterLayer`]. [`permanent`](crate::middleware::retry::permanent)
//! errors go straight to the dead-letter topic.
//!
//! The consumer of the retry tiers waits for each message's due time
//! without blocking anything: [`ConsumerBuilder::not_before`](crate::ConsumerBuilder::not_before) with [`due`]
//! pauses a partition whose next message is not due yet and resumes it at
//! its due time; the poll loop never sleeps, and the other partitions and
//! tiers flow.
//!
//! ```no_run
//! use std::time::Duration;
//! use xkafka::retry_topics::{due, RetryTopics};
//! use xkafka::{Ack, BoxError, Consumer, Decision, Message, Producer};
//!
//! async fn handle(msg: Message) -> Result<Ack, BoxError> {
//!     // Calls a downstream service that may be down for minutes.
//!     Ok(Ack::Success)
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::builder("orders-retries")
//!     .brokers(["127.0.0.1:9092"])
//!     .error_handler(|err| eprintln!("{err}"))
//!     .build()?;
//! let retries = RetryTopics::new(producer, "orders")
//!     .tiers([Duration::from_secs(1), Duration::from_secs(30), Duration::from_secs(300)]);
//! retries.ensure_topics("127.0.0.1:9092", Duration::from_secs(10)).await?;
//!
//! let main = Consumer::builder("billing")
//!     .brokers(["127.0.0.1:9092"])
//!     .topics(["orders"])
//!     .error_handler(|_| Decision::Stop)
//!     .layer(retries.layer())
//!     .handler(handle)
//!     .build()?;
//! let tiers = Consumer::builder("billing-retries")
//!     .brokers(["127.0.0.1:9092"])
//!     .topics(retries.tier_topics())
//!     .not_before(due)
//!     .error_handler(|_| Decision::Stop)
//!     .layer(retries.layer())
//!     .handler(handle)
//!     .build()?;
//! let (a, b) = tokio::join!(main.run(std::future::pending()), tiers.run(std::future::pending()));
//! # a?; b?; Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tower::{Layer, Service};
use xkafka_core::middleware::retry::{is_permanent, AttemptLog};

use crate::dlq::DeadLetterLayer;
use crate::{Ack, Batch, BoxError, Error, Message, Producer};

/// The headers a message carries in a retry tier.
pub mod headers {
    /// Failed attempts so far (1 in the first tier).
    pub const ATTEMPT: &str = "x-retry-attempt";
    /// When it is due, milliseconds since the Unix epoch.
    pub const DUE: &str = "x-retry-due";
    /// The topic it was first consumed from.
    pub const ORIGINAL_TOPIC: &str = "x-retry-original-topic";
    /// Its partition there.
    pub const ORIGINAL_PARTITION: &str = "x-retry-original-partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "x-retry-original-offset";
    /// Its original timestamp, milliseconds since the Unix epoch.
    pub const ORIGINAL_TIMESTAMP: &str = "x-retry-original-timestamp";
    /// The first error, as text.
    pub const FIRST_ERROR: &str = "x-retry-first-error";
    /// The last error, as text.
    pub const LAST_ERROR: &str = "x-retry-last-error";
    /// When it first failed, milliseconds since the Unix epoch.
    pub const FIRST_FAILURE: &str = "x-retry-first-failure";
}

const ALL_HEADERS: [&str; 9] = [
    headers::ATTEMPT,
    headers::DUE,
    headers::ORIGINAL_TOPIC,
    headers::ORIGINAL_PARTITION,
    headers::ORIGINAL_OFFSET,
    headers::ORIGINAL_TIMESTAMP,
    headers::FIRST_ERROR,
    headers::LAST_ERROR,
    headers::FIRST_FAILURE,
];

const MAX_ERROR_LEN: usize = 4096;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// When a message in a retry tier is due (its [`headers::DUE`] header);
/// `None` for any other message. Give it to
/// [`ConsumerBuilder::not_before`](crate::ConsumerBuilder::not_before) on
/// the consumer of the tiers.
pub fn due(message: &Message) -> Option<SystemTime> {
    let ms: u64 = message.headers().get_str(headers::DUE)?.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Retry tiers for one source topic: their delays, topics and the
/// dead-letter topic after the last. Cheap to clone.
#[derive(Clone)]
pub struct RetryTopics {
    inner: Arc<Tiers>,
}

#[derive(Clone)]
struct Tiers {
    producer: Producer,
    source: String,
    delays: Vec<Duration>,
    topics: Vec<Arc<str>>,
    dead_letters: DeadLetterLayer,
    dead_letter_topic: Arc<str>,
    timeout: Duration,
}

impl RetryTopics {
    /// Tiers for `source` (default: one tier of 1 s), published with
    /// `producer` (keep it durable: `acks=all`, the default); dead letters
    /// go to `<source>.dlq`.
    pub fn new(producer: Producer, source: impl Into<String>) -> Self {
        let source = source.into();
        let dlq: Arc<str> = format!("{source}.dlq").into();
        RetryTopics {
            inner: Arc::new(Tiers {
                dead_letters: DeadLetterLayer::new(producer.clone(), dlq.clone()),
                producer,
                topics: vec![format!("{source}.retry.1").into()],
                delays: vec![Duration::from_secs(1)],
                source,
                dead_letter_topic: dlq,
                timeout: DEFAULT_TIMEOUT,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Tiers)) -> Self {
        f(Arc::make_mut(&mut self.inner));
        self
    }

    /// The tiers' delays, in order: tier `n` is `<source>.retry.<n>`
    /// (1-based). An empty list sends failures straight to the dead-letter
    /// topic.
    pub fn tiers(self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.edit(|t| {
            t.delays = delays.into_iter().collect();
            t.topics = (1..=t.delays.len())
                .map(|n| format!("{}.retry.{n}", t.source).into())
                .collect();
        })
    }

    /// The dead-letter topic after the last tier (default `<source>.dlq`).
    pub fn dead_letter_topic(self, topic: impl Into<Arc<str>>) -> Self {
        self.edit(|t| {
            t.dead_letter_topic = topic.into();
            t.dead_letters = DeadLetterLayer::new(t.producer.clone(), t.dead_letter_topic.clone())
                .timeout(t.timeout);
        })
    }

    /// How long a retry or dead-letter publish may take (default 30 s);
    /// past it the original failure goes to the error handler.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.edit(|t| {
            t.timeout = timeout;
            t.dead_letters = t.dead_letters.clone().timeout(timeout);
        })
    }

    /// The tier topics, in order (what the tiers' consumer subscribes to).
    pub fn tier_topics(&self) -> Vec<String> {
        self.inner.topics.iter().map(|t| t.to_string()).collect()
    }

    /// The dead-letter topic.
    pub fn dead_letter(&self) -> &str {
        &self.inner.dead_letter_topic
    }

    /// Creates the tier and dead-letter topics that are missing, with the
    /// source topic's partition count; an error says what could not be
    /// created (e.g. the cluster forbids it: create them by hand then).
    pub async fn ensure_topics(&self, brokers: &str, timeout: Duration) -> Result<(), Error> {
        let partitions =
            crate::admin::partition_count(brokers, &self.inner.source, timeout).await?;
        let mut wanted: Vec<(&str, i32)> = self
            .inner
            .topics
            .iter()
            .map(|t| (&**t, partitions))
            .collect();
        wanted.push((&self.inner.dead_letter_topic, partitions));
        crate::admin::ensure_topics(brokers, &wanted, &crate::Config::new(), timeout).await
    }

    /// The middleware for the main topic's consumer and for the tiers'
    /// consumer: a failure moves the message to its next tier (or the
    /// dead-letter topic), and the original counts as skipped once that
    /// copy is acknowledged. If the publish fails, the original failure
    /// (with the publish error attached) goes on to the error handler.
    pub fn layer(&self) -> RetryTopicsLayer {
        RetryTopicsLayer {
            tiers: self.clone(),
        }
    }

    /// The copy of `original` (which failed with `error`) for tier `tier`
    /// (0-based), due `delay` from now.
    fn copy_for(&self, original: &Message, tier: usize, error: &str) -> Message {
        let t = &self.inner;
        let now = now_ms();
        let h = original.headers();
        let carried = |name: &str| h.get_str(name).map(str::to_owned);
        let mut b = carry(original, t.topics[tier].clone());
        if let Some(p) = original.partition() {
            // Same partition number: the tiers have the source's count, so
            // a key keeps its partition (and its order within a tier).
            b = b.partition(p);
        }
        let first = |name: &str, fallback: Option<String>| carried(name).or(fallback);
        let due = now + u64::try_from(t.delays[tier].as_millis()).unwrap_or(u64::MAX);
        b = b
            .header(headers::ATTEMPT, (tier + 1).to_string())
            .header(headers::DUE, due.to_string())
            .header(headers::LAST_ERROR, cut(error));
        for (name, value) in [
            (
                headers::ORIGINAL_TOPIC,
                first(headers::ORIGINAL_TOPIC, Some(original.topic().to_owned())),
            ),
            (
                headers::ORIGINAL_PARTITION,
                first(
                    headers::ORIGINAL_PARTITION,
                    original.partition().map(|p| p.to_string()),
                ),
            ),
            (
                headers::ORIGINAL_OFFSET,
                first(
                    headers::ORIGINAL_OFFSET,
                    original.offset().map(|o| o.to_string()),
                ),
            ),
            (
                headers::ORIGINAL_TIMESTAMP,
                first(
                    headers::ORIGINAL_TIMESTAMP,
                    original.timestamp().map(|ts| ts.millis().to_string()),
                ),
            ),
            (
                headers::FIRST_ERROR,
                first(headers::FIRST_ERROR, Some(cut(error))),
            ),
            (
                headers::FIRST_FAILURE,
                first(headers::FIRST_FAILURE, Some(now.to_string())),
            ),
        ] {
            if let Some(value) = value {
                b = b.header(name, value);
            }
        }
        b.build()
    }

    /// The message as the dead-letter topic should see it: from its
    /// original topic, partition and offset, without the retry headers.
    fn as_original(&self, message: &Message) -> Message {
        let h = message.headers();
        let Some(topic) = h.get_str(headers::ORIGINAL_TOPIC) else {
            return message.clone();
        };
        let mut b = carry(message, topic.to_owned());
        if let Some(p) = h
            .get_str(headers::ORIGINAL_PARTITION)
            .and_then(|p| p.parse().ok())
        {
            b = b.partition(p);
        }
        if let Some(o) = h
            .get_str(headers::ORIGINAL_OFFSET)
            .and_then(|o| o.parse().ok())
        {
            b = b.offset(o);
        }
        if let Some(ts) = h
            .get_str(headers::ORIGINAL_TIMESTAMP)
            .and_then(|t| t.parse().ok())
        {
            b = b.timestamp_millis(ts);
        }
        if let Some(g) = message.group() {
            b = b.group(g.to_owned());
        }
        b.build()
    }

    async fn handle_failure(
        &self,
        original: Message,
        error: BoxError,
        log: AttemptLog,
    ) -> Result<Ack, BoxError> {
        let attempt: usize = original
            .headers()
            .get_str(headers::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0);
        let t = &self.inner;
        if attempt >= t.delays.len() || is_permanent(error.as_ref()) {
            let view = self.as_original(&original);
            return t
                .dead_letters
                .send(&view, error, &log)
                .await
                .map(|()| Ack::Skip);
        }
        let copy = self.copy_for(&original, attempt, &error.to_string());
        let published = tokio::time::timeout(t.timeout, t.producer.publish(copy)).await;
        match published {
            Ok(Ok(delivery)) => {
                tracing::info!(
                    message = %original.location(),
                    tier = attempt + 1,
                    retry = %format_args!("{}[{}]@{}", delivery.topic, delivery.partition, delivery.offset),
                    %error,
                    "moved to a retry tier",
                );
                Ok(Ack::Skip)
            }
            Ok(Err(publish)) => Err(Box::new(RetryPublishFailed {
                error,
                topic: t.topics[attempt].clone(),
                publish: Some(publish),
            })),
            Err(_) => Err(Box::new(RetryPublishFailed {
                error,
                topic: t.topics[attempt].clone(),
                publish: None,
            })),
        }
    }
}

impl fmt::Debug for RetryTopics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryTopics")
            .field("source", &self.inner.source)
            .field("delays", &self.inner.delays)
            .field("dead_letter_topic", &self.inner.dead_letter_topic)
            .finish_non_exhaustive()
    }
}

/// The retry publish failed (or timed out): the original failure stands.
#[derive(Debug, thiserror::Error)]
#[error("{error} (and moving it to the retry topic {topic} failed: {})", publish.as_ref().map_or_else(|| "timed out".to_owned(), ToString::to_string))]
pub struct RetryPublishFailed {
    /// The handler's failure.
    #[source]
    pub error: BoxError,
    /// The retry topic.
    pub topic: Arc<str>,
    /// Why the publish failed (`None`: it timed out).
    pub publish: Option<Error>,
}

/// The middleware made by [`RetryTopics::layer`].
#[derive(Clone, Debug)]
pub struct RetryTopicsLayer {
    tiers: RetryTopics,
}

impl<S> Layer<S> for RetryTopicsLayer {
    type Service = RetryTopicsService<S>;
    fn layer(&self, inner: S) -> RetryTopicsService<S> {
        RetryTopicsService {
            inner,
            tiers: self.tiers.clone(),
        }
    }
}

/// The service made by [`RetryTopicsLayer`].
#[derive(Clone, Debug)]
pub struct RetryTopicsService<S> {
    inner: S,
    tiers: RetryTopics,
}

impl<S> Service<Message> for RetryTopicsService<S>
where
    S: Service<Message, Response = Ack>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Ack, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut message: Message) -> Self::Future {
        let log = AttemptLog::of(&mut message);
        let original = message.clone();
        let future = self.inner.call(message);
        let tiers = self.tiers.clone();
        Box::pin(async move {
            let error: BoxError = match future.await {
                Ok(ack) => return Ok(ack),
                Err(e) => e.into(),
            };
            tiers.handle_failure(original, error, log).await
        })
    }
}

/// The batch form: every failed message of the batch (recorded with
/// `Batch::fail`, or all unrecorded ones when the batch as a whole failed)
/// moves to its next tier (or the dead-letter topic) and is recorded as
/// skipped; those whose publish failed stay failed.
impl<S> Service<Batch> for RetryTopicsService<S>
where
    S: Service<Batch, Response = Ack>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Ack;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Ack, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut batch: Batch) -> Self::Future {
        let logs: Vec<AttemptLog> = batch
            .messages_mut()
            .iter_mut()
            .map(AttemptLog::of)
            .collect();
        let observer = batch.clone();
        let future = self.inner.call(batch);
        let tiers = self.tiers.clone();
        Box::pin(async move {
            let overall = future.await.map_err(Into::into);
            let failed = crate::dlq::failures_of(&observer, &overall);
            if failed.is_empty() {
                return overall;
            }
            for (i, error) in failed {
                let message = observer.messages()[i].clone();
                match tiers.handle_failure(message, error, logs[i].clone()).await {
                    Ok(ack) => observer.ack(i, ack),
                    Err(e) => observer.fail(i, e),
                }
            }
            Ok(Ack::Success)
        })
    }
}

/// A message to `topic` with `message`'s key, value and headers, the
/// retry headers left out.
fn carry(message: &Message, topic: impl Into<Arc<str>>) -> crate::MessageBuilder {
    let own: crate::Headers = message
        .headers()
        .iter()
        .filter(|x| !ALL_HEADERS.contains(&x.name()))
        .cloned()
        .collect();
    let mut b = Message::builder(topic).headers(own);
    if let Some(key) = message.key() {
        b = b.key(key.clone());
    }
    if let Some(value) = message.value() {
        b = b.value(value.clone());
    }
    b
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_ERROR_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_carries_its_origin_through_every_tier() {
        let recorder = crate::testing::RecordingProducer::new().unwrap();
        let tiers = RetryTopics::new(recorder.producer(), "orders")
            .tiers([Duration::from_millis(100), Duration::from_secs(1)]);
        assert_eq!(tiers.tier_topics(), ["orders.retry.1", "orders.retry.2"]);
        let original = Message::builder("orders")
            .partition(2)
            .offset(41)
            .key("k")
            .value("v")
            .header("traceparent", "00-abc")
            .timestamp_millis(1_000)
            .build();
        let before = now_ms();
        let first = tiers.copy_for(&original, 0, "down");
        let h = first.headers();
        assert_eq!(first.topic(), "orders.retry.1");
        assert_eq!(first.partition(), Some(2));
        assert_eq!(h.get_str(headers::ATTEMPT), Some("1"));
        assert_eq!(h.get_str(headers::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(h.get_str(headers::ORIGINAL_TIMESTAMP), Some("1000"));
        assert_eq!(
            h.get_str("traceparent"),
            Some("00-abc"),
            "the trace goes on"
        );
        let due_ms: u64 = h.get_str(headers::DUE).unwrap().parse().unwrap();
        assert!(due_ms >= before + 100 && due_ms <= now_ms() + 100);
        assert!(due(&first).is_some() && due(&original).is_none());

        // Consumed from tier 1 (its own partition and offset), failing again.
        let mut fetched = first.clone();
        fetched.set_partition(Some(0));
        let second = tiers.copy_for(&fetched, 1, "still down");
        let h = second.headers();
        assert_eq!(second.topic(), "orders.retry.2");
        assert_eq!(h.get_str(headers::ATTEMPT), Some("2"));
        assert_eq!(h.get_str(headers::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(
            h.get_str(headers::ORIGINAL_PARTITION),
            Some("2"),
            "the first origin stays"
        );
        assert_eq!(h.get_str(headers::FIRST_ERROR), Some("down"));
        assert_eq!(h.get_str(headers::LAST_ERROR), Some("still down"));
        assert_eq!(h.iter().filter(|x| x.name() == headers::ATTEMPT).count(), 1);

        // What the dead-letter topic sees: the original, not the tier.
        let view = tiers.as_original(&second);
        assert_eq!(
            (view.topic(), view.partition(), view.offset()),
            ("orders", Some(2), Some(41))
        );
        assert!(view
            .headers()
            .iter()
            .all(|x| !x.name().starts_with("x-retry-")));
    }
}
