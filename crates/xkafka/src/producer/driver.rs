//! Completes asynchronous publishes: runs their middleware to the end and
//! calls the delivery callbacks exactly once per message.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch, Notify};

use crate::error::Error;
use crate::{BoxError, Delivery};

/// A producer-wide delivery callback.
pub(crate) type OnDeliveryFn = Arc<dyn Fn(&Result<Delivery, Error>) + Send + Sync>;
/// A one-message delivery callback.
pub(crate) type MessageCallback = Box<dyn FnOnce(Result<Delivery, Error>) + Send>;

/// How often [`Pending::drained`] reads the count again without being
/// notified.
const DRAINED_RECHECK: std::time::Duration = std::time::Duration::from_millis(1);

/// Counts publishes whose callbacks have not run yet, so `close` can wait.
///
/// Several counters rather than one: publishing threads only add to
/// `started` and librdkafka's delivery thread only adds to `reported`, each
/// on a cache line of its own, so that a publish does not bounce a shared
/// line between the two cores (a measurable share of `publish_async`'s
/// cost).
#[derive(Default)]
pub(crate) struct Pending {
    started: Tally,
    /// Publishes completed anywhere but in a direct report: middleware
    /// completions, refusals.
    finished: Padded,
    /// Direct asynchronous publishes whose report has been handled. Also
    /// the count of their deliveries, less `Stats::failed_reports`.
    reported: Tally,
    /// Set once someone waits in `drained`: only then do finishing
    /// callbacks pay for a notification.
    watched: AtomicBool,
    drained: Notify,
}

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicUsize);

/// A count one thread adds to without an atomic addition.
///
/// The first thread to add owns `owned` and adds to it with a plain load
/// and store (only it ever writes there); any other thread adds to `shared`
/// atomically. For reports, that owner is the producer's delivery thread,
/// which serves every report but those a `flush` or a purge on another
/// thread happens to serve; for publishes, the first publishing thread (a
/// publishing task that moves between tokio's workers adds atomically from
/// the others). An atomic addition was the costliest instruction of a
/// report: it waits for every earlier load and store of the thread to
/// complete.
#[derive(Default)]
struct Tally {
    /// The owning thread's [`thread_key`]; 0 until a first report.
    owner: AtomicU64,
    owned: Padded,
    shared: Padded,
}

impl Tally {
    fn add(&self) {
        let owner = self.owner.load(Ordering::Relaxed);
        let owns = thread_key().is_some_and(|me| {
            owner == me
                || (owner == 0
                    && self
                        .owner
                        .compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok())
        });
        if owns {
            let n = self.owned.0.load(Ordering::Relaxed);
            // Release: whoever reads the new count also sees what the
            // thread did before (a report's callbacks, a failure counted).
            self.owned.0.store(n + 1, Ordering::Release);
        } else {
            self.shared.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn get(&self) -> usize {
        self.owned.0.load(Ordering::Acquire) + self.shared.0.load(Ordering::SeqCst)
    }
}

/// A key of the calling thread, unique over the life of the process
/// (never 0); `None` on a thread whose locals are gone (it is exiting),
/// which then never owns a [`Tally`]: two such threads would share a key.
fn thread_key() -> Option<u64> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    KEY.try_with(|key| {
        if key.get() == 0 {
            key.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        key.get()
    })
    .ok()
}

impl Pending {
    pub(crate) fn count(&self) -> usize {
        // The finished first: they never run ahead of `started`.
        let finished = self.finished.0.load(Ordering::SeqCst) + self.reports();
        self.started.get().saturating_sub(finished)
    }

    /// Direct asynchronous publishes whose report has been handled.
    pub(crate) fn reports(&self) -> usize {
        self.reported.get()
    }

    /// A publish whose callbacks are owed.
    pub(crate) fn add(&self) {
        self.started.add();
    }

    /// Its callbacks ran (or it was never accepted).
    pub(crate) fn done(&self) {
        self.finished.0.fetch_add(1, Ordering::SeqCst);
        self.notify_if_drained();
    }

    /// A direct asynchronous publish's report was handled, its callbacks
    /// ran (a failed one counted in `Stats::failed_reports` first).
    pub(crate) fn reported(&self) {
        self.reported.add();
        // Without a full fence, this may miss a waiter that has just
        // started watching: `drained` looks again every millisecond.
        self.notify_if_drained();
    }

    fn notify_if_drained(&self) {
        if self.watched.load(Ordering::SeqCst) && self.count() == 0 {
            self.drained.notify_waiters();
        }
    }

    /// Resolves when no callback is outstanding.
    pub(crate) async fn drained(&self) {
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let notified = self.drained.notified();
            if self.count() == 0 {
                return;
            }
            // The notification may be missed (see `reported`): the count is
            // read again after a millisecond at the latest.
            let _ = tokio::time::timeout(DRAINED_RECHECK, notified).await;
        }
    }
}

/// The user's callbacks, shared by the client context (delivery thread),
/// the publishing side and the driver task. Every call into user code goes
/// through here: a panic is caught where it happens, so that it cannot take
/// down the thread that delivers every other message's report.
pub(crate) struct Hooks {
    pub(crate) name: Arc<str>,
    pub(crate) error_handler: ProducerErrorFn,
    pub(crate) on_delivery: Option<OnDeliveryFn>,
    /// Counts publishes whose callbacks are owed.
    pub(crate) pending: Pending,
    /// Delivery outcomes and broker reachability, for the status.
    pub(crate) stats: Stats,
}

/// What the producer's status reports, counted on librdkafka's delivery
/// thread (one uncontended atomic per report).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Acknowledged messages, but for those of direct asynchronous
    /// publishes: [`Pending::reports`] less `failed_reports` counts them.
    pub(crate) delivered: std::sync::atomic::AtomicU64,
    pub(crate) failed: std::sync::atomic::AtomicU64,
    /// Of `failed`, the direct asynchronous publishes.
    pub(crate) failed_reports: std::sync::atomic::AtomicU64,
    pub(crate) last_error: std::sync::Mutex<Option<String>>,
    /// Set by librdkafka's "all brokers down", cleared by the next
    /// acknowledged message.
    pub(crate) brokers_down: std::sync::atomic::AtomicBool,
}

/// The producer's error handler.
pub(crate) type ProducerErrorFn = Arc<dyn Fn(&Error) + Send + Sync>;

impl Hooks {
    /// Hands `error` to the error handler. A panicking error handler is
    /// logged, not reported to itself (that could only panic again).
    pub(crate) fn report(&self, error: &Error) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (self.error_handler)(error))) {
            // Guarded too: a panicking subscriber would otherwise escape here.
            let _ = catch_unwind(AssertUnwindSafe(|| {
                tracing::error!(
                    producer = %self.name,
                    %error,
                    panic = %panic_message(&*panic),
                    "the producer's error handler panicked"
                );
            }));
        }
    }

    /// Calls the producer-wide callback, then the message's own one, each
    /// exactly once whatever the other does; a panic in either is reported
    /// to the error handler.
    pub(crate) fn deliver(
        &self,
        topic: &Arc<str>,
        callback: Option<MessageCallback>,
        result: Result<Delivery, Error>,
    ) {
        self.deliver_with(|_| Some(topic.clone()), callback, result);
    }

    /// [`deliver`](Self::deliver) for a librdkafka report, whose result
    /// names the topic (read only when a callback panics). The result comes
    /// back when no callback of the message's own took it.
    pub(crate) fn deliver_report(
        &self,
        callback: Option<MessageCallback>,
        result: Result<Delivery, Error>,
    ) -> Option<Result<Delivery, Error>> {
        self.deliver_with(topic_of, callback, result)
    }

    /// Calls the producer-wide callback alone, if any.
    pub(crate) fn on_delivery(&self, result: &Result<Delivery, Error>) {
        if let Some(on_delivery) = &self.on_delivery {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| on_delivery(result))) {
                self.report(&panicked(ON_DELIVERY, topic_of(result), &*panic));
            }
        }
    }

    fn deliver_with(
        &self,
        topic: impl Fn(&Result<Delivery, Error>) -> Option<Arc<str>>,
        callback: Option<MessageCallback>,
        result: Result<Delivery, Error>,
    ) -> Option<Result<Delivery, Error>> {
        if let Some(on_delivery) = &self.on_delivery {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| on_delivery(&result))) {
                self.report(&panicked(ON_DELIVERY, topic(&result), &*panic));
            }
        }
        let Some(callback) = callback else {
            return Some(result);
        };
        // Taken before the callback consumes the result, only for a
        // callback of its own (rare next to the producer-wide one).
        let topic = topic(&result);
        // The callback (and what it captured) is dropped inside, so a
        // panicking destructor is caught as well.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || callback(result))) {
            self.report(&panicked(MESSAGE_CALLBACK, topic, &*panic));
        }
        None
    }
}

const ON_DELIVERY: &str = "the on_delivery callback";
const MESSAGE_CALLBACK: &str = "a publish_async_with callback";
const MIDDLEWARE: &str = "a producer middleware";

fn panicked(callback: &'static str, topic: Option<Arc<str>>, panic: &(dyn Any + Send)) -> Error {
    Error::CallbackPanicked {
        callback,
        topic,
        message: panic_message(panic),
    }
}

/// The topic a delivery result names.
fn topic_of(result: &Result<Delivery, Error>) -> Option<Arc<str>> {
    match result {
        Ok(delivery) => Some(delivery.topic.clone()),
        Err(Error::Delivery { topic, .. } | Error::Undelivered { topic }) => Some(topic.clone()),
        Err(_) => None,
    }
}

/// The message a panic was raised with.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The callbacks of one asynchronous publish. Dropping it unfinished (the
/// producer closed or was dropped first) still calls them, with
/// [`Error::Undelivered`], so every callback runs exactly once.
pub(crate) struct Completion {
    topic: Arc<str>,
    hooks: Arc<Hooks>,
    callback: Option<MessageCallback>,
    done: bool,
}

impl Completion {
    pub(crate) fn new(
        topic: Arc<str>,
        hooks: Arc<Hooks>,
        callback: Option<MessageCallback>,
    ) -> Self {
        hooks.pending.add();
        Completion {
            topic,
            hooks,
            callback,
            done: false,
        }
    }

    pub(crate) fn finish(mut self, result: Result<Delivery, Error>) {
        self.complete(result);
    }

    /// The middleware panicked while completing the publish: the error
    /// handler hears of it, and the callbacks get the same error.
    fn panicked(mut self, panic: &(dyn Any + Send)) {
        self.hooks
            .report(&panicked(MIDDLEWARE, Some(self.topic.clone()), panic));
        let error = panicked(MIDDLEWARE, Some(self.topic.clone()), panic);
        self.complete(Err(error));
    }

    fn complete(&mut self, result: Result<Delivery, Error>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let callback = self.callback.take();
        self.hooks.deliver(&self.topic, callback, result);
        self.hooks.pending.done();
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.done {
            let topic = self.topic.clone();
            self.complete(Err(Error::Undelivered { topic }));
        }
    }
}

/// A publish whose message librdkafka has accepted, waiting for its report.
pub(crate) struct InFlight {
    pub(crate) future: BoxFuture<'static, Result<Delivery, BoxError>>,
    pub(crate) completion: Completion,
}

/// Polls every in-flight asynchronous publish until it completes, or until
/// `stop` turns true (close deadline), when the rest are dropped and their
/// callbacks report [`Error::Undelivered`].
pub(crate) async fn drive(
    mut incoming: mpsc::UnboundedReceiver<InFlight>,
    mut stop: watch::Receiver<bool>,
) {
    let mut running = FuturesUnordered::new();
    let mut accepting = true;
    loop {
        tokio::select! {
            biased;
            // A dropped producer closes the channel instead: in-flight
            // publishes then still run to their real outcome.
            Ok(_) = stop.wait_for(|s| *s) => break,
            next = incoming.recv(), if accepting => match next {
                // A middleware panicking here would otherwise end this
                // task, and every other asynchronous publish with it.
                Some(InFlight { future, completion }) => running.push(async move {
                    match AssertUnwindSafe(future).catch_unwind().await {
                        Ok(result) => completion.finish(result.map_err(Error::from_boxed_publish)),
                        Err(panic) => completion.panicked(&*panic),
                    }
                }),
                None => accepting = false,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
            else => break,
        }
    }
    // Dropping unfinished futures drops their completions: each reports
    // `Undelivered` exactly once.
    drop(running);
    incoming.close();
    while let Ok(InFlight { completion, .. }) = incoming.try_recv() {
        drop(completion);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Barrier};

    use super::{Pending, Tally};

    /// The owning thread counts with plain stores; others, at the same
    /// time, atomically: none of the counts is lost.
    #[test]
    fn reports_counted_by_several_threads_at_once_are_all_counted() {
        const N: usize = 200_000;
        let count = Arc::new(Tally::default());
        count.add(); // this thread owns the count now
        let start = Arc::new(Barrier::new(3));
        let others: Vec<_> = (0..2)
            .map(|_| {
                let (count, start) = (count.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..N {
                        count.add();
                    }
                })
            })
            .collect();
        start.wait();
        for _ in 1..N {
            count.add();
        }
        for other in others {
            other.join().unwrap();
        }
        assert_eq!(count.get(), 3 * N);
        assert_eq!(count.owned.0.load(Ordering::Relaxed), N, "the owner's own");
    }

    /// A waiter in `drained` sees the last report even from another
    /// thread, whatever the order of its look and the report.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drained_resolves_after_the_last_report() {
        for _ in 0..200 {
            let pending = Arc::new(Pending::default());
            pending.add();
            let reporter = pending.clone();
            let report = std::thread::spawn(move || reporter.reported());
            tokio::time::timeout(std::time::Duration::from_secs(5), pending.drained())
                .await
                .expect("drained after the report");
            report.join().unwrap();
            assert_eq!(pending.count(), 0);
        }
    }
}
