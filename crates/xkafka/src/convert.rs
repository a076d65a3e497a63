//! Conversions between rdkafka's borrowed records and our owned [`Message`].

use std::ffi::CStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Header as RdHeader, Message as _, OwnedHeaders};

use crate::{Header, Headers, Message, Timestamp};

pub(crate) fn timestamp(ts: rdkafka::Timestamp) -> Option<Timestamp> {
    match ts {
        rdkafka::Timestamp::NotAvailable => None,
        rdkafka::Timestamp::CreateTime(ms) => Some(Timestamp::CreateTime(ms)),
        rdkafka::Timestamp::LogAppendTime(ms) => Some(Timestamp::LogAppendTime(ms)),
    }
}

/// One shared `Arc<str>` per topic name, so that names handed out to
/// messages, assignments and delivery reports are clones (compared by
/// pointer, never allocated again) rather than fresh copies.
#[derive(Debug, Default)]
pub(crate) struct TopicNames(Mutex<Vec<Arc<str>>>);

impl TopicNames {
    /// The shared name for `name`.
    pub(crate) fn get(&self, name: &str) -> Arc<str> {
        let mut names = self.0.lock().unwrap_or_else(|p| p.into_inner());
        intern(&mut names, name, |n| n.into())
    }
}

/// The entry of `names` equal to `name`; when there is none, the one `make`
/// returns, kept for next time.
pub(crate) fn intern(
    names: &mut Vec<Arc<str>>,
    name: &str,
    make: impl FnOnce(&str) -> Arc<str>,
) -> Arc<str> {
    if let Some(found) = names.iter().find(|n| &***n == name) {
        return found.clone();
    }
    let made = make(name);
    names.push(made.clone());
    made
}

/// Copies a fetched record into an owned [`Message`], so that nothing pins
/// librdkafka's fetch buffers while a handler runs.
pub(crate) fn owned_message(
    msg: &BorrowedMessage<'_>,
    topic: Arc<str>,
    group: &Arc<str>,
) -> Message {
    let mut builder = Message::builder(topic)
        .partition(msg.partition())
        .offset(msg.offset())
        .group(group.clone())
        .headers(headers(msg));
    if let Some(key) = msg.key() {
        builder = builder.key(Bytes::copy_from_slice(key));
    }
    if let Some(value) = msg.payload() {
        builder = builder.value(Bytes::copy_from_slice(value));
    }
    if let Some(ts) = timestamp(msg.timestamp()) {
        builder = builder.timestamp(ts);
    }
    builder.build()
}

/// Reads the headers through librdkafka's C API: rdkafka's own accessor
/// panics on a header name that is not UTF-8, which a hostile or buggy
/// producer could send; we decode names lossily instead.
#[allow(unsafe_code)]
fn headers(msg: &BorrowedMessage<'_>) -> Headers {
    use rdkafka::bindings as rd;
    let mut hdrs = std::ptr::null_mut();
    // SAFETY: `msg.ptr()` is a live message for the lifetime of `msg`; the
    // headers it returns are owned by the message and only read here.
    let err = unsafe { rd::rd_kafka_message_headers(msg.ptr(), &mut hdrs) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return Headers::new();
    }
    // SAFETY: `hdrs` is non-null and owned by the message.
    let count = unsafe { rd::rd_kafka_header_cnt(hdrs) };
    let mut out = Headers::with_capacity(count);
    for idx in 0..count {
        let mut name = std::ptr::null();
        let mut value = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: idx < count; the out-pointers are valid locals.
        let err =
            unsafe { rd::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka guarantees a NUL-terminated name (so a name
        // is cut at its first NUL byte: librdkafka exposes no length) and
        // `size` readable bytes at `value` when it is non-null.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
        out.push(Header::from_wire(name, value));
    }
    out
}

/// Our headers as rdkafka's, for publishing.
pub(crate) fn owned_headers(headers: &Headers) -> Option<OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    let mut out = OwnedHeaders::new_with_capacity(headers.len());
    for h in headers {
        out = out.insert(RdHeader {
            key: h.name(),
            value: h.value().map(|v| v.as_ref()),
        });
    }
    Some(out)
}

/// The high watermark librdkafka cached from its last fetch of the
/// partition, without a broker round trip; `None` when unknown.
#[allow(unsafe_code)]
#[cfg(feature = "metrics")]
pub(crate) fn cached_high_watermark<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    use rdkafka::consumer::Consumer as _;
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client is alive for the call; the out-pointers are locals.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}
