//! Conversions between rdkafka's borrowed records and our owned [`Message`].

use std::ffi::CStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Header as RdHeader, OwnedHeaders};

use crate::{Header, Headers, Message, Timestamp};

/// One shared `Arc<str>` per topic name, so that names handed out to
/// messages, assignments and delivery reports are clones (compared by
/// pointer, never allocated again) rather than fresh copies.
///
/// A hash set (one lookup per delivery report, whatever the number of
/// topics), pruned of the names nobody else holds any more whenever it has
/// doubled since the last pruning: a regex subscription or a producer
/// writing to ever new topics does not grow it without bound.
#[derive(Debug, Default)]
pub(crate) struct TopicNames(Mutex<Interned>);

#[derive(Debug, Default)]
struct Interned {
    names: rustc_hash::FxHashSet<Arc<str>>,
    /// Prune when the set reaches this size.
    prune_at: usize,
}

/// The smallest set that is ever pruned.
const PRUNE_FLOOR: usize = 64;

impl TopicNames {
    /// The shared name for `name`.
    pub(crate) fn get(&self, name: &str) -> Arc<str> {
        let mut interned = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = interned.names.get(name) {
            return found.clone();
        }
        if interned.names.len() >= interned.prune_at.max(PRUNE_FLOOR) {
            // Only the set holds these: no message, partition or report
            // refers to them, so nothing compares with them any more.
            interned.names.retain(|n| Arc::strong_count(n) > 1);
            interned.prune_at = 2 * interned.names.len();
        }
        let made: Arc<str> = name.into();
        interned.names.insert(made.clone());
        made
    }

    /// How many names are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).names.len()
    }
}

/// Most names a lock-free local cache in front of [`TopicNames`] keeps; past
/// it the cache starts again (it is searched linearly, and what it holds
/// cannot be pruned from the shared set).
pub(crate) const LOCAL_NAMES: usize = 32;

/// The entry of `names` (a small local cache) equal to `name`; when there is
/// none, the one `make` returns, kept for next time.
#[cfg(test)]
pub(crate) fn intern(
    names: &mut Vec<Arc<str>>,
    name: &str,
    make: impl FnOnce(&str) -> Arc<str>,
) -> Arc<str> {
    match held(names, name.as_bytes()) {
        Some(found) => found,
        None => keep(names, make(name)),
    }
}

/// [`intern`] for a name given as bytes (compared before any UTF-8 check):
/// `None` when it is not UTF-8.
pub(crate) fn intern_bytes(
    names: &mut Vec<Arc<str>>,
    name: &[u8],
    make: impl FnOnce(&str) -> Arc<str>,
) -> Option<Arc<str>> {
    if let Some(found) = held(names, name) {
        return Some(found);
    }
    let name = std::str::from_utf8(name).ok()?;
    Some(keep(names, make(name)))
}

fn held(names: &[Arc<str>], name: &[u8]) -> Option<Arc<str>> {
    names.iter().find(|n| n.as_bytes() == name).cloned()
}

fn keep(names: &mut Vec<Arc<str>>, made: Arc<str>) -> Arc<str> {
    if names.len() >= LOCAL_NAMES {
        names.clear();
    }
    names.push(made.clone());
    made
}

/// A record librdkafka handed over, by its C message: what `poll` returns
/// (rdkafka's [`BorrowedMessage`]) and what the poll loop takes in batches
/// from its fetch queue (`consumer/fetch_queue.rs`) read the same way.
#[derive(Clone, Copy)]
pub(crate) struct Fetched<'a> {
    rkmessage: &'a rdkafka::bindings::rd_kafka_message_t,
}

impl<'a> Fetched<'a> {
    /// The record behind `msg`.
    #[allow(unsafe_code)]
    pub(crate) fn of(msg: &'a BorrowedMessage<'_>) -> Self {
        // SAFETY: `msg` keeps its C message alive for `'a`.
        Fetched {
            rkmessage: unsafe { &*msg.ptr() },
        }
    }

    /// # Safety
    /// `ptr` is a live message of librdkafka's that nobody destroys for `'a`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn from_ptr(ptr: *const rdkafka::bindings::rd_kafka_message_t) -> Self {
        Fetched {
            // SAFETY: the caller's promise.
            rkmessage: unsafe { &*ptr },
        }
    }

    fn ptr(self) -> *mut rdkafka::bindings::rd_kafka_message_t {
        std::ptr::from_ref(self.rkmessage).cast_mut()
    }

    pub(crate) fn partition(self) -> i32 {
        self.rkmessage.partition
    }

    pub(crate) fn offset(self) -> i64 {
        self.rkmessage.offset
    }

    /// The opaque a produced message carries (its delivery target).
    pub(crate) fn opaque(self) -> usize {
        self.rkmessage._private.expose_provenance()
    }

    /// librdkafka's error for this record, if it is one (`err` set: an
    /// error librdkafka hands over in place of a record).
    pub(crate) fn error(self) -> Option<rdkafka::error::RDKafkaErrorCode> {
        let err = self.rkmessage.err;
        (err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| err.into())
    }

    #[allow(unsafe_code)]
    fn bytes(ptr: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's pointer and length of a key, value or error
        // text of a message that lives for `'a`.
        (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    }

    pub(crate) fn key(self) -> Option<&'a [u8]> {
        Self::bytes(self.rkmessage.key, self.rkmessage.key_len)
    }

    pub(crate) fn payload(self) -> Option<&'a [u8]> {
        Self::bytes(self.rkmessage.payload, self.rkmessage.len)
    }

    /// librdkafka's explanation of an error record (its payload), lossy.
    pub(crate) fn error_text(self) -> String {
        self.payload()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    #[allow(unsafe_code)]
    pub(crate) fn timestamp(self) -> Option<Timestamp> {
        use rdkafka::bindings::rd_kafka_timestamp_type_t as Type;
        let mut kind = Type::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; `kind` is a local.
        let ms = unsafe { rdkafka::bindings::rd_kafka_message_timestamp(self.ptr(), &mut kind) };
        match kind {
            // As rdkafka reads it: -1 is none, whatever the type.
            _ if ms == -1 => None,
            Type::RD_KAFKA_TIMESTAMP_CREATE_TIME => Some(Timestamp::CreateTime(ms)),
            Type::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => Some(Timestamp::LogAppendTime(ms)),
            _ => None,
        }
    }

    /// The topic name as bytes, without rdkafka's UTF-8 check (the poll
    /// loop compares it with the names it holds first); `None` for an
    /// error without a topic.
    #[allow(unsafe_code)]
    pub(crate) fn topic_bytes(self) -> Option<&'a [u8]> {
        let rkt = self.rkmessage.rkt;
        if rkt.is_null() {
            return None;
        }
        // SAFETY: the message holds its topic handle, whose NUL-terminated
        // name lives as long as the handle.
        Some(unsafe { CStr::from_ptr(rdkafka::bindings::rd_kafka_topic_name(rkt)) }.to_bytes())
    }
}

/// A record a raw rdkafka consumer fetched, as an owned [`Message`]
/// without a group (see [`crate::raw::owned_message`]).
pub(crate) fn from_borrowed(record: &BorrowedMessage<'_>) -> Message {
    use rdkafka::message::Message as _;
    let mut message = owned_message(Fetched::of(record), record.topic().into(), &"".into());
    message.set_group(None);
    message
}

/// Copies a fetched record into an owned [`Message`], so that nothing pins
/// librdkafka's fetch buffers while a handler runs.
pub(crate) fn owned_message(msg: Fetched<'_>, topic: Arc<str>, group: &Arc<str>) -> Message {
    let headers = if surely_headerless(msg) {
        Headers::new()
    } else {
        headers(msg)
    };
    // Built in one step: each builder call would copy the whole message.
    Message::fetched(
        topic,
        msg.partition(),
        msg.offset(),
        msg.key().map(Bytes::copy_from_slice),
        msg.payload().map(Bytes::copy_from_slice),
        headers,
        msg.timestamp(),
        group.clone(),
    )
}

/// librdkafka's `rd_kafka_msg_t` (rdkafka_msg.h) up to the unparsed headers
/// of a fetched record, as in the librdkafka versions [`LAYOUT_VERSIONS`]
/// names (checked: 2.12.1, the one rdkafka-sys 4.10 builds). Only read by
/// [`surely_headerless`], which cross-checks what it reads.
#[repr(C)]
struct RdKafkaMsg {
    rkmessage: rdkafka::bindings::rd_kafka_message_t,
    link: [*mut std::ffi::c_void; 2],
    flags: std::ffi::c_int,
    tstype: std::ffi::c_int,
    timestamp: i64,
    headers: *mut std::ffi::c_void,
    status: std::ffi::c_int,
    broker_id: i32,
    u: RdKafkaMsgUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RdKafkaMsgProducer {
    ts_timeout: i64,
    ts_enq: i64,
    ts_backoff: i64,
    msgid: u64,
    last_msgid: u64,
    retries: std::ffi::c_int,
    errstr: *const std::ffi::c_char,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct RdKafkaMsgConsumer {
    /// `rd_kafkap_bytes_t binhdrs`: the record's headers as on the wire,
    /// their count (a varint) first.
    binhdrs_len: i32,
    binhdrs_data: *const u8,
    binhdrs_inline: [u8; 1],
    leader_epoch: i32,
}

#[repr(C)]
union RdKafkaMsgUnion {
    producer: RdKafkaMsgProducer,
    consumer: RdKafkaMsgConsumer,
}

/// librdkafka versions (`rd_kafka_version() >> 16`: major, minor) whose
/// `rd_kafka_msg_t` is [`RdKafkaMsg`].
const LAYOUT_VERSIONS: &[u32] = &[0x020c];

/// Whether the linked librdkafka is one of [`LAYOUT_VERSIONS`] (asked once).
#[allow(unsafe_code)]
fn layout_known() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    match KNOWN.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            // SAFETY: a plain query without arguments.
            let version = unsafe { rdkafka::bindings::rd_kafka_version() } as u32;
            let known = LAYOUT_VERSIONS.contains(&(version >> 16));
            KNOWN.store(if known { 1 } else { 2 }, Ordering::Relaxed);
            known
        }
    }
}

/// Whether the fetched record certainly has no headers, found without
/// `rd_kafka_message_headers`: that call parses the headers on every
/// message, and even for none (a v2 record always carries their count)
/// allocates and frees a parse buffer, about a tenth of the poll thread's
/// time for small records. `false` means "maybe": the caller then asks
/// librdkafka.
///
/// It reads the unparsed headers librdkafka keeps in the record
/// (`rkm_u.consumer.binhdrs`), only for a librdkafka whose layout is known,
/// and only believes them when they are where a v2 record puts them:
/// right after the value, inside the fetched buffer. Then their first byte
/// is the header count, and `0` means none.
#[allow(unsafe_code)]
fn surely_headerless(msg: Fetched<'_>) -> bool {
    if !layout_known() {
        return false;
    }
    let ptr = msg.ptr();
    // SAFETY: `msg` is live; for a fetched record (the only kind `poll`
    // or a batch from the fetch queue hands out as a message) `ptr` is the first field of an
    // `rd_kafka_msg_t` embedded in its `rd_kafka_op_t`, whose layout in
    // this librdkafka version is `RdKafkaMsg`: the reads are in bounds and
    // of initialised fields.
    let (payload, len, parsed, hdr_len, hdr_data) = unsafe {
        let rkm = ptr.cast::<RdKafkaMsg>();
        let consumer = std::ptr::addr_of!((*rkm).u.consumer);
        (
            (*ptr).payload.cast::<u8>().cast_const(),
            (*ptr).len,
            std::ptr::addr_of!((*rkm).headers).read(),
            std::ptr::addr_of!((*consumer).binhdrs_len).read(),
            std::ptr::addr_of!((*consumer).binhdrs_data).read(),
        )
    };
    // Headers already parsed (or set by an interceptor): librdkafka's.
    if !parsed.is_null()
        || payload.is_null()
        || hdr_len < 1
        || hdr_data != payload.wrapping_add(len)
    {
        return false;
    }
    // SAFETY: `hdr_data` is librdkafka's pointer to the record's `hdr_len`
    // (>= 1) header bytes, inside the fetch buffer the message keeps alive.
    unsafe { *hdr_data == 0 }
}

/// Reads the headers through librdkafka's C API: rdkafka's own accessor
/// panics on a header name that is not UTF-8, which a hostile or buggy
/// producer could send; we decode names lossily instead.
#[allow(unsafe_code)]
fn headers(msg: Fetched<'_>) -> Headers {
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

/// The member id the group coordinator gave the consumer (empty before it
/// joined: `None`). rdkafka does not wrap `rd_kafka_memberid`.
#[allow(unsafe_code)]
pub(crate) fn member_id<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
) -> Option<String> {
    use rdkafka::consumer::Consumer as _;
    // SAFETY: the client is alive for the call; the returned string is
    // ours to free with `rd_kafka_mem_free`, once, after copying it.
    unsafe {
        let ptr = rdkafka::bindings::rd_kafka_memberid(consumer.client().native_ptr());
        if ptr.is_null() {
            return None;
        }
        let id = std::ffi::CStr::from_ptr(ptr).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(std::ptr::null_mut(), ptr.cast());
        (!id.is_empty()).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Message as _;

    /// The shortcut past librdkafka's header parse fires for records
    /// without headers, and gives what the parse gives for every record,
    /// compressed or not.
    #[test]
    fn headers_are_read_the_same_with_and_without_the_shortcut() {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        use rdkafka::producer::{BaseRecord, Producer as _, ThreadedProducer};
        use rdkafka::ClientConfig;
        use std::time::{Duration, Instant};

        let cluster = crate::mock::EmbeddedCluster::start(1).unwrap();
        for codec in ["none", "lz4"] {
            let topic = format!("headers-{codec}");
            cluster.create_topic(&topic, 1).unwrap();
            let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
                ClientConfig::new()
                    .set("bootstrap.servers", cluster.bootstrap_servers())
                    .set("compression.type", codec)
                    .create()
                    .unwrap();
            let with = || {
                OwnedHeaders::new()
                    .insert(RdHeader {
                        key: "a",
                        value: Some("1"),
                    })
                    .insert(RdHeader::<&str> {
                        key: "n",
                        value: None,
                    })
            };
            let records: Vec<BaseRecord<'_, str, str>> = vec![
                BaseRecord::to(&topic).key("k").payload("plain"),
                BaseRecord::to(&topic).key("k").payload("h").headers(with()),
                BaseRecord::to(&topic).key("k").headers(with()),
                BaseRecord::to(&topic).key("k"),
                BaseRecord::to(&topic).payload(""),
                BaseRecord::to(&topic).payload("").headers(with()),
            ];
            let sent = records.len();
            for record in records {
                producer.send(record).map_err(|(e, _)| e).unwrap();
            }
            producer.flush(Duration::from_secs(10)).unwrap();
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .set("group.id", format!("headers-{codec}"))
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            let group: Arc<str> = "g".into();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            while seen.len() < sent && Instant::now() < deadline {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    let shortcut = surely_headerless(Fetched::of(&m));
                    let owned = owned_message(Fetched::of(&m), topic.as_str().into(), &group);
                    let parsed = headers(Fetched::of(&m));
                    assert_eq!(owned.headers(), &parsed, "{codec} @{}", m.offset());
                    seen.push((shortcut, parsed.len()));
                }
            }
            assert_eq!(
                seen,
                vec![
                    (true, 0),
                    (false, 2),
                    (false, 2),
                    (false, 0),
                    // An empty value may come without a pointer: asked.
                    (false, 0),
                    (false, 2)
                ],
                "{codec}"
            );
        }
    }

    #[test]
    fn names_nobody_holds_are_pruned() {
        let names = TopicNames::default();
        let kept = names.get("kept");
        for i in 0..10_000 {
            // A topic seen once (a delivery report, a regex match) and gone.
            drop(names.get(&format!("gone-{i}")));
        }
        assert!(
            names.len() <= 2 * PRUNE_FLOOR,
            "{} names kept for 2 held",
            names.len()
        );
        // A held name survives every pruning and is still the shared one.
        assert!(Arc::ptr_eq(&kept, &names.get("kept")));
    }

    #[test]
    fn a_held_name_is_shared_not_copied() {
        let names = TopicNames::default();
        let a = names.get("a");
        let b = names.get("a");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &names.get("b")));
    }

    #[test]
    fn the_local_cache_stays_small() {
        let shared = TopicNames::default();
        let mut local = Vec::new();
        for i in 0..1_000 {
            let name = intern(&mut local, &format!("t{i}"), |n| shared.get(n));
            assert_eq!(&*name, format!("t{i}"));
            assert!(local.len() <= LOCAL_NAMES);
        }
        let again = intern(&mut local, "t999", |n| shared.get(n));
        assert!(Arc::ptr_eq(&again, &shared.get("t999")));
    }
}
