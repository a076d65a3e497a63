//! Step-by-step tests of the poll thread's side, without a broker: the test
//! thread plays the poll thread, handlers run on a runtime of their own, and
//! lanes' reports are injected where a race would put them. The client is
//! real but never connects (nothing listens at its address): pause, resume
//! and store calls go to librdkafka locally.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use rdkafka::consumer::DefaultConsumerContext;
use rdkafka::ClientConfig;
use tower::util::BoxCloneService;

use super::*;
use crate::consumer::dispatch::{CommitWait, Runner};
use crate::shutdown::ShutdownHandle;
use crate::BoxError;

struct Harness {
    runtime: tokio::runtime::Runtime,
    consumer: BaseConsumer<DefaultConsumerContext>,
    shared: Arc<Shared>,
    /// A lane's side of the completion channel, to inject reports.
    lanes: std_mpsc::Sender<Report>,
    pipeline: Pipeline,
    errors: Arc<Mutex<Vec<String>>>,
}

/// What the handler does with the message at an offset.
#[derive(Clone, Default)]
struct Script {
    /// Offsets whose handler never finishes.
    hang: Arc<Mutex<Vec<i64>>>,
    /// Offsets whose handler yields once (so finishes in its lane).
    yields: Arc<Mutex<Vec<i64>>>,
    /// Offsets whose handler waits 50 ms (in its lane) first.
    slow: Arc<Mutex<Vec<i64>>>,
    /// Handler calls started.
    started: Arc<AtomicUsize>,
    /// Set when a hanging handler's future is dropped (aborted).
    dropped: Arc<AtomicBool>,
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A runtime for the handlers and a client that reaches no broker (its
/// offset stores fail, which the pipeline reports and goes on).
fn runtime_and_consumer(
    group: &str,
) -> (
    tokio::runtime::Runtime,
    BaseConsumer<DefaultConsumerContext>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let consumer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("group.id", group)
        .set("enable.auto.offset.store", "false")
        .create()
        .unwrap();
    (runtime, consumer)
}

fn harness(script: &Script) -> Harness {
    let (runtime, consumer) = runtime_and_consumer("pipeline-tests");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = errors.clone();
    let shared = Arc::new(Shared::new(
        "pipeline-tests".into(),
        Arc::new(move |err: &Error| {
            sink.lock().unwrap().push(err.to_string());
            Decision::Continue
        }),
        ShutdownHandle::new(),
        Duration::from_secs(1),
    ));
    let script = script.clone();
    let service = tower::service_fn(
        move |m: Message| -> BoxFuture<'static, Result<Ack, BoxError>> {
            script.started.fetch_add(1, Ordering::SeqCst);
            if script.hang.lock().unwrap().contains(&m.offset().unwrap()) {
                let guard = SetOnDrop(script.dropped.clone());
                Box::pin(async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(Ack::Success)
                })
            } else if script.yields.lock().unwrap().contains(&m.offset().unwrap()) {
                Box::pin(async {
                    tokio::task::yield_now().await;
                    Ok(Ack::Success)
                })
            } else if script.slow.lock().unwrap().contains(&m.offset().unwrap()) {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(Ack::Success)
                })
            } else {
                Box::pin(async { Ok(Ack::Success) })
            }
        },
    );
    let (tx, rx) = std_mpsc::channel();
    let dispatcher = Dispatcher::new(
        crate::consumer::Order::PerPartition,
        4,
        runtime.handle().clone(),
        Runner::Single(BoxCloneService::new(service)),
        tx.clone(),
        shared.clone(),
        CommitWait::None,
    );
    let pipeline = Pipeline::new(
        dispatcher,
        rx,
        Limits {
            per_partition: 100,
            total: 1_000,
            stall_after: Duration::ZERO,
        },
        CommitMode::Auto,
    );
    Harness {
        runtime,
        consumer,
        shared,
        lanes: tx,
        pipeline,
        errors,
    }
}

impl Harness {
    fn assign(&mut self, tp: &TopicPartition) -> u64 {
        self.pipeline.assign(&self.shared, [tp.clone()]);
        self.shared.ledger().assigned.insert(tp.clone());
        self.pipeline.partitions[tp].epoch
    }

    fn dispatch(&mut self, tp: &TopicPartition, offset: i64) {
        let message = Message::builder(tp.topic.clone())
            .partition(tp.partition)
            .offset(offset)
            .build();
        self.pipeline
            .dispatch(&self.consumer, &self.shared, message);
    }

    fn settle(&mut self) {
        self.pipeline.settle(&self.consumer, &self.shared);
    }

    fn revoke(&mut self, tp: &TopicPartition) {
        let set: BTreeSet<TopicPartition> = [tp.clone()].into_iter().collect();
        self.pipeline
            .revoke(&self.consumer, &self.shared, &set, false, Duration::ZERO);
        self.shared.ledger().assigned.remove(tp);
    }

    fn complete(&self, tp: &TopicPartition, epoch: u64, offset: i64) -> oneshot::Receiver<()> {
        let (committed, wait) = oneshot::channel();
        self.lanes
            .send(Report::Completed(Completion {
                tp: tp.clone(),
                epoch,
                offset,
                settled: Settled::Done(Ack::Success),
                committed: Some(committed),
            }))
            .unwrap();
        wait
    }

    fn watermark(&self, tp: &TopicPartition) -> Option<i64> {
        self.pipeline.partitions.get(tp)?.tracker.watermark()
    }
}

fn tp() -> TopicPartition {
    TopicPartition::new("t", 0)
}

#[test]
fn a_completion_after_its_partition_was_revoked_is_ignored_but_releases_its_lane() {
    let script = Script::default();
    script.hang.lock().unwrap().push(10);
    let mut h = harness(&script);
    let tp = tp();
    let epoch = h.assign(&tp);
    h.dispatch(&tp, 10);
    h.settle();
    assert_eq!(h.pipeline.unsettled(), 1, "10 is running");
    h.revoke(&tp);
    assert_eq!(
        h.pipeline.unsettled(),
        0,
        "the revoked partition's count is gone"
    );
    // The lane reports 10 only now.
    let mut released = h.complete(&tp, epoch, 10);
    h.settle();
    assert_eq!(h.pipeline.unsettled(), 0, "no underflow, nothing counted");
    assert_eq!(h.shared.ledger().succeeded, 0, "not ours any more");
    assert!(h.pipeline.partitions.is_empty());
    assert_eq!(
        released.try_recv(),
        Ok(()),
        "a lane waiting for that commit is let go"
    );
    assert!(h.errors.lock().unwrap().is_empty(), "{:?}", h.errors);
}

#[test]
fn a_late_completion_from_an_older_assignment_does_not_settle_the_new_one() {
    let script = Script::default();
    script.hang.lock().unwrap().push(10);
    let mut h = harness(&script);
    let tp = tp();
    let old = h.assign(&tp);
    h.dispatch(&tp, 10);
    h.settle();
    h.revoke(&tp);
    // The partition comes back, and librdkafka delivers 10 again.
    let new = h.assign(&tp);
    assert_ne!(old, new);
    h.dispatch(&tp, 10);
    h.settle();
    assert_eq!(h.pipeline.unsettled(), 1);
    // The first assignment's handler finishes now.
    drop(h.complete(&tp, old, 10));
    h.settle();
    assert_eq!(
        h.pipeline.unsettled(),
        1,
        "still open in the new assignment"
    );
    assert_eq!(h.watermark(&tp), Some(10), "not stored past 10");
    assert_eq!(h.shared.ledger().succeeded, 0);
    // The new assignment's own completion settles it.
    drop(h.complete(&tp, new, 10));
    h.settle();
    assert_eq!(h.pipeline.unsettled(), 0);
    assert_eq!(h.watermark(&tp), Some(11));
    assert_eq!(h.shared.ledger().succeeded, 1);
}

#[test]
fn shutdown_drains_what_finishes_and_aborts_what_hangs_at_the_deadline() {
    let script = Script::default();
    script.hang.lock().unwrap().push(1);
    script.slow.lock().unwrap().push(5);
    let mut h = harness(&script);
    let (a, b, c) = (
        tp(),
        TopicPartition::new("t", 1),
        TopicPartition::new("t", 2),
    );
    for tp in [&a, &b, &c] {
        h.assign(tp);
    }
    h.dispatch(&a, 0); // finishes inline
    h.dispatch(&b, 1); // hangs in its lane
    h.dispatch(&b, 2); // queued behind it
    h.dispatch(&c, 5); // finishes in its lane while the drain waits
    h.settle();
    assert!(h.pipeline.unsettled() >= 2);
    let abandoned = h.pipeline.stop(
        &h.consumer,
        &h.shared,
        Instant::now() + Duration::from_secs(2),
    );
    assert_eq!(abandoned, 1, "the hanging handler");
    assert_eq!(script.started.load(Ordering::SeqCst), 3, "2 never started");
    assert_eq!(h.shared.ledger().succeeded, 2, "0 and 5 settled");
    assert_eq!(h.watermark(&c), Some(6));
    assert_eq!(h.watermark(&b), Some(1), "held at the abandoned one");
    // The aborted lane's handler future is dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !script.dropped.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        script.dropped.load(Ordering::SeqCst),
        "the hanging handler was aborted"
    );
    drop(h.runtime);
}

#[test]
fn dropping_the_client_context_ends_the_lanes_without_a_finish() {
    let script = Script::default();
    script.yields.lock().unwrap().push(0);
    let mut h = harness(&script);
    let tp = tp();
    h.assign(&tp);
    h.dispatch(&tp, 0); // continues in a lane, which then waits for more
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.pipeline.unsettled() > 0 && Instant::now() < deadline {
        h.settle();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.shared.ledger().succeeded, 1);
    assert!(
        Arc::strong_count(&h.shared) > 2,
        "the lanes hold the shared state"
    );
    // The pipeline as `run` leaves it while the consumer runs: in the
    // client's context. A poll thread that never reaches `finish` (it
    // panicked while closing) still drops the client.
    let cx = super::super::context::XConsumerContext::new(h.shared.clone());
    *cx.pipeline() = Some(h.pipeline);
    drop(cx);
    drop(h.lanes);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&h.shared) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        Arc::strong_count(&h.shared),
        1,
        "the lanes ended and let go of the shared state"
    );
}

/// The consumer's own work per message, without librdkafka or a broker:
/// what the poll thread adds to the raw loop's poll, copy and store.
/// Prints ns per message for each step; asserts that every message was
/// handled and settled. Ignored: a debug build's timings mean nothing.
///
/// `cargo test --release -p xkafka --lib dispatch_cost -- --ignored --nocapture`
/// (BENCHMARKS.md, "Our own cost per message").
#[test]
#[ignore]
fn dispatch_cost() {
    use crate::consumer::poll_loop::{DISPATCH_EVERY, POLL_BATCH as ROUND};
    use crate::{Batch, Consumer};
    // Whole rounds.
    const N: usize = 2_344 * ROUND;
    const PARTITIONS: i32 = 6;
    let (runtime, consumer) = runtime_and_consumer("dispatch-cost");
    let topic: Arc<str> = "cost".into();
    let group: Arc<str> = "dispatch-cost".into();
    for size in [100, 1024] {
        let value = vec![b'a'; size];
        // What the raw loop does with a record: copy key and value to owned
        // bytes. As fetched: runs of 1,000 per partition.
        let fetched = |i: usize| {
            Message::fetched(
                topic.clone(),
                (i / 1_000) as i32 % PARTITIONS,
                i as i64,
                Some(bytes::Bytes::copy_from_slice(b"key-42")),
                Some(bytes::Bytes::copy_from_slice(&value)),
                crate::Headers::new(),
                None,
                group.clone(),
            )
        };
        let handled = Arc::new(AtomicUsize::new(0));
        let calls = handled.clone();
        let (_, mut service, _) = Consumer::builder("dispatch-cost")
            .error_handler(|_: &Error| Decision::Stop)
            .handler(move |m: Message| {
                calls.fetch_add(1, Ordering::Relaxed);
                std::hint::black_box(&m);
                async { Ack::Success }
            })
            .into_test_parts()
            .unwrap();
        // The best of three: the machine's noise only ever adds.
        let best = |f: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let started = Instant::now();
                    f();
                    started.elapsed().as_nanos() as f64 / N as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        let mut round = Vec::with_capacity(ROUND);
        // As the raw loop does: each record copied and dropped in turn.
        let copy = best(&mut || {
            for i in 0..N {
                std::hint::black_box(fetched(i));
            }
        });
        let waker = std::task::Waker::noop();
        let call = best(&mut || {
            let _entered = runtime.enter();
            for m in (0..N).map(fetched) {
                {
                    let mut cx = std::task::Context::from_waker(waker);
                    assert!(tower::Service::poll_ready(&mut service, &mut cx).is_ready());
                    let mut future = tower::Service::call(&mut service, m);
                    assert!(future.as_mut().poll(&mut cx).is_ready());
                }
            }
        });
        let streaming = Runner::Single(service);
        let batch = Runner::Batch {
            service: BoxCloneService::new(tower::service_fn(|b: Batch| async move {
                std::hint::black_box(b.len());
                Ok::<_, BoxError>(Ack::Success)
            })),
            size: 1_000,
            window: Duration::from_millis(10),
        };
        let mut through_pipeline = |runner: Runner| {
            let shared = Arc::new(Shared::new(
                "dispatch-cost".into(),
                Arc::new(|_: &Error| Decision::Continue),
                ShutdownHandle::new(),
                Duration::from_secs(1),
            ));
            let (tx, rx) = std_mpsc::channel();
            let dispatcher = Dispatcher::new(
                crate::consumer::Order::PerPartition,
                1,
                runtime.handle().clone(),
                runner,
                tx,
                shared.clone(),
                CommitWait::None,
            );
            let mut pipeline = Pipeline::new(
                dispatcher,
                rx,
                Limits {
                    per_partition: usize::MAX,
                    total: usize::MAX,
                    stall_after: Duration::ZERO,
                },
                CommitMode::Auto,
            );
            let tps: Vec<TopicPartition> = (0..PARTITIONS)
                .map(|p| TopicPartition::new(topic.clone(), p))
                .collect();
            let ns = best(&mut || {
                pipeline.assign(&shared, tps.clone());
                // As the poll loop does: a few messages copied, then
                // dispatched; one settlement per round.
                for start in (0..N).step_by(ROUND) {
                    for sub in (start..start + ROUND).step_by(DISPATCH_EVERY) {
                        round.extend((sub..sub + DISPATCH_EVERY).map(fetched));
                        pipeline.in_runtime(|p| {
                            for m in round.drain(..) {
                                p.dispatch(&consumer, &shared, m);
                            }
                        });
                    }
                    pipeline.in_runtime(|p| p.settle(&consumer, &shared));
                }
                // The last batches wait out their window.
                pipeline.dispatcher.close_batches();
                pipeline.in_runtime(|p| p.settle(&consumer, &shared));
                assert_eq!(pipeline.unsettled(), 0, "every message settled");
                let last = tps
                    .iter()
                    .map(|tp| pipeline.partitions[tp].tracker.watermark().unwrap());
                assert_eq!(last.max(), Some(N as i64), "watermarks at the end");
                pipeline.partitions.clear();
            });
            let succeeded = shared.ledger().succeeded;
            assert_eq!(succeeded, 3 * N as u64, "three passes, each message once");
            ns
        };
        let dispatched = through_pipeline(streaming);
        assert_eq!(
            handled.load(Ordering::Relaxed),
            6 * N,
            "call + pipeline passes"
        );
        let batched = through_pipeline(batch);
        eprintln!(
            "dispatch_cost (ns per message, best of 3 × {N}, {size} B values): copy {copy:.0} · \
         + handler stack {call:.0} (+{:.0}) · streaming pipeline {dispatched:.0} (+{:.0}) · \
         batch pipeline {batched:.0} (+{:.0})",
            call - copy,
            dispatched - copy,
            batched - copy
        );
    }
}
