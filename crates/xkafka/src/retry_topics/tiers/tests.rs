//! The tiers' own unit tests (copies, headers, attempts).

use super::*;
use crate::retry_topics::due;

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
    let first = tiers.copy_for(&original, 0, Cause::Failed("down"));
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
    let second = tiers.copy_for(&fetched, 1, Cause::Failed("still down"));
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
