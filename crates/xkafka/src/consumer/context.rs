//! librdkafka callbacks of the consumer: rebalances (eager and cooperative),
//! commit results, errors and logs; plus the commit and store helpers they
//! share with the poll loop.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::{Ledger, TopicPartition};
use super::pipeline::Pipeline;
use crate::convert::TopicNames;
use crate::error::{Decision, Error, ErrorHandlerFn, Operation};
use crate::log::{forward_log, scrub};
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

/// The client's context: librdkafka's callbacks, and the state only the
/// poll thread touches. The pipeline lives here, not in [`Shared`]: lanes
/// hold `Arc<Shared>`, and the pipeline holds the lanes, so keeping it in
/// `Shared` made a cycle that leaked whenever `finish` did not run; owned by
/// the client, it goes when the client goes.
pub(crate) struct XConsumerContext {
    pub(crate) shared: Arc<Shared>,
    /// Set while `run` runs; rebalance callbacks drain through it.
    pipeline: Mutex<Option<Pipeline>>,
}

impl XConsumerContext {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        XConsumerContext {
            shared,
            pipeline: Mutex::new(None),
        }
    }

    /// The pipeline, while the consumer runs. Only the poll thread locks it
    /// (the loop, and the rebalance callback inside `poll`), so it is never
    /// contended; never held across `consumer.poll`, which may call back
    /// into the rebalance handler.
    pub(crate) fn pipeline(&self) -> MutexGuard<'_, Option<Pipeline>> {
        self.pipeline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for XConsumerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // The application's tracing subscriber runs here, inside librdkafka.
        self.shared.guard("the log callback", || {
            forward_log(&self.shared.group, level, fac, log_message);
        });
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.shared
            .guard("the error callback", || self.on_error(error, reason));
    }
}

impl XConsumerContext {
    fn on_error(&self, error: KafkaError, reason: &str) {
        // With `enable.partition.eof`, the end of a partition comes as an
        // error event too; it is not an error.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        let reason = scrub(reason);
        tracing::debug!(group = %self.shared.group, %error, %reason, "consumer client error");
        if !self
            .shared
            .polling
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.shared.report(Error::client(error, &reason));
            return;
        }
        // rdkafka returns this same event from `poll` right after: the poll
        // loop reports it then, located. One still unclaimed (never seen)
        // is reported as it is, not lost.
        let previous = self
            .shared
            .pending_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((error, reason.into_owned()));
        if let Some((error, reason)) = previous {
            self.shared.report(Error::client(error, &reason));
        }
    }
}

impl ConsumerContext for XConsumerContext {
    // Overridden (rather than pre/post hooks) to pick eager or incremental
    // (cooperative-sticky) assignment, to commit what revoked partitions
    // processed before letting them go, and to report assignment errors
    // instead of only logging them.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let done = self.shared.guard("the rebalance callback", || {
            self.on_rebalance(consumer, err, tpl);
        });
        if done.is_none() && err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
            // The consumer is stopping; librdkafka still waits for the
            // revoked partitions to be let go.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = if matches!(
                    consumer.rebalance_protocol(),
                    RebalanceProtocol::Cooperative
                ) {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }));
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.shared.guard("the commit callback", || {
            self.on_commit(result, offsets);
        });
    }
}

impl XConsumerContext {
    fn on_rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: BTreeSet<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(self.shared.topic(e.topic()), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(group = %self.shared.group, ?partitions, cooperative, "partitions assigned");
                if let Some(pipeline) = self.pipeline().as_mut() {
                    pipeline.assign(partitions.iter().cloned());
                }
                let mut ledger = self.shared.ledger();
                ledger.assignments += 1;
                ledger.assigned.extend(partitions);
                drop(ledger);
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    self.shared.report(Error::kafka(Operation::Rebalance, e));
                }
                // librdkafka remembers a pause across revoke and re-assign;
                // a partition we get (back) starts with an empty buffer, so
                // it must flow.
                if tpl.count() > 0 {
                    if let Err(e) = consumer.resume(tpl) {
                        self.shared.report(Error::kafka(Operation::Rebalance, e));
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                tracing::info!(group = %self.shared.group, ?partitions, cooperative, lost, "partitions revoked");
                // Let running handlers of these partitions finish, then commit
                // what they processed. A lost partition may already belong to
                // another member: committing for it could move that member's
                // offsets backwards, so it is not committed.
                let mut pipeline = self.pipeline();
                match pipeline.as_mut() {
                    Some(p) => p.revoke(
                        consumer,
                        &self.shared,
                        &partitions,
                        lost,
                        self.shared.revoke_grace,
                    ),
                    None if !lost => {
                        let pending = self.shared.ledger().uncommitted(Some(&partitions));
                        commit_sync(consumer, &self.shared, pending);
                    }
                    None => {}
                }
                drop(pipeline);
                {
                    let mut ledger = self.shared.ledger();
                    for tp in &partitions {
                        ledger.assigned.remove(tp);
                        ledger.stored.remove(tp);
                    }
                }
                #[cfg(feature = "metrics")]
                if let Some(metrics) = &self.shared.metrics {
                    for tp in &partitions {
                        metrics.forget_partition(&tp.topic, tp.partition);
                    }
                }
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    self.shared.report(Error::kafka(Operation::Rebalance, e));
                }
            }
            other => {
                let code = RDKafkaErrorCode::from(other);
                self.shared.report(Error::kafka(
                    Operation::Rebalance,
                    KafkaError::Rebalance(code),
                ));
                // librdkafka's advice for a failed rebalance: drop the
                // assignment; the group will hand out a new one.
                self.shared.ledger().assigned.clear();
                let _ = consumer.unassign();
            }
        }
    }

    fn on_commit(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                let mut ledger = self.shared.ledger();
                for e in offsets.elements() {
                    if let (Offset::Offset(off), Ok(())) = (e.offset(), e.error()) {
                        ledger.mark_committed(&TopicPartition::new(e.topic(), e.partition()), off);
                    }
                }
            }
            Err(e) if is_nothing_to_commit(&e) => {}
            Err(e) => {
                self.shared.report(Error::kafka(Operation::Commit, e));
            }
        }
    }
}

fn is_nothing_to_commit(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset)
}

fn tpl_of(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (tp, off) in offsets {
        // add_partition_offset only fails for invalid offsets; ours are >= 0.
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*off));
    }
    tpl
}

/// Synchronously commits `offsets` (next offsets to consume); errors go to
/// the error handler. Returns whether the commit succeeded.
pub(crate) fn commit_sync<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    offsets: Vec<(TopicPartition, i64)>,
) -> bool {
    if offsets.is_empty() {
        return true;
    }
    match consumer.commit(&tpl_of(&offsets), CommitMode::Sync) {
        Ok(()) => {
            let mut ledger = shared.ledger();
            for (tp, off) in &offsets {
                ledger.mark_committed(tp, *off);
            }
            true
        }
        Err(e) if is_nothing_to_commit(&e) => true,
        Err(e) => {
            shared.report(Error::kafka(Operation::Commit, e));
            false
        }
    }
}

/// Stores each `(partition, next offset)` in one librdkafka call, skipping
/// partitions no longer ours (storing would fail with librdkafka's
/// "erroneous state", or worse, succeed for a partition another member now
/// owns). Returns what was stored.
pub(crate) fn store_batch<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    offsets: &[(TopicPartition, i64)],
) -> Vec<(TopicPartition, i64)> {
    let ours: Vec<(TopicPartition, i64)> = {
        let mut ledger = shared.ledger();
        let (ours, gone): (Vec<_>, Vec<_>) = offsets
            .iter()
            .cloned()
            .partition(|(tp, _)| ledger.assigned.contains(tp));
        ledger.revoked_skipped_stores += gone.len() as u64;
        ours
    };
    if ours.is_empty() {
        return ours;
    }
    match consumer.store_offsets(&tpl_of(&ours)) {
        Ok(()) => {
            let mut ledger = shared.ledger();
            for (tp, off) in &ours {
                ledger.stored.insert(tp.clone(), *off);
            }
            ours
        }
        // Revoked between our check and the store: expected, not an error.
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::State) => {
            shared.ledger().revoked_skipped_stores += ours.len() as u64;
            Vec::new()
        }
        Err(e) => {
            shared.report(Error::kafka(Operation::StoreOffset, e));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn context() -> (XConsumerContext, Arc<Mutex<Vec<String>>>) {
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        let shared = Shared::new(
            "context-tests".into(),
            Arc::new(move |err: &Error| {
                sink.lock().unwrap().push(err.to_string());
                Decision::Continue
            }),
            ShutdownHandle::new(),
            Duration::from_secs(1),
        );
        (XConsumerContext::new(Arc::new(shared)), errors)
    }

    fn not_implemented() -> KafkaError {
        KafkaError::Global(RDKafkaErrorCode::NotImplemented)
    }

    #[test]
    fn outside_the_poll_loop_an_error_event_is_reported_at_once() {
        let (cx, errors) = context();
        cx.error(not_implemented(), "closing");
        assert_eq!(errors.lock().unwrap().len(), 1);
        assert!(cx.shared.take_pending_error().is_none());
    }

    #[test]
    fn while_polling_an_error_event_waits_for_the_loop_and_is_never_lost() {
        let (cx, errors) = context();
        cx.shared.polling.store(true, Ordering::Release);
        cx.error(
            not_implemented(),
            "Decompression (codec 0x5) of message at 3",
        );
        assert!(errors.lock().unwrap().is_empty(), "kept for the poll loop");
        // A second event before the loop claimed the first: the first is
        // reported as it is, the second kept.
        cx.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        assert_eq!(errors.lock().unwrap().len(), 1);
        assert!(errors.lock().unwrap()[0].contains("Not implemented"));
        let (error, reason) = cx.shared.take_pending_error().unwrap();
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        );
        assert_eq!(reason, "1/1 brokers are down");
    }

    #[test]
    fn a_panicking_callback_is_recorded_and_stops_the_consumer() {
        let (cx, _) = context();
        let out = cx
            .shared
            .guard("the commit callback", || -> u8 { panic!("boom") });
        assert!(out.is_none());
        assert!(cx.shared.shutdown.is_shutting_down());
        match cx.shared.take_panic() {
            Some(Error::Panicked { place, message }) => {
                assert_eq!((place, message.as_str()), ("the commit callback", "boom"));
            }
            other => panic!("{other:?}"),
        }
    }
}
