//! Exactly-once on the paths real services take, on the real broker:
//! handlers that compute without yielding when their transaction aborts,
//! handlers slower than the fetch (a transaction still ends on time), and
//! an output the broker always refuses (isolated and handed to the error
//! handler instead of aborting forever).

mod common;
mod eos;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{consumer, topic, unique, until};
use eos::*;
use xkafka::raw::rdkafka::ClientConfig;
use xkafka::{Ack, BoxError, Decision, Error, Message, Order, Producer};

/// Burns `ms` of CPU on the calling thread without yielding (a parser, a
/// compressor: what an `abort()` of the task cannot interrupt).
fn compute(ms: u64) -> u64 {
    let until = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..1_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    x
}

/// A handler that awaits once, computes for `cpu_ms` without yielding,
/// then publishes the input's value to `output` and waits for the
/// acknowledgement.
fn await_compute_publish(
    producer: &Producer,
    output: &str,
    cpu_ms: u64,
    calls: &Arc<AtomicUsize>,
) -> impl Fn(Message) -> BoxFuture<Result<Ack, BoxError>> + Clone + Send + Sync + 'static {
    let producer = producer.clone();
    let output: Arc<str> = output.into();
    let calls = calls.clone();
    move |m: Message| {
        let (producer, output, calls) = (producer.clone(), output.clone(), calls.clone());
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            std::hint::black_box(compute(cpu_ms));
            let out = Message::builder(output)
                .key(m.key().cloned().unwrap_or_default())
                .value(m.value().cloned().unwrap_or_default())
                .build();
            producer.publish(out).await?;
            Ok(Ack::Success)
        })
    }
}

/// Issue 27, item 1. A transaction aborted by a revoke whose grace is
/// shorter than the handlers' CPU step: the handlers caught inside that
/// step publish after the abort. Before the fence, their outputs joined the
/// member's next transaction and committed, while their inputs were read
/// and handled again: a `read_committed` reader saw those outputs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_handler_that_computes_without_yielding_never_publishes_into_the_next_transaction(
) {
    const INPUTS: usize = 160;
    let input = topic("txn-cpu-in", 4).await;
    let output = topic("txn-cpu-out", 4).await;
    fill_spread(&input, 4, INPUTS).await;
    let group = unique("txn-cpu");
    let calls = Arc::new(AtomicUsize::new(0));
    let aborted = Arc::new(AtomicUsize::new(0));
    let member = |name: &str| {
        let producer = txn_producer(&unique(name));
        let aborted = aborted.clone();
        let built = consumer(&group, &input)
            .transactional(producer.clone())
            .transaction_interval(Duration::from_millis(300))
            .concurrency(4)
            .order(Order::PerKey)
            .revoke_grace(Duration::from_millis(20))
            .error_handler(move |err: &Error| {
                eprintln!("{err}");
                if matches!(err, Error::Transactional(_)) {
                    aborted.fetch_add(1, Ordering::SeqCst);
                }
                Decision::Continue
            })
            .handler(await_compute_publish(&producer, &output, 120, &calls))
            .build()
            .unwrap();
        (built, producer)
    };
    let (a, producer_a) = member("txn-cpu-a");
    let stop_a = a.shutdown_handle();
    let a = tokio::spawn(a.run(std::future::pending()));
    // A second member joins and leaves three times while A's handlers are
    // busy computing: each join revokes A's partitions within 20 ms.
    for round in 0..3 {
        let probe = calls.clone();
        let seen = probe.load(Ordering::SeqCst);
        until(
            move || probe.load(Ordering::SeqCst) >= seen + 8,
            Duration::from_secs(30),
        )
        .await;
        let (b, producer_b) = member(&format!("txn-cpu-b{round}"));
        let stop_b = b.shutdown_handle();
        let b = tokio::spawn(b.run(std::future::pending()));
        let probe = calls.clone();
        let seen = probe.load(Ordering::SeqCst);
        until(
            move || probe.load(Ordering::SeqCst) >= seen + 8,
            Duration::from_secs(30),
        )
        .await;
        stop_b.shutdown();
        eprintln!("B{round}: {:?}", b.await.unwrap());
        producer_b.close().await;
    }
    let ends = end_offsets(&input, 4);
    wait_committed(&group, &input, 4, &ends).await;
    stop_a.shutdown();
    eprintln!("A: {:?}", a.await.unwrap().expect("A"));
    producer_a.close().await;
    assert!(
        aborted.load(Ordering::SeqCst) >= 1,
        "at least one revoke aborted a transaction with handlers still computing"
    );
    let records = read_all(&output, "read_committed");
    let counts = counts(&records);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "outputs committed more than once: {twice:?}"
    );
    assert_eq!(counts.len(), INPUTS, "every input's output once");
}

/// Issue 27, item 0. Handlers slower than the fetch (3 ms each, eight at a
/// time, per-key order, six partitions) and a 200 ms interval: a
/// transaction ends on time. Before, everything fetched was dispatched into
/// the open transaction, whose barrier then waited for all of it: 6,000
/// inputs committed in one or two transactions of several seconds each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_ends_on_time_when_handlers_are_slower_than_the_fetch() {
    const INPUTS: usize = 6_000;
    let interval = Duration::from_millis(200);
    let input = topic("txn-slow-in", 6).await;
    let output = topic("txn-slow-out", 6).await;
    fill_spread(&input, 6, INPUTS).await;
    let group = unique("txn-slow");
    let producer = txn_producer(&unique("txn-slow-id"));
    let handled: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let (published, out, seen) = (
        producer.clone(),
        Arc::<str>::from(output.as_str()),
        handled.clone(),
    );
    let consumer = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_interval(interval)
        .concurrency(8)
        .order(Order::PerKey)
        .error_handler(|err: &Error| {
            eprintln!("{err}");
            Decision::Stop
        })
        .handler(move |m: Message| {
            let (published, out, seen) = (published.clone(), out.clone(), seen.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                published
                    .publish_async(
                        Message::builder(out)
                            .value(m.value().cloned().unwrap_or_default())
                            .build(),
                    )
                    .await?;
                seen.lock().unwrap().push(Instant::now());
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let (g, i) = (group.clone(), input.clone());
    let ends = end_offsets(&input, 6);
    let summary = consumer
        .run(async move { wait_committed(&g, &i, 6, &ends).await })
        .await
        .expect("run");
    producer.close().await;
    let handled = handled.lock().unwrap().clone();
    let busy = *handled.last().unwrap() - handled[0];
    let per_second = summary.transactions_committed as f64 / busy.as_secs_f64();
    eprintln!(
        "{INPUTS} inputs handled in {busy:?}: {} transactions committed ({per_second:.1}/s at \
         an interval of {interval:?}), {} aborted",
        summary.transactions_committed, summary.transactions_aborted
    );
    // On time: a transaction lasts its interval plus the barrier, which
    // waits for a bounded amount of work (about half an interval's worth).
    // Three intervals per transaction on average is the bound asserted.
    let expected = busy.as_secs_f64() / (3.0 * interval.as_secs_f64());
    assert!(
        summary.transactions_committed as f64 >= expected,
        "{} transactions in {busy:?}: fewer than one per {:?}",
        summary.transactions_committed,
        interval * 3
    );
    assert_eq!(summary.transactions_aborted, 0);
    let records = read_all(&output, "read_committed");
    assert_eq!(records.len(), INPUTS);
    assert_eq!(counts(&records).values().max(), Some(&1));
}

/// Issue 27, item 2. One input's output is always refused by the broker
/// (larger than the output topic's `max.message.bytes`), which makes every
/// transaction holding it abortable. Before, that was abort, rewind, the
/// same input again, abort — forever. Now the input is isolated (one
/// message per transaction) and handed to the error handler as that
/// message's failure: `Continue` skips it, the rest commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_the_broker_always_refuses_is_isolated_and_given_to_the_error_handler() {
    let input = topic("txn-poison-in", 2).await;
    fill_spread(&input, 2, 60).await;
    let output = unique("txn-poison-out");
    topic_refusing_records_over(&output, 1_000).await;

    let group = unique("txn-poison");
    let producer = txn_producer(&unique("txn-poison-id"));
    let (published, out) = (producer.clone(), Arc::<str>::from(output.as_str()));
    let (errors, on_error) = common::recording_error_handler(Decision::Continue);
    let consumer = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_interval(Duration::from_millis(100))
        .concurrency(4)
        .error_handler(move |err: &Error| {
            eprintln!("error handler: {err}");
            on_error(err)
        })
        .handler(move |m: Message| {
            let (published, out) = (published.clone(), out.clone());
            async move {
                // Input v17's output is too large, every time.
                let value = if m.value_str() == Some("v17") {
                    vec![b'x'; 4_000]
                } else {
                    m.value().cloned().unwrap_or_default().to_vec()
                };
                published
                    .publish_async(Message::builder(out).value(value).build())
                    .await?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let (g, i) = (group.clone(), input.clone());
    let ends = end_offsets(&input, 2);
    let started = Instant::now();
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run(async move { wait_committed(&g, &i, 2, &ends).await }),
    )
    .await
    .expect("the poison output did not hold the consumer for a minute")
    .expect("run");
    eprintln!("{summary:?} in {:?}", started.elapsed());
    producer.close().await;
    let errors = errors.lock().unwrap().clone();
    // v17 is the 9th message (offset 8) of partition 1.
    let located: Vec<&String> = errors.iter().filter(|e| e.contains("[1]@8")).collect();
    assert!(
        !located.is_empty(),
        "the error handler was told which message's output is refused: {errors:?}"
    );
    let records = read_all(&output, "read_committed");
    assert_eq!(records.len(), 59, "every other input's output");
    assert_eq!(counts(&records).values().max(), Some(&1));
    assert!(!counts(&records).contains_key("v17"));
    assert!(
        summary.transactions_aborted <= 20,
        "isolated within a bounded number of aborts: {summary:?}"
    );
}

/// Issue 27, item 2, with a dead-letter layer: the isolated input goes
/// through the handler stack once more, failed without calling its handler
/// (which would publish the refused output again), so the
/// `DeadLetterLayer` dead-letters it — through the consumer's own
/// producer, in the transaction that commits past it. Before, it went to
/// the error handler whatever the layers: no dead letter was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_the_broker_always_refuses_is_dead_lettered_in_the_transaction() {
    use xkafka::dlq::{headers, DeadLetterLayer};
    use xkafka::middleware::retry::{Backoff, RetryLayer};
    use xkafka::raw::rdkafka::message::{Headers as _, Message as _};

    let input = topic("txn-poison-dlq-in", 2).await;
    fill_spread(&input, 2, 60).await;
    let output = unique("txn-poison-dlq-out");
    topic_refusing_records_over(&output, 1_000).await;
    let dead = topic("txn-poison-dlq-dead", 1).await;

    let group = unique("txn-poison-dlq");
    let producer = txn_producer(&unique("txn-poison-dlq-id"));
    let (published, out) = (producer.clone(), Arc::<str>::from(output.as_str()));
    let calls = Arc::new(AtomicUsize::new(0));
    let called = calls.clone();
    let (errors, on_error) = common::recording_error_handler(Decision::Continue);
    let consumer = consumer(&group, &input)
        .transactional(producer.clone())
        .transaction_interval(Duration::from_millis(100))
        .concurrency(4)
        .error_handler(move |err: &Error| {
            eprintln!("error handler: {err}");
            on_error(err)
        })
        .layer(DeadLetterLayer::new(producer.clone(), dead.as_str()))
        // A permanent failure is not retried: three attempts would call
        // the handler again (and publish the refused output) if it were.
        .layer(RetryLayer::new(
            Backoff::new()
                .max_attempts(3)
                .initial_delay(Duration::from_millis(1)),
        ))
        .handler(move |m: Message| {
            let (published, out, called) = (published.clone(), out.clone(), called.clone());
            async move {
                let value = if m.value_str() == Some("v17") {
                    called.fetch_add(1, Ordering::SeqCst);
                    vec![b'x'; 4_000]
                } else {
                    m.value().cloned().unwrap_or_default().to_vec()
                };
                published
                    .publish_async(Message::builder(out).value(value).build())
                    .await?;
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let (g, i) = (group.clone(), input.clone());
    let ends = end_offsets(&input, 2);
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run(async move { wait_committed(&g, &i, 2, &ends).await }),
    )
    .await
    .expect("the poison output did not hold the consumer for a minute")
    .expect("run");
    eprintln!("{summary:?}");
    producer.close().await;

    let errors = errors.lock().unwrap().clone();
    assert!(
        !errors.iter().any(|e| e.contains("[1]@8")),
        "dead-lettered, the input is not the error handler's: {errors:?}"
    );
    let records = read_all(&output, "read_committed");
    assert_eq!(records.len(), 59, "every other input's output");
    assert_eq!(counts(&records).values().max(), Some(&1));
    assert!(!counts(&records).contains_key("v17"));

    let dead = read_records(&dead, "read_committed");
    assert_eq!(dead.len(), 1, "one dead letter, committed once");
    let letter = &dead[0];
    assert_eq!(
        letter.payload(),
        Some(&b"v17"[..]),
        "the input, not its output"
    );
    let header = |name: &str| {
        letter
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        header(headers::ORIGINAL_TOPIC).as_deref(),
        Some(input.as_str())
    );
    assert_eq!(header(headers::ORIGINAL_PARTITION).as_deref(), Some("1"));
    assert_eq!(header(headers::ORIGINAL_OFFSET).as_deref(), Some("8"));
    let why = header(headers::ERROR).unwrap_or_default();
    assert!(why.contains("cannot be committed"), "x-dlq-error: {why}");
    assert_eq!(
        header(headers::ATTEMPTS).as_deref(),
        Some("1"),
        "not retried"
    );
    // The handler ran for v17 only in the transactions isolation aborted
    // (two with it alone, and those before): never once it was marked.
    let handled = calls.load(Ordering::SeqCst);
    assert!(
        (handled as u64) <= summary.transactions_aborted,
        "v17 handled {handled} times for {} aborted transactions",
        summary.transactions_aborted
    );
}

/// Issue 27, item 3. The transaction coordinator answers slower than the
/// transaction timeout for a while (the embedded cluster's round-trip time
/// raised to 1.5 s, the producer's bound 1 s): the commit runs out of time
/// while librdkafka goes on with it. Before, the consumer then aborted —
/// refused by librdkafka as a conflicting call — rewound anyway and
/// stopped. Now the commit is resumed, and the consumer goes on once the
/// coordinator answers in time again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_that_runs_out_of_time_is_resumed_not_aborted() {
    use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
    use xkafka::raw::rdkafka::message::Message as _;
    use xkafka::raw::rdkafka::{Offset, TopicPartitionList};

    common::init_tracing();
    const INPUTS: usize = 60;
    let input = unique("txn-slowcoord-in");
    let output = unique("txn-slowcoord-out");
    let cluster = common::embedded_with(&input, 1, INPUTS).await;
    cluster.create_topic(&output, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let producer = Producer::builder("txn-slowcoord")
        .brokers([bootstrap.clone()])
        .transactional_id(unique("txn-slowcoord-id"))
        .transaction_timeout(Duration::from_secs(1))
        .error_handler(|err| eprintln!("producer: {err}"))
        .build()
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let (published, out, seen) = (
        producer.clone(),
        Arc::<str>::from(output.as_str()),
        handled.clone(),
    );
    let (errors, on_error) = common::recording_error_handler(Decision::Continue);
    let consumer = xkafka::Consumer::builder(unique("txn-slowcoord"))
        .brokers([bootstrap.clone()])
        .topics([input.as_str()])
        .config("auto.offset.reset", "earliest")
        .transactional(producer.clone())
        .transaction_interval(Duration::from_millis(100))
        .error_handler(move |err: &Error| {
            eprintln!("error handler: {err}");
            on_error(err)
        })
        .handler(move |m: Message| {
            let (published, out, seen) = (published.clone(), out.clone(), seen.clone());
            async move {
                published
                    .publish_async(
                        Message::builder(out)
                            .value(m.value().cloned().unwrap_or_default())
                            .key(m.key().cloned().unwrap_or_default())
                            .build(),
                    )
                    .await?;
                // Slow enough that the input spans many transactions.
                tokio::time::sleep(Duration::from_millis(20)).await;
                seen.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(Ack::Success)
            }
        })
        .build()
        .unwrap();
    let status = consumer.status_handle();
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));
    let probe = handled.clone();
    until(
        move || probe.load(Ordering::SeqCst) >= 10,
        Duration::from_secs(30),
    )
    .await;
    cluster
        .broker_round_trip_time(1, Duration::from_millis(1_500))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    let probe = status.clone();
    until(
        move || {
            probe
                .snapshot()
                .partitions
                .iter()
                .any(|p| p.committed == Some(INPUTS as i64))
        },
        Duration::from_secs(60),
    )
    .await;
    assert!(
        !run.is_finished(),
        "the consumer stopped: {:?}",
        errors.lock().unwrap()
    );
    stop.shutdown();
    let summary = run
        .await
        .unwrap()
        .expect("the consumer ran on and stopped cleanly");
    eprintln!("{summary:?}");
    producer.close().await;
    assert_eq!(
        summary.committed.values().copied().max(),
        Some(INPUTS as i64)
    );

    // Read back with read_committed: every input's output exactly once.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique("reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&output, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&tpl).unwrap();
    let mut values = std::collections::BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while values.len() < INPUTS && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            *values
                .entry(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
                .or_default() += 1;
        }
    }
    // A little longer: a duplicate would come after the last new one.
    let quiet = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(100)) {
            *values
                .entry(String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(values.len(), INPUTS, "every input's output: {values:?}");
    assert_eq!(values.values().max(), Some(&1), "none twice: {values:?}");
}
