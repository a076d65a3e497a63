//! Bad input on the real broker: what a handler sees when producers send
//! empty, null, huge or non-UTF-8 data, duplicate headers, malformed JSON or
//! a garbage `traceparent` — and that the consumer keeps going (offsets
//! committed to the end) unless its error handler says stop. The policy is
//! written down in the crate docs ("Bad input", `src/lib.rs`).
//!
//! Sizes: librdkafka's producer refuses a message over its
//! `message.max.bytes` (default 1,000,000 bytes) before sending it; the
//! broker refuses a batch over its own `message.max.bytes` (Kafka's default
//! 1,048,588 bytes; the test broker of `scripts/broker.sh` allows 8 MiB, and
//! a topic can raise it with `max.message.bytes`). The test uses 1 MiB and
//! 4 MiB values with the consumer's defaults: `fetch.max.bytes` 50 MiB, and
//! `max.partition.fetch.bytes` 1 MiB, a soft limit — Kafka returns the first
//! record of a fetch whatever its size, so a larger record still arrives.
//! (On Tansu 0.6, the broker used before, a record over 5 MiB was stored but
//! never served, and stalled its partition.)
#![allow(unsafe_code)] // Header names that are not UTF-8 go through librdkafka's C API.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;
use tokio::sync::Notify;
use xkafka::dlq::{headers as dlq, DeadLetterInfo, DeadLetterLayer};
use xkafka::extract::{Json, Key, SkipRejectedLayer};
use xkafka::middleware::{from_fn, Next};
use xkafka::raw::rdkafka::message::{BorrowedHeaders, OwnedHeaders};
use xkafka::raw::rdkafka::producer::{FutureProducer, FutureRecord};
use xkafka::raw::rdkafka::ClientConfig;
use xkafka::{Ack, BoxError, Decision, Error, Message, Producer, Summary, TopicPartition};

const WAIT: Duration = Duration::from_secs(60);

/// Counts messages whose handling (middleware included) finished, and
/// wakes whoever waits for a number of them.
#[derive(Clone, Default)]
struct Settled {
    count: Arc<AtomicUsize>,
    notify: Arc<Notify>,
}

type Outcome = Pin<Box<dyn Future<Output = Result<Ack, BoxError>> + Send>>;

impl Settled {
    /// The outermost middleware: ticks once per message, whatever the
    /// outcome.
    fn counter(&self) -> impl Fn(Message, Next) -> Outcome + Clone + Send + Sync + 'static {
        let this = self.clone();
        move |m: Message, next: Next| {
            let this = this.clone();
            Box::pin(async move {
                let out = next.run(m).await;
                this.count.fetch_add(1, Ordering::SeqCst);
                this.notify.notify_one();
                out
            })
        }
    }

    /// Resolves once `n` messages settled (or after `timeout`, for the
    /// assertions to report what is missing).
    async fn reached(self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count.load(Ordering::SeqCst) < n {
            if tokio::time::timeout_at(deadline, self.notify.notified())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// What every run must show: nothing failed unexpectedly, the consumer
/// closed cleanly, and the offset committed is the end of the partition.
fn assert_committed_to_end(summary: &Summary, group: &str, topic: &str, end: i64) {
    assert!(summary.closed_cleanly, "{summary:?}");
    assert_eq!(summary.abandoned, 0, "{summary:?}");
    assert_eq!(
        summary
            .committed
            .get(&TopicPartition::new(topic, 0))
            .copied(),
        Some(end),
        "{summary:?}"
    );
    assert_eq!(
        committed(group, topic, 0),
        Some(end),
        "as the broker has it"
    );
}

/// Publishes through librdkafka directly, with header names as raw bytes
/// (xkafka's `Headers`, like rdkafka's, only has UTF-8 names).
async fn publish_raw_header_names(
    topic: &str,
    key: &str,
    headers: &[(&[u8], Option<&[u8]>)],
) -> i64 {
    let owned = OwnedHeaders::new_with_capacity(headers.len());
    let native = owned.as_borrowed() as *const BorrowedHeaders
        as *mut xkafka::raw::rdkafka::bindings::rd_kafka_headers_t;
    for (name, value) in headers {
        let (ptr, len) = value.map_or((std::ptr::null(), 0), |v| (v.as_ptr(), v.len() as isize));
        // SAFETY: `native` is the live headers object `owned` owns (an
        // `OwnedHeaders` is always writable); librdkafka copies `name` and
        // `value`, both valid for the lengths given.
        let err = unsafe {
            xkafka::raw::rdkafka::bindings::rd_kafka_header_add(
                native,
                name.as_ptr().cast(),
                name.len() as isize,
                ptr.cast(),
                len,
            )
        };
        assert_eq!(
            err,
            xkafka::raw::rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("raw producer");
    let record = FutureRecord::<str, str>::to(topic)
        .partition(0)
        .key(key)
        .payload("raw header names")
        .headers(owned);
    let delivered = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("raw publish");
    delivered.offset
}

fn bytes(m: &Message) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    (m.key().map(|k| k.to_vec()), m.value().map(|v| v.to_vec()))
}

fn header_list(m: &Message) -> Vec<(String, Option<Vec<u8>>)> {
    m.headers()
        .iter()
        .map(|h| (h.name().to_owned(), h.value().map(|v| v.to_vec())))
        .collect()
}

fn h(name: &str, value: Option<&[u8]>) -> (String, Option<Vec<u8>>) {
    (name.to_owned(), value.map(<[u8]>::to_vec))
}

/// Publishes the raw-bytes cases, one per offset, and returns how many.
async fn publish_raw_cases(topic: &str) -> i64 {
    let producer = producer();
    let cases = [
        // 0: an empty value (not null)
        Message::builder(topic).key("empty-value").value(""),
        // 1: a null value (a tombstone)
        Message::builder(topic).key("null-value"),
        // 2: a null key
        Message::builder(topic).value("no key"),
        // 3: an empty key (not null)
        Message::builder(topic).key("").value("empty key"),
        // 4: a key that is not UTF-8
        Message::builder(topic)
            .key(vec![0xff, 0xfe, 0x00, b'k', 0xc3])
            .value("binary key"),
        // 5: header values that are not UTF-8, empty, null
        Message::builder(topic)
            .key("header-values")
            .value(vec![0x80, 0x00, 0xff])
            .header("bin", vec![0xff, 0x00, 0xc3])
            .header("empty", "")
            .null_header("null"),
        // 6: duplicate header names
        Message::builder(topic)
            .key("duplicates")
            .header("dup", "1")
            .header("other", "x")
            .header("dup", "2")
            .null_header("dup"),
    ];
    let count = cases.len() as i64;
    for (offset, builder) in cases.into_iter().enumerate() {
        let delivery = producer
            .publish(builder.partition(0).build())
            .await
            .unwrap();
        assert_eq!(delivery.offset, offset as i64);
    }
    producer.close().await;
    // 7: header names that are not UTF-8, one with a NUL byte inside
    let offset = publish_raw_header_names(
        topic,
        "header-names",
        &[
            (b"ok", Some(b"1")),
            (b"\xffname", Some(b"2")),
            (b"a\xc3(b", None),
            (b"cut\0here", Some(b"3")),
            (b"ok", Some(b"\xfe")),
        ],
    )
    .await;
    assert_eq!(offset, count);
    count + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_bytes_reach_the_handler_unchanged() {
    setup();
    let _heavy = exclusive().await;
    let topic = topic("bad-raw", 1).await;
    let end = publish_raw_cases(&topic).await;

    let seen: Seen = Arc::default();
    let record = seen.clone();
    let settled = Settled::default();
    let (errors, on_error) = recording_error_handler(Decision::Stop);
    let group = unique("bad-raw-g");
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(from_fn(settled.counter()))
        .handler(move |m: Message| {
            let record = record.clone();
            async move { record.lock().unwrap().push(m) }
        })
        .build()
        .unwrap();
    let summary = consumer
        .run(settled.clone().reached(end as usize, WAIT))
        .await
        .expect("never stopped");
    assert!(errors.lock().unwrap().is_empty(), "{errors:?}");
    assert_eq!(
        (summary.succeeded, summary.skipped, summary.failed),
        (end as u64, 0, 0)
    );
    assert_committed_to_end(&summary, &group, &topic, end);

    let seen = seen.lock().unwrap().clone();
    let offsets: Vec<i64> = seen.iter().map(|m| m.offset().unwrap()).collect();
    assert_eq!(
        offsets,
        (0..end).collect::<Vec<_>>(),
        "each exactly once, in order"
    );
    let empty = Some(Vec::new());
    assert_eq!(
        bytes(&seen[0]),
        (Some(b"empty-value".to_vec()), empty.clone())
    );
    assert_eq!(seen[0].value_str(), Some(""), "empty, not null");
    assert_eq!(bytes(&seen[1]), (Some(b"null-value".to_vec()), None));
    assert_eq!(bytes(&seen[2]), (None, Some(b"no key".to_vec())));
    assert_eq!(bytes(&seen[3]), (empty, Some(b"empty key".to_vec())));
    assert_eq!(
        bytes(&seen[4]),
        (
            Some(vec![0xff, 0xfe, 0x00, b'k', 0xc3]),
            Some(b"binary key".to_vec())
        )
    );
    assert_eq!(seen[4].key_str(), None, "not text");
    assert_eq!(seen[5].value().unwrap().as_ref(), [0x80, 0x00, 0xff]);
    assert_eq!(
        header_list(&seen[5]),
        [
            h("bin", Some(&[0xff, 0x00, 0xc3])),
            h("empty", Some(b"")),
            h("null", None)
        ]
    );
    assert_eq!(seen[5].headers().get_str("bin"), None, "not text");
    assert!(seen[5].headers().contains("null"));
    assert_eq!(
        header_list(&seen[6]),
        [
            h("dup", Some(b"1")),
            h("other", Some(b"x")),
            h("dup", Some(b"2")),
            h("dup", None)
        ],
        "duplicates kept, in wire order"
    );
    assert_eq!(
        seen[6].headers().get("dup"),
        None,
        "the last one (null) counts"
    );
    assert_eq!(seen[6].headers().get_all("dup").count(), 3);
    assert_eq!(
        header_list(&seen[7]),
        [
            h("ok", Some(b"1")),
            h("\u{fffd}name", Some(b"2")),
            h("a\u{fffd}(b", None),
            h("cut", Some(b"3")),
            h("ok", Some(b"\xfe")),
        ],
        "names decoded lossily (U+FFFD), cut at a NUL byte; values untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_missing_or_not_text_are_rejections_not_crashes() {
    setup();
    let _heavy = exclusive().await;
    let topic = topic("bad-keys", 1).await;
    let end = publish_raw_cases(&topic).await;

    let keys: Arc<Mutex<Vec<(i64, String)>>> = Arc::default();
    let record = keys.clone();
    let settled = Settled::default();
    let (errors, on_error) = recording_error_handler(Decision::Continue);
    let group = unique("bad-keys-g");
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(from_fn(settled.counter()))
        .handler(move |Key(k): Key<String>, m: Message| {
            let record = record.clone();
            async move { record.lock().unwrap().push((m.offset().unwrap(), k)) }
        })
        .build()
        .unwrap();
    let summary = consumer
        .run(settled.clone().reached(end as usize, WAIT))
        .await
        .expect("Continue never stops");
    assert_eq!(
        (
            summary.succeeded,
            summary.skipped,
            summary.failed,
            summary.failed_skipped
        ),
        (end as u64 - 2, 0, 2, 2)
    );
    assert_committed_to_end(&summary, &group, &topic, end);
    let errors = errors.lock().unwrap().clone();
    assert_eq!(
        errors,
        [
            format!("handler failed on {topic}[0]@2: {topic}[0]@2 has no key"),
            format!(
                "handler failed on {topic}[0]@4: the key of {topic}[0]@4 is invalid: \
                 invalid utf-8 sequence of 1 bytes from index 0"
            ),
        ]
    );
    let keys = keys.lock().unwrap().clone();
    let offsets: Vec<i64> = keys.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        [0, 1, 3, 5, 6, 7],
        "the others reached the handler"
    );
    assert_eq!(keys[2], (3, String::new()), "an empty key is a key");
}

/// A pattern no run of bytes repeats at a power-of-two period.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_arrive_whole_when_the_producer_allows_them() {
    setup();
    let _heavy = exclusive().await;
    let topic = topic("bad-huge", 1).await;
    const MIB: usize = 1024 * 1024;

    // librdkafka's default limit refuses it up front, with a clear error.
    let default_producer = producer();
    let err = default_producer
        .publish(
            Message::builder(topic.as_str())
                .partition(0)
                .value(pattern(MIB))
                .build(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("too large"),
        "names the problem: {err}"
    );
    default_producer.close().await;

    let big = Producer::builder("xkafka-tests-huge")
        .brokers([brokers()])
        .config("message.max.bytes", (8 * MIB).to_string())
        .error_handler(|err| eprintln!("producer error: {err}"))
        .build()
        .unwrap();
    let sizes = [MIB, 4 * MIB, 0];
    for (i, size) in sizes.into_iter().enumerate() {
        let msg = Message::builder(topic.as_str())
            .partition(0)
            .key(format!("k{i}"))
            .value(pattern(size))
            .build();
        assert_eq!(big.publish(msg).await.unwrap().offset, i as i64);
    }
    big.close().await;

    let sizes_seen: Arc<Mutex<Vec<(usize, bool)>>> = Arc::default();
    let record = sizes_seen.clone();
    let settled = Settled::default();
    let (errors, on_error) = recording_error_handler(Decision::Stop);
    let group = unique("bad-huge-g");
    let started = Instant::now();
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(from_fn(settled.counter()))
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                let value = m.value().unwrap();
                let exact = value.as_ref() == pattern(value.len()).as_slice();
                record.lock().unwrap().push((value.len(), exact));
            }
        })
        .build()
        .unwrap();
    let summary = consumer
        .run(settled.clone().reached(sizes.len(), WAIT))
        .await
        .unwrap();
    assert!(errors.lock().unwrap().is_empty(), "{errors:?}");
    assert_eq!(
        *sizes_seen.lock().unwrap(),
        sizes.map(|s| (s, true)),
        "byte for byte, after {:?}",
        started.elapsed()
    );
    assert_eq!(summary.succeeded, sizes.len() as u64);
    assert_committed_to_end(&summary, &group, &topic, sizes.len() as i64);
}

#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
}

/// Valid orders around every kind of undecodable value; returns their
/// count. Offsets: 0 ok, 1 cut JSON, 2 ok, 3 empty, 4 null, 5 valid JSON
/// of the wrong type, 6 not UTF-8, 7 ok.
async fn publish_orders(topic: &str) -> i64 {
    let producer = producer();
    let values: [Option<&[u8]>; 8] = [
        Some(br#"{"id":1}"#),
        Some(br#"{"id":"#),
        Some(br#"{"id":2}"#),
        Some(b""),
        None,
        Some(br#"{"id":-1}"#),
        Some(b"\xff{\"id\":9}"),
        Some(br#"{"id":3}"#),
    ];
    for (i, value) in values.iter().enumerate() {
        let mut builder = Message::builder(topic).partition(0).key(format!("k{i}"));
        if let Some(v) = value {
            builder = builder.value(v.to_vec());
        }
        assert_eq!(
            producer.publish(builder.build()).await.unwrap().offset,
            i as i64
        );
    }
    producer.close().await;
    values.len() as i64
}

const UNDECODABLE: [i64; 5] = [1, 3, 4, 5, 6];

type Ids = Arc<Mutex<Vec<u64>>>;

fn order_handler(
    ids: &Ids,
) -> impl Fn(Json<Order>) -> Pin<Box<dyn Future<Output = Ack> + Send>> + Clone + Send + Sync + 'static
{
    let ids = ids.clone();
    move |Json(order): Json<Order>| {
        let ids = ids.clone();
        Box::pin(async move {
            ids.lock().unwrap().push(order.id);
            Ack::Success
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_fails_to_the_error_handler_by_default() {
    setup();
    let _heavy = exclusive().await;
    let topic = topic("bad-json", 1).await;
    let end = publish_orders(&topic).await;

    let ids: Ids = Arc::default();
    let settled = Settled::default();
    let (errors, on_error) = recording_error_handler(Decision::Continue);
    let group = unique("bad-json-g");
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(from_fn(settled.counter()))
        .handler(order_handler(&ids))
        .build()
        .unwrap();
    let summary = consumer
        .run(settled.clone().reached(end as usize, WAIT))
        .await
        .expect("Continue never stops");
    assert_eq!(*ids.lock().unwrap(), [1, 2, 3], "only decodable orders");
    assert_eq!(
        (
            summary.succeeded,
            summary.skipped,
            summary.failed,
            summary.failed_skipped
        ),
        (3, 0, 5, 5)
    );
    assert_committed_to_end(&summary, &group, &topic, end);
    let errors = errors.lock().unwrap().clone();
    let at = |o: i64| format!("handler failed on {topic}[0]@{o}: ");
    let expected = [
        format!("{}invalid JSON in {topic}[0]@1: EOF while parsing a value at line 1 column 6", at(1)),
        format!("{}invalid JSON in {topic}[0]@3: EOF while parsing a value at line 1 column 0", at(3)),
        format!("{}{topic}[0]@4 has no value", at(4)),
        format!("{}invalid JSON in {topic}[0]@5: invalid value: integer `-1`, expected u64 at line 1 column 8", at(5)),
        format!("{}invalid JSON in {topic}[0]@6: expected value at line 1 column 1", at(6)),
    ];
    assert_eq!(errors, expected, "one clear error per undecodable message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_stops_the_consumer_when_the_error_handler_says_so() {
    setup();
    let _heavy = exclusive().await;
    let topic = topic("bad-json-stop", 1).await;
    publish_orders(&topic).await;

    let ids: Ids = Arc::default();
    let (errors, on_error) = recording_error_handler(Decision::Stop);
    let group = unique("bad-json-stop-g");
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .handler(order_handler(&ids))
        .build()
        .unwrap();
    // No shutdown signal: only the error handler can end this run.
    let err = tokio::time::timeout(WAIT, consumer.run(std::future::pending()))
        .await
        .expect("stopped by the error handler")
        .unwrap_err();
    assert_eq!(err.message_location(), Some((topic.as_str(), 0, 1)));
    assert!(
        matches!(&err, Error::Handler { source, .. }
            if source.downcast_ref::<xkafka::extract::Rejection>().is_some()),
        "the typed rejection: {err:?}"
    );
    assert_eq!(errors.lock().unwrap().len(), 1);
    assert_eq!(*ids.lock().unwrap(), [1]);
    assert_eq!(
        committed(&group, &topic, 0),
        Some(1),
        "the bad message is read again by the next consumer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_rejected_layer_skips_malformed_json() {
    setup();
    let _heavy = exclusive().await;
    let topic = topic("bad-json-skip", 1).await;
    let end = publish_orders(&topic).await;

    let ids: Ids = Arc::default();
    let settled = Settled::default();
    let (errors, on_error) = recording_error_handler(Decision::Stop);
    let group = unique("bad-json-skip-g");
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(from_fn(settled.counter()))
        .layer(SkipRejectedLayer)
        .handler(order_handler(&ids))
        .build()
        .unwrap();
    let summary = consumer
        .run(settled.clone().reached(end as usize, WAIT))
        .await
        .expect("nothing reaches the error handler");
    assert!(errors.lock().unwrap().is_empty(), "{errors:?}");
    assert_eq!(*ids.lock().unwrap(), [1, 2, 3]);
    assert_eq!(
        (summary.succeeded, summary.skipped, summary.failed),
        (3, 5, 0)
    );
    assert_committed_to_end(&summary, &group, &topic, end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_lands_on_the_dead_letter_topic_with_its_bytes() {
    setup();
    let _heavy = exclusive().await;
    let dead = topic("bad-json-dead", 1).await;
    let topic = topic("bad-json-dlq", 1).await;
    let end = publish_orders(&topic).await;

    let dlq_producer = Producer::builder("xkafka-tests-bad-dlq")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("dlq producer: {err}"))
        .build()
        .unwrap();
    let ids: Ids = Arc::default();
    let settled = Settled::default();
    let (errors, on_error) = recording_error_handler(Decision::Stop);
    let group = unique("bad-json-dlq-g");
    let consumer = consumer(&group, &topic)
        .error_handler(on_error)
        .layer(from_fn(settled.counter()))
        .layer(DeadLetterLayer::new(dlq_producer.clone(), dead.as_str()))
        .handler(order_handler(&ids))
        .build()
        .unwrap();
    let summary = consumer
        .run(settled.clone().reached(end as usize, WAIT))
        .await
        .expect("nothing reaches the error handler");
    dlq_producer.close().await;
    assert!(errors.lock().unwrap().is_empty(), "{errors:?}");
    assert_eq!(*ids.lock().unwrap(), [1, 2, 3]);
    assert_eq!(
        (summary.succeeded, summary.skipped, summary.failed),
        (3, 5, 0),
        "dead-lettered counts as skipped"
    );
    assert_committed_to_end(&summary, &group, &topic, end);

    let copies = consume(&unique("bad-dead-reader"), &dead, UNDECODABLE.len(), WAIT).await;
    let originals: [Option<&[u8]>; 5] = [
        Some(br#"{"id":"#),
        Some(b""),
        None,
        Some(br#"{"id":-1}"#),
        Some(b"\xff{\"id\":9}"),
    ];
    assert_eq!(copies.len(), UNDECODABLE.len());
    for ((copy, offset), value) in copies.iter().zip(UNDECODABLE).zip(originals) {
        assert_eq!(
            bytes(copy),
            (
                Some(format!("k{offset}").into_bytes()),
                value.map(<[u8]>::to_vec)
            ),
            "offset {offset}: the original bytes (null stays null)"
        );
        let info = DeadLetterInfo::from_message(copy).expect("x-dlq-* headers");
        assert_eq!(info.original_topic, topic);
        assert_eq!(
            (info.original_partition, info.original_offset),
            (Some(0), Some(offset))
        );
        assert_eq!(info.consumer_group.as_deref(), Some(group.as_str()));
        assert_eq!(info.attempts, Some(1));
        let error = info.error.unwrap();
        let expected = if offset == 4 {
            format!("{topic}[0]@4 has no value")
        } else {
            format!("invalid JSON in {topic}[0]@{offset}")
        };
        assert!(error.starts_with(&expected), "{offset}: {error}");
        assert_eq!(copy.headers().get_all(dlq::ERROR).count(), 1);
    }
}

/// Installs the global `tracing` subscriber of this test binary: with the
/// `opentelemetry` feature, one that records OpenTelemetry spans (so that
/// a handler's span has a trace id); plus the `RUST_LOG` output.
fn setup() {
    #[cfg(feature = "opentelemetry")]
    otel::install();
    #[cfg(not(feature = "opentelemetry"))]
    init_tracing();
}

/// Stands for the trace-context test this build leaves out (in `otel`).
#[cfg(not(feature = "opentelemetry"))]
#[test]
#[ignore = "needs --features opentelemetry (cargo test --all-features): garbage traceparent headers were not tested"]
fn a_garbage_traceparent_starts_a_new_trace() {}

#[cfg(feature = "opentelemetry")]
mod otel {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer as _;
    use xkafka::middleware::trace_context::ExtractLayer;

    use super::*;

    pub(super) fn install() {
        static INIT: OnceLock<SdkTracerProvider> = OnceLock::new();
        INIT.get_or_init(|| {
            let provider = SdkTracerProvider::builder().build();
            let tracer = provider.tracer("xkafka-tests-bad-input");
            let log = std::env::var_os("RUST_LOG").map(|_| {
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(tracing_subscriber::EnvFilter::from_default_env())
            });
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(tracer))
                .with(log);
            tracing::subscriber::set_global_default(subscriber)
                .expect("this binary's only subscriber");
            provider
        });
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_garbage_traceparent_starts_a_new_trace() {
        setup();
        let _heavy = exclusive().await;
        let topic = topic("bad-trace", 1).await;
        let producer = producer();
        let zeros = format!("00-{}-{}-01", "0".repeat(32), "0".repeat(16));
        let long = format!("{VALID}-{}", "f".repeat(10_000));
        /// A header of the message, the value `None` when null.
        type Raw = (&'static str, Option<Vec<u8>>);
        let cases: Vec<(&str, Vec<Raw>)> = vec![
            ("valid", vec![("traceparent", Some(VALID.into()))]),
            ("garbage", vec![("traceparent", Some(b"garbage".to_vec()))]),
            ("empty", vec![("traceparent", Some(Vec::new()))]),
            ("null", vec![("traceparent", None)]),
            (
                "binary",
                vec![("traceparent", Some(vec![0xff, 0x00, 0xfe]))],
            ),
            ("zeros", vec![("traceparent", Some(zeros.into_bytes()))]),
            ("long", vec![("traceparent", Some(long.into_bytes()))]),
            (
                "garbage-last",
                vec![
                    ("traceparent", Some(VALID.into())),
                    ("traceparent", Some(b"00-zz".to_vec())),
                ],
            ),
            (
                "bad-state",
                vec![
                    ("traceparent", Some(VALID.into())),
                    ("tracestate", Some(b"=,=\xff".to_vec())),
                ],
            ),
        ];
        let end = cases.len();
        for (key, headers) in &cases {
            let mut builder = Message::builder(topic.as_str()).partition(0).key(*key);
            for (name, value) in headers {
                builder = match value {
                    Some(v) => builder.header(*name, v.clone()),
                    None => builder.null_header(*name),
                };
            }
            producer.publish(builder.build()).await.unwrap();
        }
        producer.close().await;

        let traces: Arc<Mutex<HashMap<String, TraceId>>> = Arc::default();
        let record = traces.clone();
        let settled = Settled::default();
        let (errors, on_error) = recording_error_handler(Decision::Stop);
        let group = unique("bad-trace-g");
        let consumer = consumer(&group, &topic)
            .error_handler(on_error)
            .layer(from_fn(settled.counter()))
            .layer(ExtractLayer)
            .handler(move |m: Message| {
                let record = record.clone();
                async move {
                    let id = tracing::Span::current()
                        .context()
                        .span()
                        .span_context()
                        .trace_id();
                    record
                        .lock()
                        .unwrap()
                        .insert(m.key_str().unwrap().to_owned(), id);
                }
            })
            .build()
            .unwrap();
        let summary = consumer
            .run(settled.clone().reached(end, WAIT))
            .await
            .unwrap();
        assert!(errors.lock().unwrap().is_empty(), "{errors:?}");
        assert_eq!(summary.succeeded, end as u64);
        assert_committed_to_end(&summary, &group, &topic, end as i64);

        let traces = traces.lock().unwrap().clone();
        assert_eq!(traces.len(), end);
        let continued = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(traces["valid"], continued, "a valid one is continued");
        assert_eq!(
            traces["bad-state"], continued,
            "a bad tracestate is dropped, the traceparent still counts"
        );
        let mut fresh: Vec<TraceId> = Vec::new();
        for key in [
            "garbage",
            "empty",
            "null",
            "binary",
            "zeros",
            "long",
            "garbage-last",
        ] {
            let id = traces[key];
            assert_ne!(id, TraceId::INVALID, "{key}: still traced");
            assert_ne!(id, continued, "{key}: a new trace");
            assert!(!fresh.contains(&id), "{key}: a trace of its own");
            fresh.push(id);
        }
    }
}
