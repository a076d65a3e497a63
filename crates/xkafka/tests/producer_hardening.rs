//! Producer hardening on librdkafka's mock cluster: a panicking user
//! callback (error handler, delivery callbacks, middleware) leaves the
//! producer working, `close` is bounded even then, and a close that gives up
//! on messages says so to the error handler.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{captured_debug_logs, until};
use xkafka::middleware::{from_fn, Next};
use xkafka::mock::EmbeddedCluster;
use xkafka::{Delivery, Error, Message, Operation, Producer, ProducerBuilder};

/// What each message's own callback received, by message index.
type Outcomes = Arc<Vec<Mutex<Vec<Result<(), String>>>>>;

fn outcomes(n: usize) -> Outcomes {
    Arc::new((0..n).map(|_| Mutex::new(Vec::new())).collect())
}

fn record(outcomes: &Outcomes, i: usize) -> impl FnOnce(Result<Delivery, Error>) + Send + 'static {
    let outcomes = outcomes.clone();
    move |report| {
        outcomes[i]
            .lock()
            .unwrap()
            .push(report.map(|_| ()).map_err(|e| e.to_string()));
    }
}

/// How many callbacks each message's own callback got: all must be 1.
fn calls(outcomes: &Outcomes) -> Vec<usize> {
    outcomes.iter().map(|o| o.lock().unwrap().len()).collect()
}

fn cluster_with(topic: &str) -> EmbeddedCluster {
    let cluster = EmbeddedCluster::start(1).unwrap();
    cluster.create_topic(topic, 1).unwrap();
    cluster
}

fn builder(cluster: &EmbeddedCluster, name: &str) -> ProducerBuilder {
    Producer::builder(name)
        .brokers([cluster.bootstrap_servers()])
        .config("linger.ms", "0")
}

fn msg(topic: &str, i: usize) -> Message {
    Message::builder(topic)
        .key(i.to_string())
        .value("v")
        .build()
}

/// Publishes and waits, failing the test (instead of hanging it) when the
/// report never comes.
async fn publish_within(producer: &Producer, message: Message) -> Delivery {
    tokio::time::timeout(Duration::from_secs(30), producer.publish(message))
        .await
        .expect("publish hung: no delivery report in 30 s")
        .expect("publish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_error_handler_leaves_the_producer_working() {
    let logs = captured_debug_logs();
    let cluster = cluster_with("orders");
    let panics = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let producer = builder(&cluster, "xkafka-tests-panicking-handler")
        .error_handler({
            let (panics, seen) = (panics.clone(), seen.clone());
            move |err| {
                seen.lock().unwrap().push(err.to_string());
                panics.fetch_add(1, Ordering::SeqCst);
                panic!("error handler bug on: {err}");
            }
        })
        .build()
        .unwrap();
    publish_within(&producer, msg("orders", 0)).await;

    // A broker going away is a client error: the handler is called, panics.
    cluster.broker_down(1).unwrap();
    until(
        || panics.load(Ordering::SeqCst) > 0,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        panics.load(Ordering::SeqCst) > 0,
        "the broker going down never reached the error handler"
    );
    cluster.broker_up(1).unwrap();

    // The client goes on: publish gets its report, async callbacks fire.
    let delivery = publish_within(&producer, msg("orders", 1)).await;
    assert_eq!(delivery.partition, 0);
    const N: usize = 20;
    let got = outcomes(N);
    for i in 0..N {
        producer
            .publish_async_with(msg("orders", i), record(&got, i))
            .await
            .unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(20), producer.close())
        .await
        .expect("close hung");
    assert_eq!(report.undelivered, 0);
    assert_eq!(calls(&got), vec![1; N], "every callback exactly once");
    assert!(
        got.iter().all(|o| o.lock().unwrap()[0].is_ok()),
        "all delivered after the broker came back"
    );
    // Its own panics are logged, never handed back to it.
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|e| !e.contains("panicked")),
        "the error handler was told about its own panic: {seen:?}"
    );
    let text = logs.text();
    assert!(
        text.contains("the producer's error handler panicked")
            && text.contains("error handler bug on: kafka client failed"),
        "the panic is logged with its message"
    );
}

/// The scenario that hung before: messages in flight to a broker that is
/// down, an error handler that panics on every error, then `close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_bounded_when_the_error_handler_panics_and_the_broker_is_down() {
    const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
    let cluster = cluster_with("orders");
    let panics = Arc::new(AtomicUsize::new(0));
    let producer = builder(&cluster, "xkafka-tests-close-bounded")
        .close_timeout(CLOSE_TIMEOUT)
        .error_handler({
            let panics = panics.clone();
            move |err| {
                panics.fetch_add(1, Ordering::SeqCst);
                panic!("error handler bug on: {err}");
            }
        })
        .build()
        .unwrap();
    publish_within(&producer, msg("orders", 0)).await;
    cluster.broker_down(1).unwrap();
    until(
        || panics.load(Ordering::SeqCst) > 0,
        Duration::from_secs(30),
    )
    .await;
    assert!(panics.load(Ordering::SeqCst) > 0, "no client error seen");

    const N: usize = 5;
    let got = outcomes(N);
    for i in 0..N {
        producer
            .publish_async_with(msg("orders", i), record(&got, i))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(30), producer.close())
        .await
        .expect("close hung");
    let took = started.elapsed();
    eprintln!("close took {took:?}");
    // The documented bound is the close timeout plus `CLOSE_GRACE` (1 s);
    // a second more for a loaded machine.
    assert!(
        took < CLOSE_TIMEOUT + Duration::from_secs(2),
        "close took {took:?}"
    );
    assert_eq!(report.undelivered, N, "{report:?}");
    let counts = calls(&got);
    assert_eq!(counts, vec![1; N], "every callback exactly once");
    assert!(
        got.iter().all(|o| o.lock().unwrap()[0].is_err()),
        "none can be delivered with the broker down"
    );
}

/// `on_delivery` panics for every message, and every other message's own
/// callback panics too: each callback still runs exactly once, with the
/// message's real outcome.
async fn panicking_delivery_callbacks_lose_nothing(with_middleware: bool) {
    let cluster = cluster_with("orders");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let panicked: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let on_delivery_calls = Arc::new(AtomicUsize::new(0));
    let mut builder = builder(&cluster, "xkafka-tests-panicking-callbacks")
        .error_handler({
            let (errors, panicked) = (errors.clone(), panicked.clone());
            move |err| {
                errors.lock().unwrap().push(err.to_string());
                if let Error::CallbackPanicked {
                    callback,
                    topic,
                    message,
                } = err
                {
                    assert_eq!(topic.as_deref(), Some("orders"));
                    panicked.lock().unwrap().push((callback, message.clone()));
                }
            }
        })
        .on_delivery({
            let calls = on_delivery_calls.clone();
            move |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                panic!("on_delivery bug");
            }
        });
    if with_middleware {
        builder = builder.layer(from_fn(|m: Message, next: Next<Delivery>| next.run(m)));
    }
    let producer = builder.build().unwrap();
    const N: usize = 50;
    let got = outcomes(N);
    for i in 0..N {
        let own = record(&got, i);
        producer
            .publish_async_with(msg("orders", i), move |report| {
                own(report);
                if i % 2 == 0 {
                    panic!("message callback bug");
                }
            })
            .await
            .unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(30), producer.close())
        .await
        .expect("close hung");
    assert_eq!(report.undelivered, 0);
    assert_eq!(on_delivery_calls.load(Ordering::SeqCst), N);
    assert_eq!(
        calls(&got),
        vec![1; N],
        "every message callback exactly once"
    );
    assert!(
        got.iter().all(|o| o.lock().unwrap()[0].is_ok()),
        "each callback got the real (successful) outcome"
    );
    let errors = errors.lock().unwrap();
    let on_delivery_panics = errors
        .iter()
        .filter(|e| e.contains("on_delivery") && e.contains("on_delivery bug"))
        .count();
    let own_panics = errors
        .iter()
        .filter(|e| e.contains("message callback bug"))
        .count();
    assert_eq!(on_delivery_panics, N, "{errors:?}");
    assert_eq!(own_panics, N / 2, "{errors:?}");
    let mut panicked = panicked.lock().unwrap().clone();
    panicked.sort();
    panicked.dedup();
    assert_eq!(
        panicked,
        [
            (
                "a publish_async_with callback",
                "message callback bug".to_owned()
            ),
            ("the on_delivery callback", "on_delivery bug".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_delivery_callbacks_lose_no_callback() {
    panicking_delivery_callbacks_lose_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_delivery_callbacks_lose_no_callback_with_middleware() {
    panicking_delivery_callbacks_lose_nothing(true).await;
}

/// A middleware that panics after the message was queued panics on the
/// task that completes asynchronous publishes: the other publishes must
/// still complete with their real outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middleware_panicking_after_the_enqueue_spares_other_publishes() {
    let cluster = cluster_with("orders");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let producer = builder(&cluster, "xkafka-tests-panicking-middleware")
        .error_handler({
            let errors = errors.clone();
            move |err| errors.lock().unwrap().push(err.to_string())
        })
        .layer(from_fn(|m: Message, next: Next<Delivery>| async move {
            let boom = m.key().is_some_and(|k| k.as_ref() == b"0");
            let delivery = next.run(m).await;
            assert!(!boom, "middleware bug");
            delivery
        }))
        .build()
        .unwrap();
    const N: usize = 20;
    let got = outcomes(N);
    for i in 0..N {
        producer
            .publish_async_with(msg("orders", i), record(&got, i))
            .await
            .unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(30), producer.close())
        .await
        .expect("close hung");
    assert_eq!(report.undelivered, 0);
    assert_eq!(calls(&got), vec![1; N], "every callback exactly once");
    let first = got[0].lock().unwrap()[0].clone();
    assert!(
        first.as_ref().is_err_and(|e| e.contains("middleware bug")),
        "the panicking publish fails, saying why: {first:?}"
    );
    for (i, o) in got.iter().enumerate().skip(1) {
        let o = o.lock().unwrap();
        assert!(o[0].is_ok(), "message {i}: {:?}", o[0]);
    }
    let errors = errors.lock().unwrap();
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.contains("middleware bug"))
            .count(),
        1,
        "{errors:?}"
    );
}

/// A close that gives up on messages tells the error handler how many,
/// as a flush failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_timeout_at_close_reaches_the_error_handler() {
    let cluster = cluster_with("orders");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let flush_errors: Arc<Mutex<Vec<usize>>> = Arc::default();
    let producer = builder(&cluster, "xkafka-tests-flush-timeout")
        .close_timeout(Duration::from_secs(1))
        .error_handler({
            let (errors, flush_errors) = (errors.clone(), flush_errors.clone());
            move |err| {
                errors.lock().unwrap().push(err.to_string());
                if let Error::Incomplete {
                    operation: Operation::Flush,
                    count,
                    ..
                } = err
                {
                    flush_errors.lock().unwrap().push(*count);
                }
            }
        })
        .build()
        .unwrap();
    publish_within(&producer, msg("orders", 0)).await;
    cluster.broker_down(1).unwrap();
    const N: usize = 7;
    let got = outcomes(N);
    for i in 0..N {
        producer
            .publish_async_with(msg("orders", i), record(&got, i))
            .await
            .unwrap();
    }
    let report = producer.close().await;
    assert_eq!(report.undelivered, N);
    assert_eq!(report.callbacks_pending, 0);
    assert_eq!(calls(&got), vec![1; N], "every callback exactly once");
    assert_eq!(
        *flush_errors.lock().unwrap(),
        [N],
        "one flush error naming {N}"
    );
    let errors = errors.lock().unwrap();
    let flush: Vec<&String> = errors
        .iter()
        .filter(|e| e.starts_with("flushing the producer failed"))
        .collect();
    assert_eq!(flush.len(), 1, "{errors:?}");
    assert!(flush[0].contains(&format!("{N} message")), "{}", flush[0]);
}

/// A close that flushes everything reports no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_reports_no_error() {
    let cluster = cluster_with("orders");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let producer = builder(&cluster, "xkafka-tests-clean-close")
        .error_handler({
            let errors = errors.clone();
            move |err| errors.lock().unwrap().push(err.to_string())
        })
        .build()
        .unwrap();
    for i in 0..10 {
        producer.publish_async(msg("orders", i)).await.unwrap();
    }
    assert_eq!(producer.close().await.undelivered, 0);
    assert_eq!(*errors.lock().unwrap(), Vec::<String>::new());
}

/// The OS thread running the caller (Linux: `/proc/self/task/<tid>`), to
/// tell afterwards whether it has ended.
fn this_thread() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self").expect("/proc/thread-self")
}

/// Dropping a producer without closing it: every callback still runs
/// exactly once, and the producer's delivery thread ends with the drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_producer_calls_back_and_leaves_no_thread() {
    let cluster = cluster_with("orders");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let producer = builder(&cluster, "xkafka-tests-dropped")
        .error_handler({
            let errors = errors.clone();
            move |err| errors.lock().unwrap().push(err.to_string())
        })
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer
        .publish_async_with(msg("orders", 0), move |_| {
            let _ = tx.send(this_thread());
        })
        .await
        .unwrap();
    let polling_thread = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .expect("no delivery report")
        .unwrap();
    cluster.broker_down(1).unwrap();
    const N: usize = 5;
    let got = outcomes(N);
    for i in 0..N {
        producer
            .publish_async_with(msg("orders", i), record(&got, i))
            .await
            .unwrap();
    }
    let started = Instant::now();
    drop(producer);
    let took = started.elapsed();
    eprintln!("drop took {took:?}");
    assert_eq!(
        calls(&got),
        vec![1; N],
        "every callback exactly once, by the drop"
    );
    assert!(
        got.iter().all(|o| o.lock().unwrap()[0].is_err()),
        "none can be delivered with the broker down"
    );
    assert!(
        !polling_thread.exists(),
        "the polling thread outlived the producer"
    );
    // librdkafka's own bound: the drop flushes the purged reports for 500 ms.
    assert!(took < Duration::from_secs(3), "the drop took {took:?}");
}

/// The last clone of a producer dropped by one of its own callbacks, on
/// the producer's delivery thread (which cannot join itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_dropped_by_its_own_callback() {
    let cluster = cluster_with("orders");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let producer = builder(&cluster, "xkafka-tests-dropped-in-callback")
        .error_handler({
            let errors = errors.clone();
            move |err| errors.lock().unwrap().push(err.to_string())
        })
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let last = producer.clone();
    producer
        .publish_async_with(msg("orders", 0), move |report| {
            let polling_thread = this_thread();
            drop(last);
            let _ = tx.send((polling_thread, report.is_ok()));
        })
        .await
        .unwrap();
    drop(producer);
    let (polling_thread, delivered) = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the callback never ran")
    })
    .await
    .unwrap();
    assert!(delivered);
    until(|| !polling_thread.exists(), Duration::from_secs(10)).await;
    assert!(
        !polling_thread.exists(),
        "the polling thread outlived the producer"
    );
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
}
