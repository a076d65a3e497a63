//! Exactly-once consume-transform-produce on the real broker: a
//! transactional consumer's output and offsets commit together; failures,
//! revokes, shutdown, fencing and timeouts end its transactions the right
//! way; and the plain producer API (begin / publish / commit / abort).
//!
//! The output is read back by a raw librdkafka consumer with
//! `isolation.level=read_committed` (what exactly-once promises) and, where
//! it proves that something was written and then aborted, with
//! `read_uncommitted`.

mod common;
mod eos;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{brokers, consumer, fill, producer, topic, unique, until};
use eos::*;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use xkafka::{
    Ack, BatchConsumer, BoxError, CommitMode, Consumer, Decision, Error, Message, Operation, Order,
    Producer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn output_and_offsets_commit_together_with_concurrency_per_key() {
    let input = topic("txn-in", 3).await;
    let output = topic("txn-out", 3).await;
    fill_spread(&input, 3, 900).await;
    let group = unique("txn-group");
    let producer = txn_producer(&unique("txn-id"));
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_interval(Duration::from_millis(50))
        .transaction_max_messages(100)
        .concurrency(8)
        .order(Order::PerKey)
        .error_handler(|err| {
            eprintln!("consumer error: {err}");
            Decision::Stop
        })
        .handler(transform(&producer, &output, &calls))
        .build()
        .unwrap();
    let ends = end_offsets(&input, 3);
    let g = group.clone();
    let i = input.clone();
    let summary = consumer
        .run(async move { wait_committed(&g, &i, 3, &ends).await })
        .await
        .expect("run");
    assert_eq!(summary.succeeded, 900);
    assert!(summary.uncommitted.is_empty());
    assert_eq!(
        summary.committed.values().sum::<i64>(),
        900,
        "{:?}",
        summary.committed
    );
    producer.close().await;

    let records = read_all(&output, "read_committed");
    let counts = counts(&records);
    assert_eq!(records.len(), 900, "each input's output exactly once");
    for i in 0..900 {
        assert_eq!(counts.get(&format!("V{i}")), Some(&1), "V{i}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 900);
    // Batched: at most 100 messages per transaction, many per transaction.
    assert!(
        (9..300).contains(&summary.transactions_committed),
        "{summary:?}"
    );
    assert_eq!(summary.transactions_aborted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_the_error_handler_stops_on_aborts_the_open_transaction() {
    let input = topic("txn-fail-in", 1).await;
    let output = topic("txn-fail-out", 1).await;
    let p = producer();
    fill(&p, &input, 0, 100).await;
    p.close().await;
    let group = unique("txn-fail");
    let id = unique("txn-fail-id");

    // Every message publishes its output; the 51st then fails, and the
    // error handler stops. One transaction holds all 51 outputs (the
    // interval is long): it must abort.
    let producer = txn_producer(&id);
    let published = producer.clone();
    let out: Arc<str> = output.as_str().into();
    let failing = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_interval(Duration::from_secs(20))
        .error_handler(|err| {
            eprintln!("consumer error: {err}");
            Decision::Stop
        })
        .handler(move |m: Message| {
            let published = published.clone();
            let out = out.clone();
            async move {
                published
                    .publish(
                        Message::builder(out)
                            .value(m.value().cloned().unwrap_or_default())
                            .build(),
                    )
                    .await?;
                if m.offset() == Some(50) {
                    return Err::<Ack, BoxError>("refusing offset 50".into());
                }
                Ok(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = failing
        .run(std::future::pending())
        .await
        .expect_err("the failure stops the consumer");
    assert!(
        matches!(err, Error::Handler { offset: 50, .. }),
        "returned {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    producer.close().await;

    assert_eq!(
        read_all(&output, "read_committed").len(),
        0,
        "nothing half-published is visible"
    );
    assert!(
        read_all(&output, "read_uncommitted").len() >= 51,
        "the outputs were written, then aborted"
    );
    assert_eq!(
        common::committed(&group, &input, 0),
        None,
        "no offset committed"
    );

    // A restart (same transactional id) handles everything again: nothing
    // was lost, and the output holds each input once.
    let producer = txn_producer(&id);
    let calls = Arc::new(AtomicUsize::new(0));
    let restarted = consumer(&group, &input)
        .transactional(producer.clone())
        .error_handler(|_| Decision::Stop)
        .handler(transform(&producer, &output, &calls))
        .build()
        .unwrap();
    let (g, i) = (group.clone(), input.clone());
    restarted
        .run(async move { wait_committed(&g, &i, 1, &[100]).await })
        .await
        .expect("restart");
    producer.close().await;
    let records = read_all(&output, "read_committed");
    assert_eq!(records.len(), 100);
    assert_eq!(counts(&records).values().max(), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_commits_the_transaction_before_the_partitions_go() {
    revoke_commits(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_commits_the_transaction_before_the_partitions_go_kip848() {
    revoke_commits(true).await;
}

/// A member of `group` on `input`: the classic protocol as every test
/// sets it up, or KIP-848 (the broker assigns; `session.timeout.ms` is the
/// broker's).
fn member(group: &str, input: &str, kip848: bool) -> xkafka::ConsumerBuilder {
    if !kip848 {
        return consumer(group, input);
    }
    Consumer::builder(group)
        .brokers([brokers()])
        .topics([input])
        .config("auto.offset.reset", "earliest")
        .config("group.protocol", "consumer")
        .shutdown_timeout(Duration::from_secs(5))
}

async fn revoke_commits(kip848: bool) {
    let input = topic("txn-revoke-in", 4).await;
    let output = topic("txn-revoke-out", 4).await;
    fill_spread(&input, 4, 400).await;
    let group = unique("txn-revoke");
    let calls = Arc::new(AtomicUsize::new(0));

    // A handles everything first, but its interval is far away: only the
    // revoke (when B joins) or the shutdown can commit.
    let producer_a = txn_producer(&unique("txn-a"));
    let a = member(&group, &input, kip848)
        .transactional(producer_a.clone())
        .transaction_interval(Duration::from_secs(30))
        .error_handler(|err| {
            eprintln!("A: {err}");
            Decision::Stop
        })
        .handler(transform(&producer_a, &output, &calls))
        .build()
        .unwrap();
    let stop_a = a.shutdown_handle();
    let probe = calls.clone();
    let a = tokio::spawn(a.run(std::future::pending()));
    until(
        || probe.load(Ordering::SeqCst) >= 400,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 400);
    assert_eq!(
        common::committed(&group, &input, 0),
        None,
        "nothing committed before the revoke"
    );

    // B joins: A's partitions are revoked (the classic eager protocol: all
    // of them; KIP-848: those that move to B), and its transaction must
    // commit before they go.
    let producer_b = txn_producer(&unique("txn-b"));
    let b = member(&group, &input, kip848)
        .transactional(producer_b.clone())
        .error_handler(|err| {
            eprintln!("B: {err}");
            Decision::Stop
        })
        .handler(transform(&producer_b, &output, &calls))
        .build()
        .unwrap();
    let stop_b = b.shutdown_handle();
    let b = tokio::spawn(b.run(std::future::pending()));
    wait_committed(&group, &input, 4, &end_offsets(&input, 4)).await;
    // A window in which B, which has partitions now, would handle again
    // whatever A's revoke had not committed (a negative can only be
    // observed over some time).
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_b.shutdown();
    stop_a.shutdown();
    let (a, b) = (a.await.unwrap().expect("A"), b.await.unwrap().expect("B"));
    assert!(
        b.assignments >= 1 && a.assignments >= 1,
        "a rebalance gave B partitions: {a:?} {b:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        400,
        "no message handled twice: the revoke committed A's work"
    );
    producer_a.close().await;
    producer_b.close().await;
    let records = read_all(&output, "read_committed");
    assert_eq!(records.len(), 400);
    assert_eq!(counts(&records).values().max(), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_commits_what_finished_within_its_bound() {
    let input = topic("txn-stop-in", 2).await;
    let output = topic("txn-stop-out", 2).await;
    fill_spread(&input, 2, 300).await;
    let group = unique("txn-stop");
    let producer = txn_producer(&unique("txn-stop-id"));
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_interval(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(5))
        .error_handler(|_| Decision::Stop)
        .handler(transform(&producer, &output, &calls))
        .build()
        .unwrap();
    let handle = consumer.shutdown_handle();
    let probe = calls.clone();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    until(
        || probe.load(Ordering::SeqCst) >= 300,
        Duration::from_secs(30),
    )
    .await;
    let stopping = Instant::now();
    handle.shutdown();
    let summary = run.await.unwrap().expect("run");
    assert!(stopping.elapsed() < Duration::from_millis(5_500));
    assert!(summary.closed_cleanly);
    assert_eq!(summary.committed.values().sum::<i64>(), 300, "{summary:?}");
    assert_eq!(
        (0..2)
            .map(|p| common::committed(&group, &input, p).unwrap_or(0))
            .sum::<i64>(),
        300
    );
    producer.close().await;
    assert_eq!(read_all(&output, "read_committed").len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_consumer_commits_its_batches_output_exactly_once() {
    let input = topic("txn-batch-in", 2).await;
    let output = topic("txn-batch-out", 2).await;
    fill_spread(&input, 2, 500).await;
    let group = unique("txn-batch");
    let producer = txn_producer(&unique("txn-batch-id"));
    let out_producer = producer.clone();
    let out: Arc<str> = output.as_str().into();
    let consumer = BatchConsumer::builder(&group)
        .brokers([brokers()])
        .topics([&input])
        .config("auto.offset.reset", "earliest")
        .transactional(producer.clone())
        .transaction_interval(Duration::from_millis(200))
        // A long window: the transaction's end hands partial batches over.
        .batch_size(64)
        .batch_timeout(Duration::from_secs(10))
        .error_handler(|_| Decision::Stop)
        .handler(move |batch: xkafka::Batch| {
            let producer = out_producer.clone();
            let out = out.clone();
            async move {
                for m in batch.iter() {
                    producer
                        .publish_async(
                            Message::builder(out.clone())
                                .value(m.value_str().unwrap_or_default().to_uppercase())
                                .build(),
                        )
                        .await?;
                }
                Ok::<_, BoxError>(())
            }
        })
        .build()
        .unwrap();
    let (g, i) = (group.clone(), input.clone());
    let ends = end_offsets(&input, 2);
    let started = Instant::now();
    let summary = consumer
        .run(async move { wait_committed(&g, &i, 2, &ends).await })
        .await
        .expect("run");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "partial batches did not wait for their window"
    );
    assert_eq!(summary.succeeded, 500);
    producer.close().await;
    let records = read_all(&output, "read_committed");
    assert_eq!(records.len(), 500);
    assert_eq!(counts(&records).values().max(), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_instance_with_the_same_transactional_id_fences_the_older_one() {
    let input = topic("txn-fence-in", 1).await;
    let output = topic("txn-fence-out", 1).await;
    let p = producer();
    fill(&p, &input, 0, 10).await;
    p.close().await;
    let id = unique("txn-fence-id");

    // The old instance publishes the first message's output, then waits
    // (a long GC pause, a network partition) while a new instance with the
    // same transactional id starts.
    let old = txn_producer(&id);
    let published = old.clone();
    let out: Arc<str> = output.as_str().into();
    let release = Arc::new(tokio::sync::Notify::new());
    let paused = Arc::new(tokio::sync::Notify::new());
    let (r, pz) = (release.clone(), paused.clone());
    let (errors, handler) = common::recording_error_handler(Decision::Continue);
    let consumer = consumer(&unique("txn-fence"), &input)
        .transactional(old.clone())
        .error_handler(handler)
        .handler(move |m: Message| {
            let (published, out, r, pz) = (published.clone(), out.clone(), r.clone(), pz.clone());
            async move {
                published
                    .publish(Message::builder(out).value("from the zombie").build())
                    .await?;
                if m.offset() == Some(0) {
                    pz.notify_one();
                    r.notified().await;
                }
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::timeout(Duration::from_secs(30), paused.notified())
        .await
        .expect("the old instance handled its first message");

    let newer = txn_producer(&id);
    newer.begin_transaction().await.expect("fences the old one");
    newer
        .publish(
            Message::builder(output.as_str())
                .value("from the new one")
                .build(),
        )
        .await
        .unwrap();
    newer.commit_transaction().await.unwrap();
    release.notify_one();

    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the fenced consumer stops")
        .unwrap()
        .expect_err("fenced");
    assert!(err.is_fatal() || err.is_fenced(), "returned {err}");
    assert!(
        errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("transaction")),
        "the error handler was told: {errors:?}"
    );
    old.close().await;
    newer.close().await;
    let visible: Vec<String> = read_all(&output, "read_committed")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        visible,
        vec!["from the new one".to_owned()],
        "the zombie's output never becomes visible"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_outliving_the_transaction_timeout_aborts_it_with_a_clear_error() {
    let input = topic("txn-slow-in", 1).await;
    let output = topic("txn-slow-out", 1).await;
    let p = producer();
    fill(&p, &input, 0, 3).await;
    p.close().await;
    let producer = Producer::builder("xkafka-tests-txn")
        .brokers([brokers()])
        .transactional_id(unique("txn-slow-id"))
        .transaction_timeout(Duration::from_secs(2))
        .error_handler(|err| eprintln!("producer: {err}"))
        .build()
        .unwrap();
    let published = producer.clone();
    let out: Arc<str> = output.as_str().into();
    let consumer = consumer(&unique("txn-slow"), &input)
        .transactional(producer.clone())
        .transaction_interval(Duration::from_millis(50))
        .error_handler(|_| Decision::Stop)
        .handler(move |m: Message| {
            let (published, out) = (published.clone(), out.clone());
            async move {
                published
                    .publish(Message::builder(out).value("half").build())
                    .await?;
                if m.offset() == Some(1) {
                    std::future::pending::<()>().await;
                }
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let err = consumer
        .run(std::future::pending())
        .await
        .expect_err("stops on the timeout");
    assert!(
        matches!(&err, Error::Transactional(text) if text.contains("still being handled")),
        "returned {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    producer.close().await;
    // Offset 0 may have committed in a transaction of its own; offset 1's
    // output never does.
    assert!(read_all(&output, "read_committed").len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_transactional_api_commits_and_aborts_atomically() {
    let output = topic("txn-plain", 1).await;
    let producer = txn_producer(&unique("txn-plain-id"));
    assert!(producer.is_transactional());

    producer.begin_transaction().await.unwrap();
    for i in 0..3 {
        producer
            .publish(
                Message::builder(output.as_str())
                    .value(format!("kept{i}"))
                    .build(),
            )
            .await
            .unwrap();
    }
    producer.commit_transaction().await.unwrap();

    producer.begin_transaction().await.unwrap();
    producer
        .publish(Message::builder(output.as_str()).value("dropped").build())
        .await
        .unwrap();
    producer.abort_transaction().await.unwrap();

    let committed: Vec<String> = read_all(&output, "read_committed")
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(committed, ["kept0", "kept1", "kept2"]);
    let all = read_all(&output, "read_uncommitted");
    assert_eq!(all.len(), 4, "the aborted one was written: {all:?}");

    // Misuse says what is wrong.
    let err = producer.commit_transaction().await.unwrap_err();
    assert!(
        matches!(&err, Error::Transactional(t) if t.contains("no open transaction")),
        "{err}"
    );
    producer.begin_transaction().await.unwrap();
    let err = producer.begin_transaction().await.unwrap_err();
    assert!(
        matches!(&err, Error::Transactional(t) if t.contains("already has an open")),
        "{err}"
    );
    producer.abort_transaction().await.unwrap();
    producer.close().await;

    let plain = common::producer();
    let err = plain.begin_transaction().await.unwrap_err();
    assert!(
        matches!(&err, Error::Transactional(t) if t.contains("not transactional")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_transaction_coordinator_is_a_clear_error_within_the_timeout() {
    let producer = Producer::builder("xkafka-tests-txn")
        .brokers(["127.0.0.1:1"])
        .transactional_id(unique("txn-nowhere"))
        .transaction_timeout(Duration::from_secs(2))
        .error_handler(|_| {})
        .build()
        .unwrap();
    let started = Instant::now();
    let err = producer.begin_transaction().await.unwrap_err();
    // A timed-out init_transactions is resumed (a coordinator failover can
    // outlast one bound: see xkafka-reliability's netns_init), 4 calls of
    // the 2 s bound at the most: then a clear error.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4 * 2 + 3), "{elapsed:?}");
    assert_eq!(err.operation(), Some(Operation::InitTransactions), "{err}");

    // The same producer in a consumer: `run` returns that error.
    let producer = Producer::builder("xkafka-tests-txn")
        .brokers(["127.0.0.1:1"])
        .transactional_id(unique("txn-nowhere"))
        .transaction_timeout(Duration::from_secs(2))
        .error_handler(|_| {})
        .build()
        .unwrap();
    let consumer = consumer(&unique("txn-nowhere"), "unused")
        .transactional(producer)
        .error_handler(|_| Decision::Continue)
        .handler(|_m: Message| async {})
        .build()
        .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        consumer.run(std::future::pending()),
    )
    .await
    .expect("returns")
    .unwrap_err();
    assert_eq!(err.operation(), Some(Operation::InitTransactions), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_misconfiguration_is_refused_at_build() {
    let build = |b: xkafka::ConsumerBuilder| {
        b.error_handler(|_| Decision::Stop)
            .handler(|_m: Message| async {})
            .build()
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let plain = common::producer();
    let err = build(consumer("g", "t").transactional(plain.clone()));
    assert!(err.contains("not transactional"), "{err}");
    let err = build(consumer("g", "t").commit_mode(CommitMode::Transactional));
    assert!(err.contains(".transactional(producer)"), "{err}");
    let txn = txn_producer(&unique("txn-misuse"));
    let err = build(
        consumer("g", "t")
            .transactional(txn.clone())
            .commit_mode(CommitMode::Manual),
    );
    assert!(err.contains("choose one"), "{err}");
    let err = build(
        consumer("g", "t")
            .transactional(txn.clone())
            .transaction_interval(Duration::ZERO),
    );
    assert!(err.contains("transaction_interval"), "{err}");
    let err = build(
        consumer("g", "t")
            .transactional(txn.clone())
            .transaction_max_messages(0),
    );
    assert!(err.contains("transaction_max_messages"), "{err}");
    // One producer, one consumer.
    let _first = consumer("g1", "t")
        .transactional(txn.clone())
        .error_handler(|_| Decision::Stop)
        .handler(|_m: Message| async {})
        .build()
        .unwrap();
    let err = build(consumer("g2", "t").transactional(txn.clone()));
    assert!(err.contains("already drives"), "{err}");
    let err = txn.begin_transaction().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("belongs to the transactional consumer"),
        "{err}"
    );
    let err = Producer::builder("x")
        .brokers([brokers()])
        .transactional_id(" ")
        .error_handler(|_| {})
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Transactional(_)), "{err}");
    let _ = Consumer::builder("unused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_join_the_transaction_and_abort_with_it() {
    use xkafka::dlq::DeadLetterLayer;
    use xkafka::middleware::{from_fn, Next};

    let input = topic("txn-dlq-in", 1).await;
    let output = topic("txn-dlq-out", 1).await;
    let dlq = topic("txn-dlq-dead", 1).await;
    let p = producer();
    fill(&p, &input, 0, 20).await;
    p.close().await;
    let group = unique("txn-dlq");
    let id = unique("txn-dlq-id");

    // Offset 5 always fails and is dead-lettered (through the transactional
    // producer); with `stop_at_10`, a failure outside the dead-letter layer
    // then stops the consumer at offset 10, in the same transaction.
    let build = |stop_at_10: bool, producer: &Producer, calls: &Arc<AtomicUsize>| {
        let output_producer = producer.clone();
        let out: Arc<str> = output.as_str().into();
        let calls = calls.clone();
        consumer(&group, &input)
            .transactional(producer.clone())
            .transaction_interval(Duration::from_secs(20))
            .error_handler(|err| {
                eprintln!("consumer error: {err}");
                Decision::Stop
            })
            .layer(from_fn(move |m: Message, next: Next| async move {
                if stop_at_10 && m.offset() == Some(10) {
                    return Err::<Ack, BoxError>("stopping at 10".into());
                }
                next.run(m).await
            }))
            .layer(DeadLetterLayer::new(producer.clone(), dlq.as_str()))
            .handler(move |m: Message| {
                let (producer, out) = (output_producer.clone(), out.clone());
                calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if m.offset() == Some(5) {
                        return Err::<Ack, BoxError>("offset 5 cannot be processed".into());
                    }
                    producer
                        .publish(
                            Message::builder(out)
                                .value(m.value().cloned().unwrap_or_default())
                                .build(),
                        )
                        .await?;
                    Ok(Ack::Success)
                }
            })
            .build()
            .unwrap()
    };

    let producer = txn_producer(&id);
    let calls = Arc::new(AtomicUsize::new(0));
    let err = build(true, &producer, &calls)
        .run(std::future::pending())
        .await
        .expect_err("stops at 10");
    assert!(matches!(err, Error::Handler { offset: 10, .. }), "{err}");
    producer.close().await;
    assert_eq!(
        read_all(&dlq, "read_committed").len(),
        0,
        "the dead letter was in the aborted transaction"
    );
    assert_eq!(
        read_all(&dlq, "read_uncommitted").len(),
        1,
        "it was written (then aborted)"
    );

    let producer = txn_producer(&id);
    let restarted = build(false, &producer, &calls);
    let (g, i) = (group.clone(), input.clone());
    restarted
        .run(async move { wait_committed(&g, &i, 1, &[20]).await })
        .await
        .expect("second run");
    producer.close().await;
    let dead = read_all(&dlq, "read_committed");
    assert_eq!(dead.len(), 1, "offset 5 dead-lettered once: {dead:?}");
    let out = read_all(&output, "read_committed");
    assert_eq!(out.len(), 19);
    assert_eq!(counts(&out).values().max(), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abortable_commit_failure_aborts_rewinds_and_handles_the_messages_again() {
    let input = topic("txn-abortable-in", 1).await;
    let p = producer();
    fill(&p, &input, 0, 30).await;
    p.close().await;
    // An output topic that refuses records over 1,000 bytes: the broker
    // rejects one such record for good, which leaves the transaction that
    // holds it abortable.
    let output = unique("txn-abortable-out");
    topic_refusing_records_over(&output, 1_000).await;

    let group = unique("txn-abortable");
    let producer = txn_producer(&unique("txn-abortable-id"));
    let published = producer.clone();
    let out: Arc<str> = output.as_str().into();
    let oversized = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let (errors, on_error) = common::recording_error_handler(Decision::Continue);
    let (o, c) = (oversized.clone(), calls.clone());
    let consumer = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_interval(Duration::from_millis(100))
        .error_handler(on_error)
        .handler(move |m: Message| {
            let (published, out) = (published.clone(), out.clone());
            c.fetch_add(1, Ordering::SeqCst);
            // Offset 7's output is too large the first time only.
            let big = m.offset() == Some(7) && o.swap(false, Ordering::SeqCst);
            async move {
                let value = if big {
                    vec![b'x'; 4_000]
                } else {
                    m.value().cloned().unwrap_or_default().to_vec()
                };
                // Not awaiting the delivery: the handler succeeds, and the
                // failure surfaces when the transaction commits.
                published
                    .publish_async(Message::builder(out).value(value).build())
                    .await?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let (g, i) = (group.clone(), input.clone());
    let summary = consumer
        .run(async move { wait_committed(&g, &i, 1, &[30]).await })
        .await
        .expect("run");
    assert!(summary.transactions_aborted >= 1, "{summary:?}");
    producer.close().await;
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("committing a transaction")),
        "the error handler heard of the failed commit: {errors:?}"
    );
    assert!(
        calls.load(Ordering::SeqCst) > 30,
        "the aborted transaction's messages were handled again"
    );
    let out = read_all(&output, "read_committed");
    assert_eq!(
        out.len(),
        30,
        "every input's output once, the oversized one never"
    );
    assert_eq!(counts(&out).values().max(), Some(&1));
}

/// Stopped while transactions are full and messages wait in the lanes
/// (concurrency, per-key order, a backlog): what was dispatched is handled,
/// the open transaction commits, and `run` returns well inside its
/// shutdown timeout. (A lane used to leave queued messages unhandled once
/// stopping, so the transaction could neither end nor commit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_under_load_commits_what_was_dispatched_quickly() {
    let input = topic("txn-load-in", 6).await;
    let output = topic("txn-load-out", 6).await;
    fill_spread(&input, 6, 3_000).await;
    let group = unique("txn-load");
    let producer = txn_producer(&unique("txn-load-id"));
    let calls = Arc::new(AtomicUsize::new(0));
    let p = producer.clone();
    let out: Arc<str> = output.as_str().into();
    let c = calls.clone();
    let consumer = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_max_messages(100)
        .concurrency(8)
        .order(Order::PerKey)
        .shutdown_timeout(Duration::from_secs(10))
        .error_handler(|err| {
            eprintln!("consumer error: {err}");
            Decision::Stop
        })
        .handler(move |m: Message| {
            let (p, out) = (p.clone(), out.clone());
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                p.publish(
                    Message::builder(out)
                        .value(m.value().cloned().unwrap_or_default())
                        .build(),
                )
                .await?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let handle = consumer.shutdown_handle();
    let probe = calls.clone();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    until(
        || probe.load(Ordering::SeqCst) >= 500,
        Duration::from_secs(30),
    )
    .await;
    let stopping = Instant::now();
    handle.shutdown();
    let summary = run.await.unwrap().expect("run");
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "stopped in {took:?}: {summary:?}"
    );
    assert!(summary.closed_cleanly, "{summary:?}");
    assert_eq!(summary.transactions_aborted, 0, "{summary:?}");
    assert_eq!(summary.failed + summary.abandoned, 0, "{summary:?}");
    assert_eq!(
        summary.committed.values().sum::<i64>() as u64,
        summary.succeeded,
        "everything handled was committed: {summary:?}"
    );
    producer.close().await;
    let records = read_all(&output, "read_committed");
    assert_eq!(records.len() as u64, summary.succeeded);
    assert_eq!(counts(&records).values().max(), Some(&1));
}

/// A one-partition input of 100 messages whose group committed offset 50,
/// and a member that then sent offset 60 into a transaction and died
/// before it ended: the commit stays pending (the offsets unstable) until
/// the returned producer aborts it, or the broker after its timeout.
struct PendingCommit {
    input: String,
    output: String,
    group: String,
    zombie: xkafka::raw::rdkafka::producer::BaseProducer,
}

fn raw_member(group: &str) -> ClientConfig {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .clone()
}

async fn pending_commit(prefix: &str) -> PendingCommit {
    use xkafka::raw::rdkafka::producer::{BaseProducer, Producer as _};
    use xkafka::raw::rdkafka::util::Timeout;

    let input = topic(&format!("{prefix}-in"), 1).await;
    let output = topic(&format!("{prefix}-out"), 1).await;
    let p = producer();
    fill(&p, &input, 0, 100).await;
    p.close().await;
    let group = unique(prefix);

    let committer: BaseConsumer = raw_member(&group).create().unwrap();
    let mut half = TopicPartitionList::new();
    half.add_partition_offset(&input, 0, Offset::Offset(50))
        .unwrap();
    committer
        .commit(&half, xkafka::raw::rdkafka::consumer::CommitMode::Sync)
        .expect("commit 50");
    drop(committer);

    let member: BaseConsumer = raw_member(&group).create().unwrap();
    member.subscribe(&[&input]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while member.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the zombie joined the group");
        let _ = member.poll(Duration::from_millis(100));
    }
    let zombie: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("transactional.id", unique(&format!("{prefix}-zombie")))
        .create()
        .unwrap();
    let t = Timeout::After(Duration::from_secs(30));
    zombie.init_transactions(t).unwrap();
    zombie.begin_transaction().unwrap();
    let mut sixty = TopicPartitionList::new();
    sixty
        .add_partition_offset(&input, 0, Offset::Offset(60))
        .unwrap();
    zombie
        .send_offsets_to_transaction(&sixty, &member.group_metadata().unwrap(), t)
        .expect("the zombie's offsets joined its transaction");
    drop(member);
    PendingCommit {
        input,
        output,
        group,
        zombie,
    }
}

/// A transactional consumer of the pending commit's input that records the
/// offsets it handles, running, and in the group (its assignment handed out).
struct Recorder {
    seen: Arc<std::sync::Mutex<Vec<i64>>>,
    stop: xkafka::ShutdownHandle,
    run: tokio::task::JoinHandle<Result<xkafka::Summary, Error>>,
    producer: Producer,
}

async fn offset_recorder(pending: &PendingCommit) -> Recorder {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let record = seen.clone();
    let producer = txn_producer(&unique("txn-unstable-c"));
    let publish = producer.clone();
    let out: Arc<str> = pending.output.as_str().into();
    let c = consumer(&pending.group, &pending.input)
        .transactional(producer.clone())
        .error_handler(|err| {
            eprintln!("C: {err}");
            Decision::Stop
        })
        .handler(move |m: Message| {
            let (record, publish, out) = (record.clone(), publish.clone(), out.clone());
            async move {
                record.lock().unwrap().push(m.offset().unwrap());
                publish
                    .publish(Message::builder(out).value("out").build())
                    .await?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let stop = c.shutdown_handle();
    let run = tokio::spawn(c.run(std::future::pending()));
    until_stable(&pending.group, 1).await;
    Recorder {
        seen,
        stop,
        run,
        producer,
    }
}

/// Until the group is stable with `members` members (their assignment
/// handed out).
async fn until_stable(group: &str, members: usize) {
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = probe
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .unwrap();
        if groups
            .groups()
            .iter()
            .any(|g| g.state() == "Stable" && g.members().len() == members)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{group}: {members} member(s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// librdkafka (2.12) puts a partition whose committed offset a pending
/// transaction holds (`UNSTABLE_OFFSET_COMMIT`) back on its pending list
/// with the *invalid* offset when a rebalance lands while its offset query
/// is in flight, and then starts it from `auto.offset.reset`: everything
/// since the beginning is handled again. A member killed inside its
/// transaction's commit leaves exactly such a pending commit, until the
/// broker aborts it after `transaction.timeout.ms`. The consumer must wait
/// for the committed offset instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_while_a_pending_transaction_holds_the_offsets_does_not_reset_them() {
    use xkafka::raw::rdkafka::producer::Producer as _;

    let pending = pending_commit("txn-unstable").await;
    let elsewhere = topic("txn-unstable-other", 1).await;
    let Recorder {
        seen,
        stop: stop_c,
        run: c,
        producer: producer_c,
    } = offset_recorder(&pending).await;
    // The experiment's window: C's query of the unstable offset is retried
    // every 100 ms or more from now on (librdkafka's own query would be).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A member joins (subscribed elsewhere, so the input stays C's): a
    // rebalance while C's query is in flight.
    let stop_d = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = {
        let (stop, config) = (stop_d.clone(), raw_member(&pending.group));
        std::thread::spawn(move || {
            let d: BaseConsumer = config.create().unwrap();
            d.subscribe(&[&elsewhere]).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let _ = d.poll(Duration::from_millis(100));
            }
        })
    };
    // Whatever C handles while the zombie's commit is pending was read from
    // an offset that is not the group's (a negative is observed over time).
    let probe_seen = seen.clone();
    until(
        || !probe_seen.lock().unwrap().is_empty(),
        Duration::from_secs(5),
    )
    .await;
    let before_abort = seen.lock().unwrap().clone();
    pending
        .zombie
        .abort_transaction(Duration::from_secs(30))
        .unwrap();

    let probe_seen = seen.clone();
    until(
        || probe_seen.lock().unwrap().contains(&99),
        Duration::from_secs(30),
    )
    .await;
    stop_c.shutdown();
    c.await.unwrap().expect("C");
    stop_d.store(true, Ordering::SeqCst);
    d.join().unwrap();
    producer_c.close().await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        before_abort.is_empty(),
        "C handled offsets {:?}.. while the group's offset was unknown (pending)",
        before_abort.first()
    );
    assert_eq!(
        seen,
        (50..100).collect::<Vec<i64>>(),
        "C started at the group's committed offset, 50"
    );
}

/// Waiting for unstable offsets happens on the poll thread, inside the
/// rebalance callback: a shutdown requested meanwhile must still end the
/// consumer within its bound (the wait would otherwise last until the
/// zombie's transaction times out, or most of `max.poll.interval.ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_waiting_for_unstable_offsets_still_stops_within_its_bound() {
    use xkafka::raw::rdkafka::producer::Producer as _;

    let pending = pending_commit("txn-unstable-stop").await;
    let Recorder {
        seen,
        stop: stop_c,
        run: c,
        producer: producer_c,
    } = offset_recorder(&pending).await;
    // Inside the wait by now (its first slice is 500 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    stop_c.shutdown();
    // The consumer's shutdown timeout is 5 s (`common::consumer`); past it
    // `run` returns anyway, abandoning a poll thread that still waits.
    let summary = tokio::time::timeout(Duration::from_secs(8), c)
        .await
        .expect("stopped within its bound")
        .unwrap()
        .expect("C");
    let took = asked.elapsed();
    assert!(
        summary.closed_cleanly && took < Duration::from_secs(5),
        "the poll thread left its wait and closed the consumer ({took:?}): {summary:?}"
    );
    pending
        .zombie
        .abort_transaction(Duration::from_secs(30))
        .unwrap();
    producer_c.close().await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing handled from an offset that is not the group's"
    );
}
