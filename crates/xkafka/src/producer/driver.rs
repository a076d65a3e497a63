//! Completes asynchronous publishes: runs their middleware to the end and
//! calls the delivery callbacks exactly once per message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
#[derive(Default)]
pub(crate) struct Pending {
    count: AtomicUsize,
    drained: Notify,
}

impl Pending {
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves when no callback is outstanding.
    pub(crate) async fn drained(&self) {
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
    // In a Mutex only to be Sync: librdkafka's opaques must be, the
    // user's callback need not.
    callback: Option<Mutex<MessageCallback>>,
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
        pending.count.fetch_add(1, Ordering::AcqRel);
        Completion {
            topic,
            on_delivery,
            callback: callback.map(Mutex::new),
            pending,
            done: false,
        }
    }

    pub(crate) fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub(crate) fn finish(mut self, result: Result<Delivery, Error>) {
        self.complete(result);
    }

    /// Drops the completion without calling anything: the message was never
    /// accepted and the caller got the error instead.
    pub(crate) fn forget(mut self) {
        self.done = true;
        self.callback = None;
        self.on_delivery = None;
        if self.pending.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.pending.drained.notify_waiters();
        }
    }

    fn complete(&mut self, result: Result<Delivery, Error>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // A panicking user callback must not take the driver (and with it
        // every other message's callback) down.
        let on_delivery = self.on_delivery.take();
        let callback = self
            .callback
            .take()
            .map(|c| c.into_inner().unwrap_or_else(|p| p.into_inner()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            if let Some(cb) = on_delivery {
                cb(&result);
            }
            if let Some(cb) = callback {
                cb(result);
            }
        }));
        if outcome.is_err() {
            tracing::error!(topic = %self.topic, "a delivery callback panicked");
        }
        if self.pending.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.pending.drained.notify_waiters();
        }
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
