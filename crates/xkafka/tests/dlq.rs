//! Dead-letter topic on the real broker.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xkafka::dlq::{headers, DeadLetterLayer};
use xkafka::middleware::retry::{Backoff, RetryLayer};
use xkafka::middleware::{from_fn, Next};
use xkafka::{Ack, BoxError, Decision, Delivery, Message, Producer};

fn poison(m: &Message) -> bool {
    matches!(m.offset(), Some(3) | Some(6))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic_before_their_offset_moves() {
    let source = topic("dlq-src", 1).await;
    let dead = topic("dlq-dead", 1).await;
    let producer = producer();
    for i in 0..10 {
        let msg = Message::builder(source.as_str())
            .partition(0)
            .key(format!("k{i}"))
            .value(vec![i as u8, 0xff])
            .header("trace", format!("t{i}"))
            .build();
        producer.publish(msg).await.unwrap();
    }
    producer.close().await;

    // Records what the dead-letter producer got acknowledged, so that the
    // consumer side can check it happened before the message was settled.
    let dead_lettered: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = dead_lettered.clone();
    let dlq_producer = Producer::builder("xkafka-tests-dlq")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("dlq producer: {err}"))
        .layer(from_fn(move |m: Message, next: Next<Delivery>| {
            let record = record.clone();
            async move {
                let original = m
                    .headers()
                    .get_str(headers::ORIGINAL_OFFSET)
                    .unwrap_or("?")
                    .to_owned();
                let delivery = next.run(m).await?;
                record.lock().unwrap().push(original);
                Ok(delivery)
            }
        }))
        .build()
        .unwrap();
    let settled = Arc::new(AtomicUsize::new(0));
    let order_ok = Arc::new(AtomicUsize::new(0));
    let (counter, seen, ok) = (settled.clone(), dead_lettered.clone(), order_ok.clone());
    let group = unique("dlq-g");
    let consumer = consumer(&group, &source)
        .error_handler(|err| panic!("unexpected: {err}"))
        .layer(from_fn(move |m: Message, next: Next| {
            let (counter, seen, ok) = (counter.clone(), seen.clone(), ok.clone());
            async move {
                let offset = m.offset().unwrap().to_string();
                let out = next.run(m).await;
                if out.as_ref().ok() == Some(&Ack::Skip) && seen.lock().unwrap().contains(&offset) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                counter.fetch_add(1, Ordering::Relaxed);
                out
            }
        }))
        .layer(DeadLetterLayer::new(dlq_producer.clone(), dead.as_str()))
        .layer(RetryLayer::new(
            Backoff::new()
                .initial_delay(Duration::from_millis(10))
                .max_attempts(3),
        ))
        .handler(|m: Message| async move {
            if poison(&m) {
                Err::<(), BoxError>(format!("cannot process {}", m.location()).into())
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let probe = settled.clone();
    let summary = consumer
        .run(until(
            move || probe.load(Ordering::Relaxed) >= 10,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    assert_eq!(
        (summary.succeeded, summary.skipped, summary.failed),
        (8, 2, 0)
    );
    assert_eq!(
        order_ok.load(Ordering::Relaxed),
        2,
        "each poison message was on the dead-letter topic before it was settled"
    );
    assert_eq!(
        committed(&group, &source, 0),
        Some(10),
        "the offset moved past them afterwards"
    );
    dlq_producer.close().await;

    let copies = consume(&unique("dlq-reader"), &dead, 2, Duration::from_secs(30)).await;
    assert_eq!(copies.len(), 2);
    for (copy, offset) in copies.iter().zip([3, 6]) {
        let h = copy.headers();
        assert_eq!(copy.key_str(), Some(format!("k{offset}").as_str()));
        assert_eq!(
            copy.value().map(|v| v.to_vec()),
            Some(vec![offset as u8, 0xff]),
            "original bytes"
        );
        assert_eq!(
            h.get_str("trace"),
            Some(format!("t{offset}").as_str()),
            "original headers kept"
        );
        assert_eq!(h.get_str(headers::ORIGINAL_TOPIC), Some(source.as_str()));
        assert_eq!(h.get_str(headers::ORIGINAL_PARTITION), Some("0"));
        assert_eq!(
            h.get_str(headers::ORIGINAL_OFFSET),
            Some(offset.to_string().as_str())
        );
        assert_eq!(h.get_str(headers::CONSUMER_GROUP), Some(group.as_str()));
        assert_eq!(h.get_str(headers::ATTEMPTS), Some("3"));
        assert!(h
            .get_str(headers::ERROR)
            .unwrap()
            .contains("cannot process"));
        assert!(h.get_str(headers::ORIGINAL_TIMESTAMP).is_some());
        assert!(h
            .get_str(headers::FIRST_FAILURE)
            .unwrap()
            .parse::<u64>()
            .is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_topic_skips_nothing() {
    let source = topic("dlq-none-src", 1).await;
    let producer = producer();
    fill(&producer, &source, 0, 5).await;
    producer.close().await;
    let dlq_producer = Producer::builder("xkafka-tests-dlq-missing")
        .brokers([brokers()])
        .config("message.timeout.ms", "3000")
        .error_handler(|_| {})
        .build()
        .unwrap();
    let group = unique("dlq-none-g");
    let (errors, on_error) = recording_error_handler(Decision::Stop);
    let consumer = consumer(&group, &source)
        .error_handler(on_error)
        // This topic does not exist, and the broker does not create topics.
        .layer(
            DeadLetterLayer::new(dlq_producer, unique("dlq-missing"))
                .timeout(Duration::from_secs(10)),
        )
        .handler(|m: Message| async move {
            if m.offset() == Some(3) {
                Err::<(), BoxError>("poison".into())
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let err = consumer.run(std::future::pending()).await.unwrap_err();
    assert_eq!(err.message_location(), Some((source.as_str(), 0, 3)));
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors[0].contains("poison (and publishing it to the dead-letter topic"),
        "{errors:?}"
    );
    assert_eq!(
        committed(&group, &source, 0),
        Some(3),
        "the poison message was not skipped"
    );
}

/// Two messages of one batch fail (offsets 3 and 6): each becomes a
/// dead-letter record of its own, with its own bytes, key, offset and
/// error — not one record for the batch, and not only the first failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_messages_of_a_batch_are_dead_lettered_one_by_one() {
    const COUNT: usize = 8;
    let source = topic("dlq-batch-src", 1).await;
    let dead = topic("dlq-batch-dead", 1).await;
    let producer = producer();
    fill(&producer, &source, 0, COUNT).await;
    producer.close().await;
    let dlq_producer = Producer::builder("xkafka-tests-dlq-batch")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("dlq producer: {err}"))
        .build()
        .unwrap();
    let group = unique("dlq-batch-g");
    // The sizes of the batches handled: both failures in one batch.
    let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
    let record = batches.clone();
    let consumer = xkafka::BatchConsumer::builder(group.as_str())
        .brokers([brokers()])
        .topics([source.as_str()])
        .config("auto.offset.reset", "earliest")
        .batch_size(COUNT)
        .batch_timeout(Duration::from_secs(5))
        .error_handler(|err| panic!("unexpected: {err}"))
        .layer(DeadLetterLayer::new(dlq_producer.clone(), dead.as_str()))
        .handler(move |b: xkafka::Batch| {
            let record = record.clone();
            async move {
                for (i, m) in b.iter().enumerate() {
                    if poison(m) {
                        b.fail(i, format!("bad {}", m.location()));
                    }
                }
                record.lock().unwrap().push(b.len());
                Ok::<(), BoxError>(())
            }
        })
        .build()
        .unwrap();
    let probe = batches.clone();
    let summary = consumer
        .run(until(
            move || probe.lock().unwrap().iter().sum::<usize>() >= COUNT,
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    assert_eq!(
        *batches.lock().unwrap(),
        [COUNT],
        "one batch holding both failures"
    );
    assert_eq!(
        (summary.succeeded, summary.skipped, summary.failed),
        (6, 2, 0),
        "offsets 3 and 6 dead-lettered, each counted as skipped"
    );
    assert_eq!(committed(&group, &source, 0), Some(COUNT as i64));
    dlq_producer.close().await;
    let copies = consume(
        &unique("dlq-batch-reader"),
        &dead,
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(copies.len(), 2, "one dead-letter record per failed message");
    for (copy, offset) in copies.iter().zip([3, 6]) {
        let h = copy.headers();
        assert_eq!(
            h.get_str(headers::ORIGINAL_OFFSET),
            Some(offset.to_string().as_str())
        );
        assert_eq!(copy.key_str(), Some(format!("k{offset}").as_str()));
        assert_eq!(
            copy.value_str(),
            Some(format!("p0-v{offset}").as_str()),
            "the failed message's own bytes"
        );
        let error = h.get_str(headers::ERROR).unwrap();
        assert!(
            error.starts_with(&format!("bad {source}[0]@{offset}")),
            "its own error: {error}"
        );
        assert_eq!(h.get_all(headers::ERROR).count(), 1);
    }
}
