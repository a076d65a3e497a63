//! Key order across the tiers, without a broker.

use super::*;

impl Chain {
    fn step_now(&mut self, place: &Place) -> Step {
        self.step(place, &Immediate)
    }
}

/// Transactions by hand: `current`, and which ended how.
#[derive(Default)]
struct Txns {
    current: u64,
    aborted: Vec<u64>,
}

impl Generations for Txns {
    fn current(&self) -> Generation {
        Some(self.current)
    }
    fn is_aborted(&self, g: u64) -> bool {
        self.aborted.contains(&g)
    }
    fn is_committed(&self, g: u64) -> bool {
        g < self.current && !self.is_aborted(g)
    }
}

#[test]
fn what_an_aborted_transaction_did_to_the_chain_is_undone() {
    let mut chain = Chain::default();
    let mut txns = Txns::default();
    let k = Bytes::from_static(b"k");
    // Transaction 0 moves offset 5 to a tier, and 6 follows it.
    chain.add(&k, 5, Some(0));
    assert_eq!(chain.step(&place("k", 6, 0), &txns), Step::Follow);
    chain.add(&k, 6, Some(0));
    assert_eq!(chain.step(&place("k", 5, 0), &txns), Step::AlreadyMoved);
    // It aborts: neither copy exists; both originals are read again
    // and handled, not skipped nor sent after a copy that is not there.
    txns.aborted.push(0);
    txns.current = 1;
    assert_eq!(chain.step(&place("k", 5, 0), &txns), Step::Handle);
    assert_eq!(chain.step(&place("k", 6, 0), &txns), Step::Handle);
    assert_eq!(chain.keys_waiting(), 0, "forgotten");

    // Transaction 1 moves 5 again and commits: it stays.
    chain.add(&k, 5, Some(1));
    txns.current = 2;
    assert_eq!(chain.step(&place("k", 6, 0), &txns), Step::Follow);
    // Transaction 2 handles the copy from its tier (settled) and lets
    // 6 be handled; it aborts: the copy is read again, and 6 (read
    // again too) follows it once more.
    chain.remove(&k, 5, Some(2), &txns);
    assert_eq!(chain.step(&place("k", 6, 0), &txns), Step::Handle);
    txns.aborted.push(2);
    txns.current = 3;
    assert_eq!(chain.step(&place("k", 6, 0), &txns), Step::Follow);
    // Settled again in 3, which commits: gone for good.
    chain.remove(&k, 5, Some(3), &txns);
    txns.current = 4;
    assert_eq!(chain.step(&place("k", 6, 0), &txns), Step::Handle);
    assert_eq!(chain.keys_waiting(), 0);
    // A publish that failed is taken out at once.
    chain.add(&k, 7, Some(4));
    chain.unadd(&k, 7, Some(4));
    assert_eq!(chain.step(&place("k", 8, 0), &txns), Step::Handle);
}

fn place(key: &str, offset: i64, tier: usize) -> Place {
    Place {
        key: Bytes::copy_from_slice(key.as_bytes()),
        partition: 0,
        original_offset: offset,
        tier,
    }
}

#[test]
fn a_later_message_follows_an_earlier_one_of_its_key() {
    let mut chain = Chain::default();
    let a = place("k", 10, 0);
    assert_eq!(chain.step_now(&a), Step::Handle);
    chain.add(&a.key, 10, None);
    // Later main-topic messages of the key follow; other keys do not.
    assert_eq!(chain.step_now(&place("k", 11, 0)), Step::Follow);
    assert_eq!(chain.step_now(&place("other", 11, 0)), Step::Handle);
    // The copy itself is the head in its tier.
    assert_eq!(chain.step_now(&place("k", 10, 1)), Step::Handle);
    // Seen again on the main topic (before a restart it was moved).
    assert_eq!(chain.step_now(&place("k", 10, 0)), Step::AlreadyMoved);
    chain.add(&a.key, 11, None);
    assert_eq!(chain.step_now(&place("k", 11, 1)), Step::Follow);
    chain.remove(&a.key, 10, None, &Immediate);
    assert_eq!(chain.step_now(&place("k", 11, 1)), Step::Handle);
    assert_eq!(chain.keys_waiting(), 1);
    chain.remove(&a.key, 11, None, &Immediate);
    assert_eq!(chain.keys_waiting(), 0);
    assert_eq!(chain.step_now(&place("k", 12, 0)), Step::Handle);
}

#[test]
fn copies_of_one_message_count_separately() {
    let mut chain = Chain::default();
    let k = Bytes::from_static(b"k");
    chain.add(&k, 5, None);
    chain.add(&k, 5, None);
    chain.remove(&k, 5, None, &Immediate);
    assert_eq!(
        chain.step_now(&place("k", 6, 0)),
        Step::Follow,
        "one copy left"
    );
    chain.remove(&k, 5, None, &Immediate);
    assert_eq!(chain.step_now(&place("k", 6, 0)), Step::Handle);
    // Removing what is not there changes nothing.
    chain.remove(&k, 5, None, &Immediate);
    assert_eq!(chain.keys_waiting(), 0);
}

#[test]
fn place_reads_the_origin_of_a_copy() {
    let main = Message::builder("orders")
        .key("k")
        .partition(2)
        .offset(7)
        .build();
    assert_eq!(Place::of(&main), Some(place_on(2, 7, 0)));
    let copy = Message::builder("orders.retry.2")
        .key("k")
        .partition(2)
        .offset(1)
        .header(headers::ATTEMPT, "2")
        .header(headers::ORIGINAL_PARTITION, "2")
        .header(headers::ORIGINAL_OFFSET, "7")
        .build();
    assert_eq!(Place::of(&copy), Some(place_on(2, 7, 2)));
    let keyless = Message::builder("orders").partition(0).offset(1).build();
    assert_eq!(Place::of(&keyless), None);
}

fn place_on(partition: i32, offset: i64, tier: usize) -> Place {
    Place {
        partition,
        ..place("k", offset, tier)
    }
}

fn key_order() -> KeyOrder {
    let recorder = crate::testing::RecordingProducer::new().unwrap();
    KeyOrder::new(
        "t".into(),
        vec!["t.retry.1".into()],
        Duration::from_secs(1),
        recorder.producer(),
    )
}

fn binding<'a>(config: &'a Config, topics: &'a [String]) -> Binding<'a> {
    Binding {
        config,
        topics,
        not_before: true,
        batches: false,
        transactional: None,
    }
}

#[tokio::test]
async fn bind_refuses_an_assignor_that_does_not_co_partition() {
    let order = key_order();
    let topics = ["t".to_owned(), "t.retry.1".to_owned()];
    let mut config = Config::new();
    let bind = |config: &Config| order.bind(&binding(config, &topics));
    assert!(bind(&config).is_ok(), "librdkafka's default is range");
    config.set("partition.assignment.strategy", "cooperative-sticky");
    let err = bind(&config).unwrap_err().to_string();
    assert!(err.contains("partition.assignment.strategy"), "{err}");
    config.set("group.protocol", "consumer");
    let err = bind(&config).unwrap_err().to_string();
    assert!(err.contains("group.remote.assignor"), "{err}");
    config.set("group.remote.assignor", "range");
    assert!(bind(&config).is_ok());
}

#[tokio::test]
async fn bind_refuses_a_consumer_not_set_up_by_subscribe_or_batching() {
    let order = key_order();
    let config = Config::new();
    let main_only = ["t".to_owned()];
    let err = order
        .bind(&binding(&config, &main_only))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("RetryTopics::subscribe") && err.contains("t.retry.1"),
        "{err}"
    );
    let all = ["t".to_owned(), "t.retry.1".to_owned()];
    let no_due = Binding {
        not_before: false,
        ..binding(&config, &all)
    };
    let err = order.bind(&no_due).unwrap_err().to_string();
    assert!(err.contains("not_before"), "{err}");
    let batches = Binding {
        batches: true,
        ..binding(&config, &all)
    };
    let err = order.bind(&batches).unwrap_err().to_string();
    assert!(err.contains("streaming consumer only"), "{err}");
}

#[tokio::test]
async fn a_partition_not_held_on_every_topic_has_no_slot() {
    let order = key_order();
    let tp = |t: &str, p| crate::TopicPartition::new(t, p);
    order.on_rebalance(&Rebalance::Assigned(vec![
        tp("t", 0),
        tp("t.retry.1", 0),
        tp("t", 1),
    ]));
    assert!(order.slot(0).is_ok());
    let err = order.slot(1).unwrap_err().to_string();
    assert!(err.contains("t.retry.1[1]"), "{err}");
    let before = order.slot(0).unwrap();
    order.on_rebalance(&Rebalance::Assigned(vec![tp("t.retry.1", 1)]));
    assert!(Arc::ptr_eq(&before, &order.slot(0).unwrap()), "kept");
    order.on_rebalance(&Rebalance::Revoked {
        partitions: vec![tp("t", 0)],
        lost: false,
    });
    assert!(order.slot(0).is_err());
    order.on_rebalance(&Rebalance::Assigned(vec![tp("t", 0)]));
    assert!(
        !Arc::ptr_eq(&before, &order.slot(0).unwrap()),
        "rebuilt after a new assignment"
    );
}
