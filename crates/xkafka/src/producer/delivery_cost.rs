//! A measurement, not a test: the delivery thread's cost per report
//! (BENCHMARKS.md, "Our own cost per message"). It drives the producer's
//! private context and delivery loop directly, so it lives inside the crate,
//! compiled only for `cargo test` and ignored unless asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};

use super::context::XProducerContext;
use super::driver::{Hooks, Pending, Stats};
use crate::{Delivery, Error};

/// The delivery thread's cost per report: librdkafka's reports of `N`
/// acknowledged messages, served by `poll` through our context (the
/// `Delivery`, the status counters, the count `close` waits on, the
/// producer-wide callback) and through a raw context that only counts.
/// Only the polls that served reports are timed; librdkafka's own work
/// (taking the event, destroying the messages) is in both. Not a test:
/// an ignored measurement, printed, best of five.
///
/// `cargo test --release -p xkafka --lib delivery_cost -- --ignored --nocapture`
/// (BENCHMARKS.md, "Our own cost per message").
#[test]
#[ignore]
#[allow(unsafe_code)]
fn delivery_cost() {
    const N: usize = 200_000;
    let cluster = crate::mock::EmbeddedCluster::start(1).unwrap();
    cluster.create_topic("cost", 6).unwrap();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", (2 * N).to_string());
    let value = vec![b'a'; 100];

    /// What the bench's raw callback does: count.
    struct Counting(AtomicU64, AtomicU64);
    impl ClientContext for Counting {}
    impl ProducerContext for Counting {
        type DeliveryOpaque = ();
        fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
            if result.is_err() {
                self.1.fetch_add(1, Ordering::Relaxed);
            }
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    // Produces N, then polls until N reports were served: the time of
    // the polls that served some, per report.
    fn serve(
        poll: &mut dyn FnMut(),
        send: &dyn Fn(usize) -> bool,
        served: &dyn Fn() -> u64,
    ) -> f64 {
        for i in 0..N {
            assert!(send(i), "librdkafka refused message {i}");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut busy = Duration::ZERO;
        while served() < N as u64 {
            assert!(Instant::now() < deadline, "only {} reports", served());
            let before = served();
            let started = Instant::now();
            poll();
            let took = started.elapsed();
            if served() > before {
                busy += took;
            } else {
                std::thread::yield_now();
            }
        }
        busy.as_nanos() as f64 / N as f64
    }

    let best = |f: &mut dyn FnMut() -> f64| (0..5).map(|_| f()).fold(f64::INFINITY, f64::min);
    let raw = best(&mut || {
        let producer: BaseProducer<Counting> = BaseProducer::from_config_and_context(
            &config,
            Counting(AtomicU64::new(0), AtomicU64::new(0)),
        )
        .unwrap();
        let send = |i: usize| {
            let key = format!("k{}", i % 1000);
            producer
                .send(
                    BaseRecord::<_, _, ()>::with_opaque_to("cost", ())
                        .key(&key)
                        .payload(&value),
                )
                .is_ok()
        };
        let served = || producer.context().0.load(Ordering::Relaxed);
        serve(&mut || producer.poll(Duration::ZERO), &send, &served)
    });
    // Ours, served by the delivery thread's loop (`poller`), or by
    // rdkafka's `BaseProducer::poll` (what a flush does).
    let ours = |own_loop: bool| {
        let count = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let hooks = Arc::new(Hooks {
            name: "delivery-cost".into(),
            error_handler: Arc::new(|_| {}),
            on_delivery: Some(Arc::new({
                let count = count.clone();
                move |report: &Result<Delivery, Error>| {
                    if report.is_err() {
                        count.1.fetch_add(1, Ordering::Relaxed);
                    }
                    count.0.fetch_add(1, Ordering::Relaxed);
                }
            })),
            pending: Pending::default(),
            stats: Stats::default(),
        });
        let producer: BaseProducer<XProducerContext> = BaseProducer::from_config_and_context(
            &config,
            XProducerContext {
                fence: None,
                hooks: hooks.clone(),
                topics: Default::default(),
            },
        )
        .unwrap();
        let send = |i: usize| {
            let key = format!("k{}", i % 1000);
            // As `publish_async` does: counted as owed, no opaque.
            hooks.pending.add();
            producer
                .send(
                    BaseRecord::with_opaque_to("cost", 0usize)
                        .key(&key)
                        .payload(&value),
                )
                .is_ok()
        };
        let served = || count.0.load(Ordering::Relaxed);
        // SAFETY: a live client; the handle is released below.
        let queue =
            unsafe { rdkafka::bindings::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        let mut messages = Vec::new();
        let mut poll = || {
            if !own_loop {
                return producer.poll(Duration::ZERO);
            }
            // SAFETY: a live queue.
            let event = unsafe { rdkafka::bindings::rd_kafka_queue_poll(queue, 0) };
            if !event.is_null() {
                super::poller::serve(
                    producer.context(),
                    &super::poller::Event(event),
                    &mut messages,
                );
            }
        };
        let cost = serve(&mut poll, &send, &served);
        // SAFETY: released once, before the client.
        unsafe { rdkafka::bindings::rd_kafka_queue_destroy(queue) };
        assert_eq!(hooks.pending.count(), 0, "every report settled its count");
        cost
    };
    let own = best(&mut || ours(true));
    let via_rdkafka = best(&mut || ours(false));
    println!(
        "ns per delivery report, best of 5: raw context {raw:.0}; ours {own:.0} (ours - raw {:.0}); \
         ours through rdkafka's poll {via_rdkafka:.0}",
        own - raw
    );
    assert!(own.is_finite() && raw.is_finite() && via_rdkafka.is_finite());
}
