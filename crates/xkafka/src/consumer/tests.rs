//! The builder's validation, without a broker.

use super::builder::DEFAULT_FETCH_QUEUE_BACKOFF_MS;
use super::Consumer;
use crate::{Decision, Message};

fn built(extra: Option<(&str, &str)>) -> Consumer {
    let mut b = Consumer::builder("g")
        .brokers(["127.0.0.1:1"])
        .topics(["t"])
        .error_handler(|_| Decision::Stop)
        .handler(|_m: Message| async {});
    if let Some((k, v)) = extra {
        b = b.config(k, v);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn the_fetch_queue_backoff_defaults_to_10_ms_unless_given() {
    assert_eq!(
        built(None).config.get("fetch.queue.backoff.ms"),
        Some(DEFAULT_FETCH_QUEUE_BACKOFF_MS)
    );
    assert_eq!(
        built(Some(("fetch.queue.backoff.ms", "500")))
            .config
            .get("fetch.queue.backoff.ms"),
        Some("500")
    );
}

#[tokio::test]
async fn crcs_are_checked_unless_turned_off() {
    assert_eq!(built(None).config.get("check.crcs"), Some("true"));
    assert_eq!(
        built(Some(("check.crcs", "false")))
            .config
            .get("check.crcs"),
        Some("false")
    );
}

#[tokio::test]
async fn the_isolation_level_is_read_committed_unless_given() {
    assert_eq!(
        built(None).config.get("isolation.level"),
        Some("read_committed")
    );
    assert_eq!(
        built(Some(("isolation.level", "read_uncommitted")))
            .config
            .get("isolation.level"),
        Some("read_uncommitted")
    );
}
