//! Dead-letter topic: when the inner layers (retry included) give up on a
//! message, it is published to a dead-letter topic with its key, value and
//! headers plus standard headers saying where it came from and why it
//! failed. Only once the broker acknowledged that copy does the original
//! count as skipped (its offset may then move on); if the dead-letter
//! publish fails, the original failure goes on to the error handler, with
//! the publish error attached — nothing is lost.
//!
//! Put it outside the retry layer, so that it sees the final failure:
//!
//! ```no_run
//! use std::time::Duration;
//! use xkafka::dlq::DeadLetterLayer;
//! use xkafka::middleware::retry::{Backoff, RetryLayer};
//! use xkafka::{Consumer, Decision, Message, Producer};
//!
//! # async fn run() -> Result<(), xkafka::Error> {
//! let producer = Producer::builder("orders-dlq")
//!     .brokers(["127.0.0.1:9092"])
//!     .error_handler(|err| eprintln!("{err}"))
//!     .build()?;
//! let consumer = Consumer::builder("billing")
//!     .brokers(["127.0.0.1:9092"])
//!     .topics(["orders"])
//!     .error_handler(|_| Decision::Stop)
//!     .layer(DeadLetterLayer::new(producer, "orders.dlq"))
//!     .layer(RetryLayer::new(Backoff::new().max_attempts(5)))
//!     .handler(|_m: Message| async { Err::<(), _>("cannot bill") })
//!     .build()?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tower::{Layer, Service};
use xkafka_core::middleware::retry::{AttemptLog, AttemptRecord};

use crate::{Ack, Batch, BoxError, Error, Message, Producer};

/// The headers a dead-lettered message carries besides its own.
pub mod headers {
    /// The topic it was consumed from.
    pub const ORIGINAL_TOPIC: &str = "x-dlq-original-topic";
    /// Its partition there.
    pub const ORIGINAL_PARTITION: &str = "x-dlq-original-partition";
    /// Its offset there.
    pub const ORIGINAL_OFFSET: &str = "x-dlq-original-offset";
    /// Its original timestamp, milliseconds since the Unix epoch.
    pub const ORIGINAL_TIMESTAMP: &str = "x-dlq-original-timestamp";
    /// The consumer group that gave up on it.
    pub const CONSUMER_GROUP: &str = "x-dlq-consumer-group";
    /// The last error, as text (at most 4 KiB).
    pub const ERROR: &str = "x-dlq-error";
    /// How many times the handler was called (1 without a retry layer).
    pub const ATTEMPTS: &str = "x-dlq-attempts";
    /// When the first attempt failed, milliseconds since the Unix epoch.
    pub const FIRST_FAILURE: &str = "x-dlq-first-failure";
}

/// What the `x-dlq-*` headers of a dead-lettered message say: where it came
/// from and why it failed — for a service that reprocesses a dead-letter
/// topic.
///
/// [`DeadLetterInfo::from_message`] reads them leniently: only the original
/// topic is required (without it the message is not a dead letter); any
/// other header that is missing, not UTF-8 or does not parse is `None`, so
/// a copy written by another tool, or damaged, is still readable. When a
/// header appears more than once, the last one counts (as in
/// [`Headers::get`](crate::Headers::get)).
///
/// ```
/// use xkafka::dlq::{dead_letter, DeadLetterInfo};
/// use xkafka::middleware::retry::AttemptRecord;
/// use xkafka::{BoxError, Message};
///
/// let original = Message::builder("orders").partition(2).offset(41).value("{oops").build();
/// let error: BoxError = "invalid JSON".into();
/// let record = AttemptRecord { attempts: 3, ..AttemptRecord::default() };
/// let copy = dead_letter(&original, "orders.dlq", &error, record);
///
/// // In the service that reads `orders.dlq`:
/// let info = DeadLetterInfo::from_message(&copy).expect("a dead letter");
/// assert_eq!(info.original_topic, "orders");
/// assert_eq!((info.original_partition, info.original_offset), (Some(2), Some(41)));
/// assert_eq!(info.attempts, Some(3));
/// assert_eq!(info.error.as_deref(), Some("invalid JSON"));
/// assert!(DeadLetterInfo::from_message(&original).is_none(), "not a dead letter");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterInfo {
    /// [`headers::ORIGINAL_TOPIC`]: the topic it was consumed from.
    pub original_topic: String,
    /// [`headers::ORIGINAL_PARTITION`].
    pub original_partition: Option<i32>,
    /// [`headers::ORIGINAL_OFFSET`].
    pub original_offset: Option<i64>,
    /// [`headers::ORIGINAL_TIMESTAMP`], milliseconds since the Unix epoch.
    pub original_timestamp: Option<i64>,
    /// [`headers::CONSUMER_GROUP`].
    pub consumer_group: Option<String>,
    /// [`headers::ERROR`]: the last error, as text (cut at 4 KiB).
    pub error: Option<String>,
    /// [`headers::ATTEMPTS`]: how many times the handler was called.
    pub attempts: Option<u32>,
    /// [`headers::FIRST_FAILURE`], to the millisecond.
    pub first_failure: Option<SystemTime>,
}

impl DeadLetterInfo {
    /// Reads the `x-dlq-*` headers of `message`; `None` when it has no
    /// (UTF-8) [`headers::ORIGINAL_TOPIC`] header, i.e. it is not a dead
    /// letter. See the [type docs](DeadLetterInfo).
    pub fn from_message(message: &Message) -> Option<DeadLetterInfo> {
        let h = message.headers();
        let text = |name: &str| h.get_str(name).map(str::to_owned);
        Some(DeadLetterInfo {
            original_topic: text(headers::ORIGINAL_TOPIC)?,
            original_partition: number(h.get_str(headers::ORIGINAL_PARTITION)),
            original_offset: number(h.get_str(headers::ORIGINAL_OFFSET)),
            original_timestamp: number(h.get_str(headers::ORIGINAL_TIMESTAMP)),
            consumer_group: text(headers::CONSUMER_GROUP),
            error: text(headers::ERROR),
            attempts: number(h.get_str(headers::ATTEMPTS)),
            first_failure: number(h.get_str(headers::FIRST_FAILURE))
                .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        })
    }
}

/// A decimal integer (optional sign) within `T`'s range.
fn number<T: TryFrom<i128>>(text: Option<&str>) -> Option<T> {
    text?.parse::<i128>().ok().and_then(|n| T::try_from(n).ok())
}

/// Every header [`dead_letter`] writes.
const ALL_HEADERS: [&str; 8] = [
    headers::ORIGINAL_TOPIC,
    headers::ORIGINAL_PARTITION,
    headers::ORIGINAL_OFFSET,
    headers::ORIGINAL_TIMESTAMP,
    headers::CONSUMER_GROUP,
    headers::ERROR,
    headers::ATTEMPTS,
    headers::FIRST_FAILURE,
];

/// Longest error text kept in the [`headers::ERROR`] header.
const MAX_ERROR_LEN: usize = 4096;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The dead-letter publish failed: the original failure stands.
#[derive(Debug, thiserror::Error)]
#[error("{error} (and publishing it to the dead-letter topic {topic} failed: {publish})")]
pub struct DeadLetterFailed {
    /// The handler's failure.
    #[source]
    pub error: BoxError,
    /// The dead-letter topic.
    pub topic: Arc<str>,
    /// Why the publish failed.
    pub publish: Error,
}

/// Sends failed messages to a dead-letter topic; see the [module docs](self).
#[derive(Clone)]
pub struct DeadLetterLayer {
    producer: Producer,
    topic: Arc<str>,
    timeout: Duration,
}

impl DeadLetterLayer {
    /// Dead-letters to `topic` with `producer` (keep it durable: `acks=all`,
    /// the default).
    pub fn new(producer: Producer, topic: impl Into<Arc<str>>) -> Self {
        DeadLetterLayer {
            producer,
            topic: topic.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long to wait for the dead-letter publish (default 30 s); past it
    /// the failure goes to the error handler.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for DeadLetterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("topic", &self.topic)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetter<S>;

    fn layer(&self, inner: S) -> DeadLetter<S> {
        DeadLetter {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`DeadLetterLayer`].
#[derive(Clone, Debug)]
pub struct DeadLetter<S> {
    inner: S,
    layer: DeadLetterLayer,
}

impl<S> Service<Message> for DeadLetter<S>
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
        let layer = self.layer.clone();
        Box::pin(async move {
            let error = match future.await {
                Ok(ack) => return Ok(ack),
                Err(e) => e.into(),
            };
            layer.send(&original, error, &log).await.map(|()| Ack::Skip)
        })
    }
}

impl DeadLetterLayer {
    /// Publishes the copy of a failed message; `Err` carries the original
    /// failure and why the publish failed.
    pub(crate) async fn send(
        &self,
        original: &Message,
        error: BoxError,
        log: &AttemptLog,
    ) -> Result<(), BoxError> {
        let dead = dead_letter(original, &self.topic, &error, log.get());
        let published = tokio::time::timeout(self.timeout, self.producer.publish(dead)).await;
        let publish = match published {
            Ok(Ok(delivery)) => {
                log.mark_dead_lettered();
                tracing::warn!(
                    message = %original.location(),
                    dead_letter = %format_args!("{}[{}]@{}", delivery.topic, delivery.partition, delivery.offset),
                    %error,
                    "dead-lettered",
                );
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => Error::Delivery {
                topic: self.topic.clone(),
                partition: None,
                source: rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                ),
            },
        };
        Err(Box::new(DeadLetterFailed {
            error,
            topic: self.topic.clone(),
            publish,
        }))
    }
}

/// The batch form: every failed message of the batch (recorded with
/// `Batch::fail`, or all unrecorded ones when the batch as a whole failed)
/// is dead-lettered and recorded as skipped; those whose publish failed stay
/// failed.
impl<S> Service<Batch> for DeadLetter<S>
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
        let layer = self.layer.clone();
        Box::pin(async move {
            let overall = future.await.map_err(Into::into);
            let failed = failures_of(&observer, &overall);
            if failed.is_empty() {
                return overall;
            }
            for (i, error) in failed {
                match layer.send(&observer.messages()[i], error, &logs[i]).await {
                    Ok(()) => observer.ack(i, Ack::Skip),
                    Err(e) => observer.fail(i, e),
                }
            }
            // Every message now carries its own outcome.
            Ok(Ack::Success)
        })
    }
}

/// Takes a batch's outcome apart, message by message: the successes (the
/// ones the handler recorded, or all unrecorded ones when the batch as a
/// whole succeeded) are recorded on the batch; the failures (recorded, or
/// all unrecorded ones when the batch failed) are returned, for a layer
/// that deals with them one by one (dead letters, retry tiers).
pub(crate) fn failures_of(
    batch: &Batch,
    overall: &Result<Ack, BoxError>,
) -> Vec<(usize, BoxError)> {
    let overall_error = overall.as_ref().err().map(ToString::to_string);
    let mut failed: Vec<(usize, BoxError)> = Vec::new();
    for (i, recorded) in batch.take_outcomes().into_iter().enumerate() {
        match (recorded, overall, &overall_error) {
            (Some(Ok(ack)), _, _) => batch.ack(i, ack),
            (Some(Err(e)), _, _) => failed.push((i, e)),
            (None, Ok(ack), _) => batch.ack(i, *ack),
            (None, Err(_), Some(text)) => failed.push((i, text.clone().into())),
            (None, Err(_), None) => {}
        }
    }
    failed
}

/// The copy of `original` that goes to the dead-letter topic: its key,
/// value and headers, plus the [`headers`] describing this failure.
///
/// `x-dlq-*` headers the original already carried (a message consumed from
/// a dead-letter topic and dead-lettered again) are replaced rather than
/// kept: stale ones would otherwise describe a field this failure does not
/// set (e.g. the timestamp), and readers would mix two failures.
pub fn dead_letter(
    original: &Message,
    topic: &str,
    error: &BoxError,
    record: AttemptRecord,
) -> Message {
    let own: crate::Headers = original
        .headers()
        .iter()
        .filter(|h| !ALL_HEADERS.contains(&h.name()))
        .cloned()
        .collect();
    let mut builder = Message::builder(topic).headers(own);
    if let Some(key) = original.key() {
        builder = builder.key(key.clone());
    }
    if let Some(value) = original.value() {
        builder = builder.value(value.clone());
    }
    let mut text = error.to_string();
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    builder = builder
        .header(headers::ORIGINAL_TOPIC, original.topic().to_owned())
        .header(headers::ERROR, text)
        .header(headers::ATTEMPTS, record.attempts.max(1).to_string());
    if let Some(p) = original.partition() {
        builder = builder.header(headers::ORIGINAL_PARTITION, p.to_string());
    }
    if let Some(o) = original.offset() {
        builder = builder.header(headers::ORIGINAL_OFFSET, o.to_string());
    }
    if let Some(ts) = original.timestamp() {
        builder = builder.header(headers::ORIGINAL_TIMESTAMP, ts.millis().to_string());
    }
    if let Some(g) = original.group() {
        builder = builder.header(headers::CONSUMER_GROUP, g.to_owned());
    }
    let first = record
        .first_failure
        .unwrap_or_else(std::time::SystemTime::now)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    builder
        .header(headers::FIRST_FAILURE, first.to_string())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_keeps_the_bytes_and_says_where_it_came_from() {
        let original = Message::builder("orders")
            .partition(3)
            .offset(41)
            .key(vec![0u8, 1])
            .value("payload")
            .header("trace", "abc")
            .timestamp_millis(1_000)
            .group("billing")
            .build();
        let error: BoxError = "x".repeat(10_000).into();
        let copy = dead_letter(
            &original,
            "orders.dlq",
            &error,
            AttemptRecord {
                attempts: 3,
                ..AttemptRecord::default()
            },
        );
        assert_eq!(copy.topic(), "orders.dlq");
        assert_eq!(copy.key(), original.key());
        assert_eq!(copy.value(), original.value());
        assert_eq!(
            copy.partition(),
            None,
            "the dead-letter topic's partitioner decides"
        );
        let h = copy.headers();
        assert_eq!(h.get_str("trace"), Some("abc"));
        assert_eq!(h.get_str(headers::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(h.get_str(headers::ORIGINAL_PARTITION), Some("3"));
        assert_eq!(h.get_str(headers::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(h.get_str(headers::ORIGINAL_TIMESTAMP), Some("1000"));
        assert_eq!(h.get_str(headers::CONSUMER_GROUP), Some("billing"));
        assert_eq!(h.get_str(headers::ATTEMPTS), Some("3"));
        assert_eq!(h.get_str(headers::ERROR).map(str::len), Some(MAX_ERROR_LEN));
        assert!(h.get_str(headers::FIRST_FAILURE).is_some());
    }

    #[test]
    fn dead_lettering_a_dead_letter_replaces_its_headers() {
        // Consumed from a dead-letter topic, without a timestamp this time.
        let earlier = Message::builder("orders.dlq")
            .header(headers::ORIGINAL_TOPIC, "orders")
            .header(headers::ORIGINAL_TIMESTAMP, "1000")
            .header("trace", "abc")
            .partition(0)
            .offset(5)
            .build();
        let error: BoxError = "still broken".into();
        let copy = dead_letter(&earlier, "orders.dlq.dlq", &error, AttemptRecord::default());
        let info = DeadLetterInfo::from_message(&copy).unwrap();
        assert_eq!(info.original_topic, "orders.dlq");
        assert_eq!(info.original_offset, Some(5));
        assert_eq!(info.original_timestamp, None, "not the stale one");
        assert_eq!(copy.headers().get_all(headers::ORIGINAL_TOPIC).count(), 1);
        assert_eq!(copy.headers().iter().next().unwrap().name(), "trace");
    }
}
