//! Completes asynchronous publishes: runs their middleware to the end and
//! calls the delivery callbacks exactly once per message.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch, Notify};

use crate::error::Error;
use crate::{BoxError, Delivery};

/// A producer-wide delivery callback.
pub(crate) type OnDeliveryFn = Arc<dyn Fn(&Result<Delivery, Error>) + Send + Sync>;
/// A one-message delivery callback.
pub(crate) type MessageCallback = Box<dyn FnOnce(Result<Delivery, Error>) + Send>;

/// Counts publishes whose callbacks have not run yet, so `close` can wait.
///
/// Two counters rather than one: publishing threads only add to `started`
/// and librdkafka's delivery thread only adds to `finished`, each on a cache
/// line of its own, so that a publish does not bounce a shared line between
/// the two cores (a measurable share of `publish_async`'s cost).
#[derive(Default)]
pub(crate) struct Pending {
    started: Padded,
    finished: Padded,
    /// Set once someone waits in `drained`: only then do finishing
    /// callbacks pay for a notification.
    watched: AtomicBool,
    drained: Notify,
}

#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicUsize);

impl Pending {
    pub(crate) fn count(&self) -> usize {
        // `finished` first: it never runs ahead of `started`.
        let finished = self.finished.0.load(Ordering::SeqCst);
        self.started
            .0
            .load(Ordering::SeqCst)
            .saturating_sub(finished)
    }

    /// A publish whose callbacks are owed.
    pub(crate) fn add(&self) {
        self.started.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Its callbacks ran (or it was never accepted).
    pub(crate) fn done(&self) {
        self.finished.0.fetch_add(1, Ordering::SeqCst);
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
            notified.await;
        }
    }
}

/// The callbacks of one asynchronous publish. Dropping it unfinished (the
/// producer closed or was dropped first) still calls them, with
/// [`Error::Undelivered`], so every callback runs exactly once.
pub(crate) struct Completion {
    topic: Arc<str>,
    on_delivery: Option<OnDeliveryFn>,
    callback: Option<MessageCallback>,
    pending: Arc<Pending>,
    done: bool,
}

impl Completion {
    pub(crate) fn new(
        topic: Arc<str>,
        on_delivery: Option<OnDeliveryFn>,
        callback: Option<MessageCallback>,
        pending: Arc<Pending>,
    ) -> Self {
        pending.add();
        Completion {
            topic,
            on_delivery,
            callback,
            pending,
            done: false,
        }
    }

    pub(crate) fn finish(mut self, result: Result<Delivery, Error>) {
        self.complete(result);
    }

    fn complete(&mut self, result: Result<Delivery, Error>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let on_delivery = self.on_delivery.take();
        let callback = self.callback.take();
        run_callbacks(&self.topic, on_delivery.as_ref(), callback, result);
        self.pending.done();
    }
}

/// Calls the producer-wide callback, then the message's own one. A
/// panicking user callback must not take the delivery thread (and with it
/// every other message's callback) down.
pub(crate) fn run_callbacks(
    topic: &str,
    on_delivery: Option<&OnDeliveryFn>,
    callback: Option<MessageCallback>,
    result: Result<Delivery, Error>,
) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        if let Some(cb) = on_delivery {
            cb(&result);
        }
        if let Some(cb) = callback {
            cb(result);
        }
    }));
    if outcome.is_err() {
        tracing::error!(%topic, "a delivery callback panicked");
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
                Some(InFlight { future, completion }) => running.push(async move {
                    let result = future.await.map_err(Error::from_boxed_publish);
                    completion.finish(result);
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
