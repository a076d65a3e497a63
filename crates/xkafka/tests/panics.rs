//! Panics of the application's code on a consumer's poll thread (a
//! middleware's `poll_ready`, a tracing subscriber called from librdkafka's
//! callbacks) are caught and reported; they never end `run` with `Ok`, never
//! leave the consumer half-alive and never abort the process.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::BoxFuture;
use tower::Service;
use tracing_subscriber::layer::SubscriberExt;
use xkafka::{Ack, BoxError, Decision, Error, Message};

/// The group whose "partitions assigned" event makes the subscriber panic.
static PANIC_FOR_GROUP: OnceLock<String> = OnceLock::new();

/// A tracing layer (the application's code) that panics on the rebalance
/// callback's "partitions assigned" event of one group.
struct PanickingLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanickingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields {
            group: Option<String>,
            message: Option<String>,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "group" => self.group = Some(format!("{value:?}")),
                    "message" => self.message = Some(format!("{value:?}")),
                    _ => {}
                }
            }
        }
        let mut fields = Fields {
            group: None,
            message: None,
        };
        event.record(&mut fields);
        if fields.message.as_deref() == Some("partitions assigned")
            && fields.group.as_deref() == PANIC_FOR_GROUP.get().map(String::as_str)
        {
            panic!("subscriber exploded");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_rebalance_callback_is_returned_as_an_error() {
    let topic = topic("panic-rebalance", 1).await;
    let group = unique("panic-rebalance-group");
    PANIC_FOR_GROUP.set(group.clone()).unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(PanickingLayer))
        .expect("the only global subscriber of this test binary");
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let consumer = consumer(&group, &topic)
        .shutdown_timeout(Duration::from_secs(3))
        .error_handler(|err| {
            eprintln!("consumer error: {err}");
            Decision::Continue
        })
        .handler(move |_m: Message| {
            h.fetch_add(1, Ordering::SeqCst);
            async { Ack::Success }
        })
        .build()
        .unwrap();
    // Without the fix the panic unwinds into librdkafka's C frames and the
    // process aborts; before that fix, a poll-thread panic ended `run` with
    // `Ok(Summary)`.
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run(std::future::pending()),
    )
    .await
    .expect("run must end by itself after the panic");
    match result {
        Err(Error::Panicked { place, message }) => {
            assert_eq!(place, "the rebalance callback");
            assert_eq!(message, "subscriber exploded");
        }
        other => panic!("expected the panic as an error, got {other:?}"),
    }
    eprintln!("run returned {:?} after starting", started.elapsed());
    assert_eq!(handled.load(Ordering::SeqCst), 0);
}

/// A handler service whose `poll_ready` (a middleware's, say) panics once,
/// on its `panic_on`-th call.
#[derive(Clone)]
struct PanickyReady {
    calls: Arc<AtomicUsize>,
    panic_on: usize,
    handled: Arc<Mutex<Vec<i64>>>,
}

impl Service<Message> for PanickyReady {
    type Response = Ack;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Ack, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.panic_on {
            panic!("rate limiter poisoned");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, m: Message) -> Self::Future {
        self.handled.lock().unwrap().push(m.offset().unwrap());
        Box::pin(async { Ok(Ack::Success) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_poll_ready_fails_its_message_and_the_consumer_goes_on() {
    let topic = topic("panic-ready", 1).await;
    let group = unique("panic-ready-group");
    let producer = producer();
    let offsets = fill(&producer, &topic, 0, 5).await;
    producer.close().await;
    let (errors, error_handler) = recording_error_handler(Decision::Continue);
    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let consumer = consumer(&group, &topic)
        .error_handler(error_handler)
        .service(PanickyReady {
            calls: Arc::default(),
            panic_on: 3,
            handled: handled.clone(),
        })
        .build()
        .unwrap();
    let (probe, errs) = (handled.clone(), errors.clone());
    let summary = consumer
        .run(until(
            move || probe.lock().unwrap().len() + errs.lock().unwrap().len() >= 5,
            Duration::from_secs(60),
        ))
        .await
        .expect("a panicking poll_ready is the message's failure, not the consumer's");
    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&format!(
            "@{}: handler panicked: rate limiter poisoned",
            offsets[2]
        )),
        "{errors:?}"
    );
    let handled = handled.lock().unwrap().clone();
    assert_eq!(
        handled,
        vec![offsets[0], offsets[1], offsets[3], offsets[4]]
    );
    assert_eq!(summary.succeeded, 4);
    assert_eq!(summary.failed_skipped, 1);
}
