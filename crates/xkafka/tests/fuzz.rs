//! Property tests ("fuzzing") of the parsers xkafka owns, fed arbitrary
//! input: the dead-letter headers ([`DeadLetterInfo`], and the round trip
//! from [`dead_letter`]), configuration (a builder given arbitrary
//! librdkafka properties) and topic-name validation. Each property checks
//! that nothing panics *and* an invariant. (Header decoding, the
//! extractors and trace-context extraction are fuzzed in
//! `crates/xkafka-core/tests/fuzz.rs`.) No broker is needed.
//!
//! The suite runs proptest's default 256 cases per property. To fuzz for
//! longer (200,000 cases per property: about a minute on 2 cores):
//!
//! ```text
//! PROPTEST_CASES=200000 cargo test --release -p xkafka --all-features --test fuzz
//! ```
//!
//! A failure prints the shrunk input; proptest also saves it in
//! `tests/fuzz.proptest-regressions`, replayed first next time (commit that
//! file with the fix).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use xkafka::dlq::{dead_letter, headers, DeadLetterInfo};
use xkafka::middleware::retry::AttemptRecord;
use xkafka::{Ack, BoxError, Consumer, Decision, Error, Header, Message, Operation, Producer};

/// proptest's defaults (`PROPTEST_CASES` included), with failures saved
/// next to this file.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/fuzz.proptest-regressions",
            ),
        )),
        ..ProptestConfig::default()
    }
}

/// Bytes that are often, but not always, UTF-8.
fn mostly_utf8(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        ".{0,24}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..max),
    ]
}

const DLQ_HEADERS: [&str; 8] = [
    headers::ORIGINAL_TOPIC,
    headers::ORIGINAL_PARTITION,
    headers::ORIGINAL_OFFSET,
    headers::ORIGINAL_TIMESTAMP,
    headers::CONSUMER_GROUP,
    headers::ERROR,
    headers::ATTEMPTS,
    headers::FIRST_FAILURE,
];

/// Header values a dead-letter reader may meet: numbers at and past the
/// edges of every type, signs, padding, text, bytes, null.
fn dlq_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    let number = prop_oneof![
        any::<i32>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| n.to_string()),
        Just("4294967296".to_owned()),
        Just("-0".to_owned()),
        "[+-]?0{0,3}[0-9]{1,12}",
        " ?[0-9]{1,5} ?",
    ];
    prop::option::weighted(
        0.9,
        prop_oneof![number.prop_map(String::into_bytes), mostly_utf8(24)],
    )
}

/// The value a numeric header's text stands for, written independently
/// of `str::parse`: an optional sign, then decimal digits only.
fn decimal(text: &str) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Every field fits in 64 bits: a bigger magnitude is out of range.
    let magnitude = digits.bytes().try_fold(0i128, |n, b| {
        n.checked_mul(10)?
            .checked_add(i128::from(b - b'0'))
            .filter(|m| *m <= i128::from(u64::MAX) + 1)
    })?;
    Some(if negative { -magnitude } else { magnitude })
}

/// The last header of that name, as text (`None` when absent, null or not
/// UTF-8, as [`xkafka::Headers::get_str`] documents).
fn last_text<'a>(entries: &'a [(String, Option<Vec<u8>>)], name: &str) -> Option<&'a str> {
    let (_, value) = entries.iter().rev().find(|(n, _)| n == name)?;
    std::str::from_utf8(value.as_deref()?).ok()
}

fn in_range<T: TryFrom<i128>>(text: Option<&str>) -> Option<T> {
    text.and_then(decimal).and_then(|n| T::try_from(n).ok())
}

fn millis(time: SystemTime) -> SystemTime {
    let since = time.duration_since(UNIX_EPOCH).unwrap();
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

// --- dead-letter headers ------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn dead_letter_info_reads_arbitrary_headers_without_panicking(
        entries in prop::collection::vec(
            (prop_oneof![prop::sample::select(DLQ_HEADERS.to_vec()).prop_map(String::from), ".{0,6}"], dlq_value()),
            0..16,
        ),
    ) {
        let mut builder = Message::builder("orders.dlq");
        for (name, value) in &entries {
            builder = match value {
                Some(v) => builder.header(name.as_str(), v.clone()),
                None => builder.null_header(name.as_str()),
            };
        }
        let info = DeadLetterInfo::from_message(&builder.build());
        let topic = last_text(&entries, headers::ORIGINAL_TOPIC);
        prop_assert_eq!(info.is_some(), topic.is_some(), "a dead letter iff it names its topic");
        let Some(info) = info else { return Ok(()) };
        prop_assert_eq!(Some(info.original_topic.as_str()), topic);
        let text = |name| last_text(&entries, name);
        prop_assert_eq!(info.original_partition, in_range::<i32>(text(headers::ORIGINAL_PARTITION)));
        prop_assert_eq!(info.original_offset, in_range::<i64>(text(headers::ORIGINAL_OFFSET)));
        prop_assert_eq!(info.original_timestamp, in_range::<i64>(text(headers::ORIGINAL_TIMESTAMP)));
        prop_assert_eq!(info.attempts, in_range::<u32>(text(headers::ATTEMPTS)));
        prop_assert_eq!(
            info.first_failure,
            in_range::<u64>(text(headers::FIRST_FAILURE)).map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        );
        prop_assert_eq!(info.consumer_group.as_deref(), text(headers::CONSUMER_GROUP));
        prop_assert_eq!(info.error.as_deref(), text(headers::ERROR));
    }

    #[test]
    fn dead_letter_output_parses_back_to_the_same_values(
        topic in "[a-zA-Z0-9._-]{1,40}",
        partition in prop::option::of(any::<i32>()),
        offset in prop::option::of(any::<i64>()),
        timestamp in prop::option::of(any::<i64>()),
        group in prop::option::of(".{0,20}"),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        value in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        // The original's own headers, stale `x-dlq-*` ones included (a
        // message re-dead-lettered from a dead-letter topic).
        own in prop::collection::vec(
            (prop_oneof![prop::sample::select(DLQ_HEADERS.to_vec()).prop_map(String::from), "[a-z]{1,4}"], dlq_value()),
            0..6,
        ),
        error in prop_oneof![".{0,64}", ".{4000,4200}", "é{2040,2100}"],
        attempts in any::<u32>(),
        first_failure in prop::option::of((0u64..4_000_000_000_000, 0u32..1_000_000_000)),
    ) {
        let mut builder = Message::builder(topic.as_str());
        for (name, v) in &own {
            builder = match v {
                Some(v) => builder.header(name.as_str(), v.clone()),
                None => builder.null_header(name.as_str()),
            };
        }
        if let Some(p) = partition { builder = builder.partition(p); }
        if let Some(o) = offset { builder = builder.offset(o); }
        if let Some(t) = timestamp { builder = builder.timestamp_millis(t); }
        if let Some(g) = &group { builder = builder.group(g.as_str()); }
        if let Some(k) = &key { builder = builder.key(k.clone()); }
        if let Some(v) = &value { builder = builder.value(v.clone()); }
        let original = builder.build();
        let first_failure = first_failure
            .map(|(ms, ns)| UNIX_EPOCH + Duration::from_millis(ms) + Duration::from_nanos(u64::from(ns % 1_000_000)));
        let record = AttemptRecord { attempts, first_failure, ..AttemptRecord::default() };
        let boxed: BoxError = error.clone().into();

        let before = millis(SystemTime::now());
        let copy = dead_letter(&original, "orders.dlq", &boxed, record);
        let after = SystemTime::now();

        prop_assert_eq!(copy.topic(), "orders.dlq");
        prop_assert_eq!(copy.key().map(|k| k.to_vec()), key, "key byte for byte");
        prop_assert_eq!(copy.value().map(|v| v.to_vec()), value, "value byte for byte");
        prop_assert_eq!(copy.partition(), None, "the dead-letter topic's partitioner decides");
        // The original's own headers come first, in order; only stale
        // `x-dlq-*` ones are replaced by this failure's.
        let kept: Vec<&Header> = original.headers().iter().filter(|h| !DLQ_HEADERS.contains(&h.name())).collect();
        let copied: Vec<&Header> = copy.headers().iter().take(kept.len()).collect();
        prop_assert_eq!(copied, kept);
        for name in DLQ_HEADERS {
            prop_assert!(copy.headers().get_all(name).count() <= 1, "one {} header", name);
        }

        let info = DeadLetterInfo::from_message(&copy).expect("a dead letter");
        prop_assert_eq!(&info.original_topic, &topic);
        prop_assert_eq!(info.original_partition, partition);
        prop_assert_eq!(info.original_offset, offset);
        prop_assert_eq!(info.original_timestamp, timestamp);
        prop_assert_eq!(info.consumer_group, group);
        prop_assert_eq!(info.attempts, Some(attempts.max(1)));
        let written = info.error.expect("error text");
        prop_assert!(written.len() <= 4096, "at most 4 KiB: {}", written.len());
        prop_assert!(error.starts_with(&written), "a prefix of the error");
        prop_assert!(written.len() == error.len() || written.len() > 4096 - 4, "cut only past 4 KiB, at a char boundary");
        let first = info.first_failure.expect("first failure");
        match first_failure {
            Some(t) => prop_assert_eq!(first, millis(t)),
            None => prop_assert!(before <= first && first <= after, "now, when unknown"),
        }
    }
}

// --- configuration ---------------------------------------------------------------

/// Property names: librdkafka's (valid and secret ones), near misses and
/// arbitrary text.
fn property_name() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "acks",
        "linger.ms",
        "compression.type",
        "client.id",
        "message.max.bytes",
        "enable.idempotence",
        "security.protocol",
        "sasl.mechanism",
        "sasl.username",
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.jaas.config",
        "socket.timeout.ms",
        "statistics.interval.ms",
    ]);
    prop_oneof![
        3 => known.clone().prop_map(String::from),
        1 => known.clone().prop_map(|k| k.to_uppercase()),
        1 => known.prop_map(|k| format!("{k} ")),
        1 => ".{0,16}",
        1 => "[a-z.]{1,20}(password|secret|token)",
    ]
}

/// A secret's value: recognisable (so a leak can be searched for), with
/// characters that `Debug` escapes, and sometimes a NUL byte.
fn secret_value() -> impl Strategy<Value = String> {
    (
        "[a-z0-9]{6,10}",
        prop::option::of(prop::sample::select(vec!["\"", "\\", "é", "\0", " ", "\n"])),
    )
        .prop_map(|(body, odd)| format!("S3cret-{body}{}", odd.unwrap_or_default()))
}

fn property_value() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,12}",
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "all", "1", "-1", "true", "lz4", "none", "PLAIN", "sasl_ssl", "0"
        ])
        .prop_map(String::from),
        "[a-z]{0,4}\0[a-z]{0,4}",
    ]
}

/// Every way `text` could show a secret: as is, escaped by `Debug`, or
/// as the byte list of a `Debug`-printed `Vec<u8>`.
fn leaks(text: &str, secret: &str) -> bool {
    let escaped = format!("{secret:?}");
    let bytes = format!("{:?}", &secret.as_bytes()[..6]);
    text.contains(secret)
        || text.contains(escaped.trim_matches('"'))
        || text.contains(bytes.trim_matches(|c| c == '[' || c == ']'))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_builder_given_arbitrary_properties_fails_clearly_and_never_leaks_secrets(
        entries in prop::collection::vec(
            property_name().prop_flat_map(|k| {
                let value = if xkafka::Config::is_secret(&k) { secret_value().boxed() } else { property_value().boxed() };
                (Just(k), value)
            }),
            1..6,
        ),
        // Usually one property librdkafka certainly rejects: a config it
        // accepts creates a client (about 0.1 s to create and drop), which
        // would make long runs crawl.
        poison in prop::option::weighted(0.98, prop_oneof![
            "zz\\.unknown\\.[a-z]{1,8}".prop_map(|k| (k, "1".to_owned())),
            prop::sample::select(vec![("acks", "sometimes"), ("linger.ms", "soon"), ("compression.type", "zip")])
                .prop_map(|(k, v)| (k.to_owned(), v.to_owned())),
        ]),
    ) {
        let mut entries = entries;
        entries.extend(poison);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = rt.enter();
        // The last value given for a key wins, as in `Config::set`.
        let effective: std::collections::BTreeMap<&str, &str> =
            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let secrets: Vec<&str> = effective.iter().filter(|(k, _)| xkafka::Config::is_secret(k)).map(|(_, v)| *v).collect();

        let mut builder = Producer::builder("fuzz")
            .brokers(["127.0.0.1:1"])
            .error_handler(|_| {});
        for (k, v) in &entries {
            builder = builder.config(k.as_str(), v.as_str());
        }
        let config: xkafka::Config = entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let shown = format!("{config:?}");
        for secret in &secrets {
            prop_assert!(!leaks(&shown, secret), "Config Debug leaks {:?}: {}", secret, shown);
        }

        let result = builder.build();
        let err = match result {
            Ok(producer) => {
                // Accepted: every property is one librdkafka knows.
                drop(producer);
                return Ok(());
            }
            Err(err) => err,
        };
        let (display, debug) = (err.to_string(), format!("{err:?}"));
        for secret in &secrets {
            prop_assert!(!leaks(&display, secret) && !leaks(&debug, secret), "error leaks {:?}: {} / {}", secret, display, debug);
        }
        match &err {
            // A NUL byte cannot cross into librdkafka (C strings): refused
            // up front, naming the property (its NUL shown as `\0`).
            Error::InvalidConfig { key, reason, .. } if reason.contains("NUL byte") => {
                let named = effective.iter().any(|(k, v)| k.replace('\0', "\\0") == *key && (k.contains('\0') || v.contains('\0')));
                prop_assert!(named, "names a property with a NUL: {}", display);
            }
            Error::InvalidConfig { key, value, .. } => {
                let given = effective.get(key.as_str());
                prop_assert!(given.is_some(), "names a property we set: {}", display);
                prop_assert!(display.contains(&format!("`{key}`")), "{}", display);
                let expected = if xkafka::Config::is_secret(key) { "<redacted>".to_owned() } else { format!("{:?}", given.unwrap()) };
                prop_assert_eq!(value, &expected);
            }
            // Properties valid one by one but not together (e.g.
            // `security.protocol=sasl_ssl` without a Kerberos keytab):
            // librdkafka refuses to create the client, and says why.
            Error::Kafka { operation: Operation::Create, .. } => {
                prop_assert!(display.starts_with("creating the kafka client failed: Client creation error: "), "{}", display);
            }
            other => prop_assert!(false, "not a configuration error: {} ({:?})", other, other),
        }
    }
}

// --- topic names -------------------------------------------------------------

/// Kafka's rule (`org.apache.kafka.common.internals.Topic.validate`): 1 to
/// 249 characters from `[a-zA-Z0-9._-]`, and not `.` or `..`.
fn kafka_accepts(name: &str) -> bool {
    const LEGAL: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().count() <= 249
        && name.chars().all(|c| LEGAL.contains(c))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn topic_validation_agrees_with_kafka(name in prop_oneof![
        ".{0,12}",
        "[a-zA-Z0-9._-]{0,3}",
        "[a-zA-Z0-9._-]{245,252}",
        ("[a-z]{0,5}", ".", "[a-z]{0,5}").prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        Just(".".to_owned()),
        Just("..".to_owned()),
        "\\^.{0,8}",
    ]) {
        let built = Consumer::builder("fuzz")
            .topics([name.as_str()])
            .error_handler(|_| Decision::Continue)
            .handler(|_m: Message| async { Ack::Success })
            .build();
        // No broker is configured: a name that passes fails next, on that.
        match built {
            Err(Error::InvalidTopic { name: rejected, reason }) => {
                prop_assert_eq!(&rejected, &name);
                prop_assert!(!name.starts_with('^'), "a pattern is not a name");
                prop_assert!(!kafka_accepts(&name), "{:?} rejected ({}) but Kafka accepts it", name, reason);
                prop_assert!(!reason.is_empty());
            }
            Err(Error::MissingBrokers) => prop_assert!(
                name.starts_with('^') || kafka_accepts(&name),
                "{:?} accepted but Kafka rejects it", name
            ),
            other => prop_assert!(false, "unexpected {:?}", other.err()),
        }
    }
}
