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
    key: Option<Bytes>,
    value: Option<Bytes>,
    group: Option<Arc<str>>,
    /// Headers and extensions, boxed together and only when there are
    /// some: with them inline a `Message` took 168 bytes, and every move of
    /// one (from the poll thread through the handler stack into the
    /// handler's future: several per message) was a call to `memcpy`. At
    /// 128 bytes a move is a few register copies (BENCHMARKS.md, "What was
    /// found and fixed").
    extra: Option<Box<Extra>>,
    place: Place,
}

/// The parts of a [`Message`] most consumed messages do not have.
#[derive(Clone, Default)]
struct Extra {
    headers: Headers,
    extensions: Extensions,
}

/// Partition, offset and timestamp, packed: as `Option<i32>`,
/// `Option<i64>` and `Option<Timestamp>` they took 40 bytes, here 24.
#[derive(Clone, Copy)]
struct Place {
    offset: i64,
    timestamp: i64,
    partition: i32,
    flags: u8,
}

const HAS_PARTITION: u8 = 1;
const HAS_OFFSET: u8 = 2;
const CREATE_TIME: u8 = 4;
const LOG_APPEND_TIME: u8 = 8;

impl Place {
    const NONE: Place = Place {
        offset: 0,
        timestamp: 0,
        partition: 0,
        flags: 0,
    };

    #[inline]
    fn partition(&self) -> Option<i32> {
        (self.flags & HAS_PARTITION != 0).then_some(self.partition)
    }

    #[inline]
    fn offset(&self) -> Option<i64> {
        (self.flags & HAS_OFFSET != 0).then_some(self.offset)
    }

    #[inline]
    fn timestamp(&self) -> Option<Timestamp> {
        if self.flags & CREATE_TIME != 0 {
            Some(Timestamp::CreateTime(self.timestamp))
        } else if self.flags & LOG_APPEND_TIME != 0 {
            Some(Timestamp::LogAppendTime(self.timestamp))
        } else {
            None
        }
    }

    #[inline]
    fn set_partition(&mut self, partition: Option<i32>) {
        self.partition = partition.unwrap_or(0);
        self.flags =
            (self.flags & !HAS_PARTITION) | (HAS_PARTITION * u8::from(partition.is_some()));
    }

    #[inline]
    fn set_offset(&mut self, offset: Option<i64>) {
        self.offset = offset.unwrap_or(0);
        self.flags = (self.flags & !HAS_OFFSET) | (HAS_OFFSET * u8::from(offset.is_some()));
    }

    #[inline]
    fn set_timestamp(&mut self, timestamp: Option<Timestamp>) {
        let (millis, kind) = match timestamp {
            Some(Timestamp::CreateTime(ms)) => (ms, CREATE_TIME),
            Some(Timestamp::LogAppendTime(ms)) => (ms, LOG_APPEND_TIME),
            None => (0, 0),
        };
        self.timestamp = millis;
        self.flags = (self.flags & !(CREATE_TIME | LOG_APPEND_TIME)) | kind;
    }
}

/// What [`Message::headers`] and [`Message::extensions`] lend when there
/// are none.
static NO_HEADERS: Headers = Headers::new();
static NO_EXTENSIONS: std::sync::LazyLock<Extensions> = std::sync::LazyLock::new(Extensions::new);

impl Message {
    /// Starts a message for `topic`.
    pub fn builder(topic: impl Into<Arc<str>>) -> MessageBuilder {
        MessageBuilder {
            message: Message {
                topic: topic.into(),
                key: None,
                value: None,
                group: None,
                extra: None,
                place: Place::NONE,
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
        let mut place = Place::NONE;
        place.set_partition(Some(partition));
        place.set_offset(Some(offset));
        place.set_timestamp(timestamp);
        Message {
            topic,
            key,
            value,
            group: Some(group),
            extra: (!headers.is_empty()).then(|| {
                Box::new(Extra {
                    headers,
                    extensions: Extensions::new(),
                })
            }),
            place,
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
        self.place.partition()
    }

    /// The offset in its partition; `None` on a message not yet stored.
    #[inline]
    pub fn offset(&self) -> Option<i64> {
        self.place.offset()
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
        self.extra.as_deref().map_or(&NO_HEADERS, |e| &e.headers)
    }

    /// The headers, to change them (e.g. in a producer middleware).
    #[inline]
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.extra.get_or_insert_with(Box::default).headers
    }

    /// The timestamp, if the record has one.
    #[inline]
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.place.timestamp()
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
        self.extra
            .as_deref()
            .map_or(&*NO_EXTENSIONS, |e| &e.extensions)
    }

    /// Mutable access to the extensions.
    #[inline]
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extra.get_or_insert_with(Box::default).extensions
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
        self.place.set_partition(partition);
    }

    /// Replaces the topic (e.g. a dead-letter middleware re-targeting a copy).
    pub fn set_topic(&mut self, topic: impl Into<Arc<str>>) {
        self.topic = topic.into();
    }

    /// Sets or clears the timestamp.
    pub fn set_timestamp(&mut self, timestamp: Option<Timestamp>) {
        self.place.set_timestamp(timestamp);
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
            key: None,
            value: None,
            group: None,
            extra: None,
            place: Place::NONE,
        };
        std::mem::replace(self, empty)
    }

    /// `topic[partition]@offset`, for logs and error messages.
    pub fn location(&self) -> String {
        match (self.partition(), self.offset()) {
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
            .field("partition", &self.partition())
            .field("offset", &self.offset())
            .field("key_len", &self.key.as_ref().map(Bytes::len))
            .field("value_len", &self.value.as_ref().map(Bytes::len))
            .field("headers", self.headers())
            .field("timestamp", &self.timestamp())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn empty_topic() -> Arc<str> {
    static EMPTY: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// Largest `String` or `Vec<u8>` that [`tight_bytes`] shrinks to its
/// length; a longer one keeps `Bytes::from`'s extra block, small beside it.
const TIGHT_MAX: usize = 4096;

/// `value.into()`, without the second allocation `Bytes::from` makes for a
/// `String` or `Vec<u8>` whose capacity exceeds its length: to share such
/// a buffer it boxes a reference count beside it, and every drop of the
/// message then frees two blocks and decrements an atomic. `format!("k{i}")`
/// (4 bytes in 8) and most serializers' buffers are like that. Shrunk to its
/// length first (in place, by the allocator, for a small one), the buffer
/// becomes a boxed slice that `Bytes` owns as it is. Which type `T` is, is
/// known at compile time: the check costs nothing at run time.
fn tight_bytes<T: Into<Bytes> + 'static>(value: T) -> Bytes {
    fn boxed(buf: Vec<u8>) -> Bytes {
        if buf.len() == buf.capacity() || buf.len() > TIGHT_MAX {
            Bytes::from(buf)
        } else {
            Bytes::from(buf.into_boxed_slice())
        }
    }
    let mut value = Some(value);
    let any: &mut dyn std::any::Any = &mut value;
    if let Some(s) = any.downcast_mut::<Option<String>>() {
        return s.take().map_or_else(Bytes::new, |s| boxed(s.into_bytes()));
    }
    if let Some(v) = any.downcast_mut::<Option<Vec<u8>>>() {
        return v.take().map_or_else(Bytes::new, boxed);
    }
    value.map_or_else(Bytes::new, Into::into)
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
    ///
    /// A `String` or `Vec<u8>` is taken over without copying, and a small
    /// one (`format!`'s, a serializer's buffer) without the second block
    /// `Bytes::from` would allocate to share it.
    pub fn key(mut self, key: impl Into<Bytes> + 'static) -> Self {
        self.message.key = Some(tight_bytes(key));
        self
    }

    /// The value (payload); taken over as [`key`](Self::key) is.
    pub fn value(mut self, value: impl Into<Bytes> + 'static) -> Self {
        self.message.value = Some(tight_bytes(value));
        self
    }

    /// Appends a header; the same name may be given several times.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.message.headers_mut().push(Header::new(name, value));
        self
    }

    /// Appends a header with a null value.
    pub fn null_header(mut self, name: impl Into<String>) -> Self {
        self.message.headers_mut().push(Header::null(name));
        self
    }

    /// Replaces all headers.
    #[inline]
    pub fn headers(mut self, headers: Headers) -> Self {
        match &mut self.message.extra {
            Some(extra) => extra.headers = headers,
            None if headers.is_empty() => {}
            None => *self.message.headers_mut() = headers,
        }
        self
    }

    /// An explicit target partition (otherwise the partitioner chooses).
    #[inline]
    pub fn partition(mut self, partition: i32) -> Self {
        self.message.place.set_partition(Some(partition));
        self
    }

    /// The offset: only meaningful for messages built in tests to feed a
    /// handler directly; the producer ignores it.
    #[inline]
    pub fn offset(mut self, offset: i64) -> Self {
        self.message.place.set_offset(Some(offset));
        self
    }

    /// A create-time timestamp in milliseconds since the Unix epoch.
    #[inline]
    pub fn timestamp_millis(mut self, millis: i64) -> Self {
        self.message
            .place
            .set_timestamp(Some(Timestamp::CreateTime(millis)));
        self
    }

    /// A timestamp of either kind.
    #[inline]
    pub fn timestamp(mut self, timestamp: Timestamp) -> Self {
        self.message.place.set_timestamp(Some(timestamp));
        self
    }

    /// The consumer group: set by consumers; useful in tests.
    pub fn group(mut self, group: impl Into<Arc<str>>) -> Self {
        self.message.group = Some(group.into());
        self
    }

    /// Adds a typed extension (see [`Message::extensions`]).
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.message.extensions_mut().insert(value);
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
    fn a_message_is_moved_without_a_call_to_memcpy() {
        // x86-64 copies at most 128 bytes inline (eight 16-byte moves);
        // past that a move is a `memcpy` call (see `Message::extra`).
        assert!(
            std::mem::size_of::<Message>() <= 128,
            "{} bytes",
            std::mem::size_of::<Message>()
        );
    }

    #[test]
    fn partition_offset_and_timestamp_are_set_and_cleared_apart() {
        let mut m = Message::builder("t").build();
        assert_eq!(
            (m.partition(), m.offset(), m.timestamp()),
            (None, None, None)
        );
        m.set_partition(Some(0));
        m.set_timestamp(Some(Timestamp::LogAppendTime(-5)));
        assert_eq!(m.partition(), Some(0));
        assert_eq!(m.offset(), None);
        assert_eq!(m.timestamp(), Some(Timestamp::LogAppendTime(-5)));
        m.set_timestamp(Some(Timestamp::CreateTime(7)));
        assert_eq!(m.timestamp(), Some(Timestamp::CreateTime(7)));
        m.set_partition(None);
        assert_eq!(m.partition(), None);
        assert_eq!(m.timestamp(), Some(Timestamp::CreateTime(7)));
        m.set_timestamp(None);
        assert_eq!(m.timestamp(), None);
        let fetched = Message::fetched(
            "t".into(),
            -1,
            i64::MIN,
            None,
            None,
            Headers::new(),
            None,
            "g".into(),
        );
        assert_eq!(fetched.partition(), Some(-1));
        assert_eq!(fetched.offset(), Some(i64::MIN));
        assert!(fetched.headers().is_empty());
        assert!(fetched.extensions().get::<u8>().is_none());
    }

    #[test]
    fn headers_and_extensions_are_kept_whichever_is_set_first() {
        let mut m = Message::builder("t").extension(5u8).build();
        assert!(m.headers().is_empty());
        m.headers_mut().insert("a", "1");
        assert_eq!(m.headers().get_str("a"), Some("1"));
        assert_eq!(m.extensions().get::<u8>(), Some(&5));
        let m = Message::builder("t")
            .header("a", "1")
            .headers(Headers::new())
            .extension(6u8)
            .build();
        assert!(m.headers().is_empty(), "replaced by the empty set");
        assert_eq!(m.extensions().get::<u8>(), Some(&6));
        let mut taken = m.clone();
        let out = taken.take();
        assert_eq!(out.extensions().get::<u8>(), Some(&6));
        assert!(taken.extensions().get::<u8>().is_none());
    }

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
