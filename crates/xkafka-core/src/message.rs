//! The message: what a handler receives and what a producer publishes.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Extensions;

use crate::headers::{Header, Headers};

/// A Kafka record timestamp, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timestamp {
    /// Set by the producer (or by the client when the producer gave none).
    CreateTime(i64),
    /// Set by the broker when it appended the record (topic configured with
    /// `message.timestamp.type=LogAppendTime`).
    LogAppendTime(i64),
}

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn millis(&self) -> i64 {
        match *self {
            Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => ms,
        }
    }

    /// As a [`SystemTime`]; `None` for timestamps before the epoch.
    pub fn to_system_time(&self) -> Option<SystemTime> {
        u64::try_from(self.millis())
            .ok()
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// A create-time timestamp from a [`SystemTime`] (clamped to the epoch).
    pub fn from_system_time(time: SystemTime) -> Self {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp::CreateTime(ms)
    }
}

/// A Kafka message: the request of xkafka's HTTP-like model.
///
/// Consumers hand handlers an owned `Message` (key and value are
/// [`Bytes`], cheap to clone, never borrowed from librdkafka), so handler
/// futures are `'static` and can be moved to other tasks. Producers take the
/// same type, built with [`Message::builder`].
///
/// Fields that only exist once a record is in a topic are optional:
/// [`Message::partition`] is `None` on a message to publish that lets the
/// partitioner choose, [`Message::offset`] is `None` until the record is
/// stored. On consumed messages both are always set.
///
/// ```
/// use xkafka_core::Message;
///
/// let msg = Message::builder("orders")
///     .key("customer-42")
///     .value(r#"{"total": 12}"#)
///     .header("content-type", "application/json")
///     .partition(3)
///     .timestamp_millis(1_700_000_000_000)
///     .build();
/// assert_eq!(msg.topic(), "orders");
/// assert_eq!(msg.key_str(), Some("customer-42"));
/// assert_eq!(msg.headers().get_str("content-type"), Some("application/json"));
/// assert_eq!(msg.partition(), Some(3));
/// assert_eq!(msg.offset(), None);
/// ```
#[derive(Clone)]
pub struct Message {
    topic: Arc<str>,
    partition: Option<i32>,
    offset: Option<i64>,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Headers,
    timestamp: Option<Timestamp>,
    group: Option<Arc<str>>,
    extensions: Extensions,
}

impl Message {
    /// Starts a message for `topic`.
    pub fn builder(topic: impl Into<Arc<str>>) -> MessageBuilder {
        MessageBuilder {
            message: Message {
                topic: topic.into(),
                partition: None,
                offset: None,
                key: None,
                value: None,
                headers: Headers::new(),
                timestamp: None,
                group: None,
                extensions: Extensions::new(),
            },
        }
    }

    /// A message as a consumer fetched it, made in one step: the consumer's
    /// hot path, where each builder step would copy the whole message.
    /// Not for applications: use [`Message::builder`].
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn fetched(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Headers,
        timestamp: Option<Timestamp>,
        group: Arc<str>,
    ) -> Message {
        Message {
            topic,
            partition: Some(partition),
            offset: Some(offset),
            key,
            value,
            headers,
            timestamp,
            group: Some(group),
            extensions: Extensions::new(),
        }
    }

    /// The topic.
    #[inline]
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic as a shared string (cheap to clone into logs or metrics).
    #[inline]
    pub fn topic_arc(&self) -> &Arc<str> {
        &self.topic
    }

    /// The partition: always set on consumed messages; on a message to
    /// publish, `None` lets the configured partitioner choose.
    #[inline]
    pub fn partition(&self) -> Option<i32> {
        self.partition
    }

    /// The offset in its partition; `None` on a message not yet stored.
    #[inline]
    pub fn offset(&self) -> Option<i64> {
        self.offset
    }

    /// The key, `None` for a null key.
    #[inline]
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The key as UTF-8 text; `None` when null or not UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value (payload), `None` for a null value (a tombstone).
    #[inline]
    pub fn value(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }

    /// The value as UTF-8 text; `None` when null or not UTF-8.
    pub fn value_str(&self) -> Option<&str> {
        self.value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The headers, in wire order.
    #[inline]
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, to change them (e.g. in a producer middleware).
    #[inline]
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The timestamp, if the record has one.
    #[inline]
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.timestamp
    }

    /// The consumer group that read the message; `None` on messages to publish.
    #[inline]
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Typed, per-message values that middleware pass to inner layers and
    /// handlers (like `http::Request::extensions`). Never sent to Kafka.
    #[inline]
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Mutable access to the extensions.
    #[inline]
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Replaces the key.
    pub fn set_key(&mut self, key: Option<Bytes>) {
        self.key = key;
    }

    /// Replaces the value.
    pub fn set_value(&mut self, value: Option<Bytes>) {
        self.value = value;
    }

    /// Sets or clears the target partition.
    pub fn set_partition(&mut self, partition: Option<i32>) {
        self.partition = partition;
    }

    /// Replaces the topic (e.g. a dead-letter middleware re-targeting a copy).
    pub fn set_topic(&mut self, topic: impl Into<Arc<str>>) {
        self.topic = topic.into();
    }

    /// Sets or clears the timestamp.
    pub fn set_timestamp(&mut self, timestamp: Option<Timestamp>) {
        self.timestamp = timestamp;
    }

    /// Sets or clears the consumer group that read it (test kits stamp
    /// messages built in a test as a consumer stamps fetched ones).
    pub fn set_group(&mut self, group: Option<Arc<str>>) {
        self.group = group;
    }

    /// Moves the message out, leaving an empty one (no topic, no payload) in
    /// its place; used by the `Message` extractor.
    pub fn take(&mut self) -> Message {
        // Made in place, not through the builder: every handler taking a
        // `Message` goes through here.
        let empty = Message {
            topic: empty_topic(),
            partition: None,
            offset: None,
            key: None,
            value: None,
            headers: Headers::new(),
            timestamp: None,
            group: None,
            extensions: Extensions::new(),
        };
        std::mem::replace(self, empty)
    }

    /// `topic[partition]@offset`, for logs and error messages.
    pub fn location(&self) -> String {
        match (self.partition, self.offset) {
            (Some(p), Some(o)) => format!("{}[{p}]@{o}", self.topic),
            (Some(p), None) => format!("{}[{p}]", self.topic),
            _ => self.topic.to_string(),
        }
    }
}

impl fmt::Debug for Message {
    // Key and value are shown by length: payloads may hold personal data or
    // secrets and must not leak into logs through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("key_len", &self.key.as_ref().map(Bytes::len))
            .field("value_len", &self.value.as_ref().map(Bytes::len))
            .field("headers", &self.headers)
            .field("timestamp", &self.timestamp)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn empty_topic() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// Builds a [`Message`]; see [`Message::builder`].
#[derive(Debug)]
#[must_use = "call .build() to get the message"]
pub struct MessageBuilder {
    message: Message,
}

impl MessageBuilder {
    /// The key (anything that converts into [`Bytes`]: `&'static str`,
    /// `String`, `Vec<u8>`, `Bytes`…).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.message.key = Some(key.into());
        self
    }

    /// The value (payload).
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.message.value = Some(value.into());
        self
    }

    /// Appends a header; the same name may be given several times.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.message.headers.push(Header::new(name, value));
        self
    }

    /// Appends a header with a null value.
    pub fn null_header(mut self, name: impl Into<String>) -> Self {
        self.message.headers.push(Header::null(name));
        self
    }

    /// Replaces all headers.
    #[inline]
    pub fn headers(mut self, headers: Headers) -> Self {
        self.message.headers = headers;
        self
    }

    /// An explicit target partition (otherwise the partitioner chooses).
    #[inline]
    pub fn partition(mut self, partition: i32) -> Self {
        self.message.partition = Some(partition);
        self
    }

    /// The offset: only meaningful for messages built in tests to feed a
    /// handler directly; the producer ignores it.
    #[inline]
    pub fn offset(mut self, offset: i64) -> Self {
        self.message.offset = Some(offset);
        self
    }

    /// A create-time timestamp in milliseconds since the Unix epoch.
    #[inline]
    pub fn timestamp_millis(mut self, millis: i64) -> Self {
        self.message.timestamp = Some(Timestamp::CreateTime(millis));
        self
    }

    /// A timestamp of either kind.
    #[inline]
    pub fn timestamp(mut self, timestamp: Timestamp) -> Self {
        self.message.timestamp = Some(timestamp);
        self
    }

    /// The consumer group: set by consumers; useful in tests.
    pub fn group(mut self, group: impl Into<Arc<str>>) -> Self {
        self.message.group = Some(group.into());
        self
    }

    /// Adds a typed extension (see [`Message::extensions`]).
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.message.extensions.insert(value);
        self
    }

    /// The message.
    #[inline]
    pub fn build(self) -> Message {
        self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_every_field() {
        let msg = Message::builder("t")
            .key(vec![0xff, 0x00])
            .value("v")
            .header("h", "1")
            .null_header("n")
            .partition(2)
            .offset(7)
            .timestamp(Timestamp::LogAppendTime(5))
            .group("g")
            .extension(42u32)
            .build();
        assert_eq!(msg.key().map(|k| k.as_ref()), Some(&[0xff, 0x00][..]));
        assert_eq!(msg.key_str(), None, "invalid UTF-8 is not text");
        assert_eq!(msg.value_str(), Some("v"));
        assert_eq!(msg.headers().len(), 2);
        assert_eq!(msg.partition(), Some(2));
        assert_eq!(msg.offset(), Some(7));
        assert_eq!(msg.timestamp(), Some(Timestamp::LogAppendTime(5)));
        assert_eq!(msg.group(), Some("g"));
        assert_eq!(msg.extensions().get::<u32>(), Some(&42));
        assert_eq!(msg.location(), "t[2]@7");
    }

    #[test]
    fn debug_hides_payload() {
        let msg = Message::builder("t")
            .key("user-password")
            .value("card=4111")
            .build();
        let shown = format!("{msg:?}");
        assert!(
            !shown.contains("user-password") && !shown.contains("4111"),
            "{shown}"
        );
        assert!(shown.contains("key_len: Some(13)"), "{shown}");
    }

    #[test]
    fn timestamp_conversions() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1234);
        let ts = Timestamp::from_system_time(t);
        assert_eq!(ts, Timestamp::CreateTime(1234));
        assert_eq!(ts.to_system_time(), Some(t));
        assert_eq!(Timestamp::CreateTime(-1).to_system_time(), None);
    }
}
