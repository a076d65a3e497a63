//! The consumer's control object: what the poll thread, librdkafka's
//! callbacks, the handler lanes and `run` all touch — the group, the ledger
//! of outcomes and offsets, the error handler and what it decided, the
//! shutdown signal, caught panics. Everything in it is behind a lock or
//! atomic; the poll-thread-only state (the pipeline) lives in the client's
//! context instead (`context.rs`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::error::KafkaError;

use super::offsets::Ledger;
use super::status::{Board, GroupState};
use crate::convert::TopicNames;
use crate::error::{Decision, Error, ErrorHandlerFn};
use crate::shutdown::ShutdownHandle;
use xkafka_core::middleware::recover::Panicked;

/// State shared by the poll loop, the rebalance callbacks and `run`.
pub(crate) struct Shared {
    pub(crate) group: Arc<str>,
    ledger: Mutex<Ledger>,
    error_handler: ErrorHandlerFn,
    stop_error: Mutex<Option<Error>>,
    /// The last error event of librdkafka, kept (with its reason) for the
    /// poll loop: the same event comes back from `poll` right after, where
    /// the consumer can tell which partition it is about.
    pending_error: Mutex<Option<(KafkaError, String)>>,
    /// Whether the poll loop runs (and so takes `pending_error`).
    pub(crate) polling: std::sync::atomic::AtomicBool,
    /// The first panic caught on the poll thread or in a callback: `run`
    /// returns it whatever else happened.
    panic: Mutex<Option<Error>>,
    pub(crate) shutdown: ShutdownHandle,
    /// One `Arc` per topic name, shared by fetched messages and assigned
    /// partitions so that comparing them is a pointer comparison.
    topics: TopicNames,
    pub(crate) revoke_grace: Duration,
    /// Moves whenever the pipeline assigns partitions or rewinds them (a
    /// transaction aborted): the poll loop then drops what it fetched for
    /// them before (see `Pipeline::take_rewound`). An atomic, so that the
    /// loop's check after each `poll` costs no lock.
    pub(crate) rewinds: std::sync::atomic::AtomicU64,
    /// The status the poll thread publishes (and `StatusHandle`s read).
    pub(crate) board: Arc<Board>,
    /// `on_rebalance` listeners, called on the poll thread.
    pub(crate) listeners: super::rebalance::Listeners,
    /// Transactional: new partitions start at the group's committed
    /// offsets, resolved by the consumer itself (see `start_offsets.rs`).
    pub(crate) start_offsets: Option<super::start_offsets::StartOffsets>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: Option<crate::metrics::Metrics>,
}

impl Shared {
    pub(crate) fn new(
        group: Arc<str>,
        error_handler: ErrorHandlerFn,
        shutdown: ShutdownHandle,
        revoke_grace: Duration,
    ) -> Self {
        let board = Arc::new(Board::new(group.to_string(), "classic".into()));
        Shared {
            group,
            ledger: Mutex::new(Ledger::default()),
            error_handler,
            stop_error: Mutex::new(None),
            panic: Mutex::new(None),
            pending_error: Mutex::new(None),
            polling: std::sync::atomic::AtomicBool::new(false),
            shutdown,
            topics: TopicNames::default(),
            revoke_grace,
            rewinds: std::sync::atomic::AtomicU64::new(0),
            board,
            listeners: Vec::new(),
            start_offsets: None,
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }

    /// The consumer's one shared name for `topic`.
    pub(crate) fn topic(&self, topic: &str) -> Arc<str> {
        self.topics.get(topic)
    }

    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an error to the user's error handler. On `Stop` the first such
    /// error is kept for `run` to return and a shutdown starts.
    pub(crate) fn report(&self, err: Error) -> Decision {
        if err.is_fatal() {
            self.board.set_fatal(err.to_string());
        }
        // A panicking error handler is taken as a request to stop: we cannot
        // know what it wanted, and carrying on could skip a message.
        let decision =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.error_handler)(&err)))
                .unwrap_or_else(|_| {
                    tracing::error!(group = %self.group, "the error handler panicked; stopping");
                    Decision::Stop
                });
        if decision == Decision::Stop {
            let mut slot = self.stop_error.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(err);
            }
            drop(slot);
            self.shutdown.shutdown();
        }
        decision
    }

    /// Tells the error handler about `err`, then stops whatever it decides:
    /// the consumer cannot go on safely (a fenced transactional producer,
    /// a transaction that could neither commit nor abort). `run` returns
    /// `err` unless an earlier error stopped it.
    pub(crate) fn stop_with(&self, err: Error) {
        self.board.set_fatal(err.to_string());
        // Told, not asked: its decision cannot change the outcome.
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.error_handler)(&err)));
        let mut slot = self.stop_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        drop(slot);
        self.shutdown.shutdown();
    }

    /// Tells the rebalance listeners; a panicking one goes to the error
    /// handler (the others are still told).
    pub(crate) fn notify(&self, event: &super::rebalance::Rebalance) {
        for listener in &self.listeners {
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                listener.on_rebalance(event);
            }));
            if let Err(payload) = told {
                self.report(Error::CallbackPanicked {
                    callback: "an on_rebalance listener",
                    topic: None,
                    message: Panicked::from_payload(payload).message,
                });
            }
        }
    }

    /// Records where the consumer stands in its group, for its status.
    pub(crate) fn set_state(&self, state: GroupState) {
        self.board.set_state(state);
    }

    /// Keeps the first panic for `run` to return and starts a shutdown: after
    /// a panic on the poll thread its state cannot be trusted.
    pub(crate) fn record_panic(&self, place: &'static str, payload: Box<dyn std::any::Any + Send>) {
        let message = Panicked::from_payload(payload).message;
        let mut slot = self.panic.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Error::Panicked {
                place,
                message: message.clone(),
            });
            self.board.set_fatal(format!("{place} panicked: {message}"));
        }
        drop(slot);
        self.shutdown.shutdown();
        // Recorded first: the subscriber that gets this event may be the
        // code that just panicked.
        let group = &self.group;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tracing::error!(%group, place, %message, "panic caught; stopping the consumer");
        }));
    }

    /// Runs `f`, a callback of librdkafka's: a panic must not unwind into
    /// librdkafka's C frames (that aborts the process); it is recorded, the
    /// consumer stops, and `None` is returned.
    pub(crate) fn guard<T>(&self, place: &'static str, f: impl FnOnce() -> T) -> Option<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(value) => Some(value),
            Err(payload) => {
                self.record_panic(place, payload);
                None
            }
        }
    }

    /// The error event librdkafka reported last, not yet claimed by the poll
    /// loop.
    /// Keeps librdkafka's latest error event for the poll loop; returns the
    /// one it replaces, which nobody claimed.
    pub(crate) fn keep_pending_error(
        &self,
        error: KafkaError,
        reason: String,
    ) -> Option<(KafkaError, String)> {
        self.pending_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((error, reason))
    }

    pub(crate) fn take_pending_error(&self) -> Option<(KafkaError, String)> {
        self.pending_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub(crate) fn take_panic(&self) -> Option<Error> {
        self.panic.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn take_stop_error(&self) -> Option<Error> {
        self.stop_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
