//! librdkafka callbacks of the consumer: rebalances (eager and cooperative),
//! commit results, errors and logs. The client's context owns the
//! poll-thread-only state (the pipeline); what other threads share is in
//! [`Shared`](super::shared::Shared).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::commit::{commit_sync, is_nothing_to_commit};
use super::fetch_queue::FetchQueue;
use super::offsets::TopicPartition;
use super::pipeline::Pipeline;
use super::rebalance::Rebalance;
use super::shared::Shared;
use super::start_offsets::{Withheld, FIRST_QUERY};
use crate::error::{Error, Operation};
use crate::log::forward_log;
use crate::secret::scrub;

/// The client's context: librdkafka's callbacks, and the state only the
/// poll thread touches. The pipeline lives here, not in [`Shared`]: lanes
/// hold `Arc<Shared>`, and the pipeline holds the lanes, so keeping it in
/// `Shared` made a cycle that leaked whenever `finish` did not run; owned by
/// the client, it goes when the client goes.
pub(crate) struct XConsumerContext {
    pub(crate) shared: Arc<Shared>,
    /// Set while `run` runs; rebalance callbacks drain through it.
    pipeline: Mutex<Option<Pipeline>>,
    /// Where assigned partitions' records go, while the poll loop takes
    /// them from there (`fetch_queue.rs`); rebalance callbacks route new
    /// partitions to it.
    fetch: Mutex<Option<Arc<FetchQueue>>>,
    /// Transactional: assigned partitions whose committed offsets are not
    /// known yet, not assigned to librdkafka until they are
    /// (`start_offsets.rs`). Only the poll thread touches it.
    withheld: Mutex<Option<Withheld>>,
}

impl XConsumerContext {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        XConsumerContext {
            shared,
            pipeline: Mutex::new(None),
            fetch: Mutex::new(None),
            withheld: Mutex::new(None),
        }
    }

    /// Partitions assigned from now on send their records to `queue`;
    /// `None`: to the consumer queue again (records already routed to an
    /// old queue are dropped with it).
    pub(crate) fn set_fetch_queue(&self, queue: Option<Arc<FetchQueue>>) {
        *self.fetch.lock().unwrap_or_else(|p| p.into_inner()) = queue;
    }

    fn fetch_queue(&self) -> Option<Arc<FetchQueue>> {
        self.fetch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The pipeline, while the consumer runs. Only the poll thread locks it
    /// (the loop, and the rebalance callback inside `poll`), so it is never
    /// contended; never held across `consumer.poll`, which may call back
    /// into the rebalance handler.
    pub(crate) fn pipeline(&self) -> MutexGuard<'_, Option<Pipeline>> {
        self.pipeline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn withheld(&self) -> MutexGuard<'_, Option<Withheld>> {
        self.withheld.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks again, when due, for the committed offsets of withheld
    /// partitions, and assigns them once known. Called by the poll loop
    /// between rounds, so that it keeps polling (and marking progress)
    /// while it waits.
    pub(crate) fn serve_withheld(&self, consumer: &BaseConsumer<Self>) {
        let Some(start) = &self.shared.start_offsets else {
            return;
        };
        let mut guard = self.withheld();
        let Some(withheld) = guard.as_mut() else {
            return;
        };
        if !withheld.due(Instant::now()) {
            return;
        }
        // Eager: a member that lost its membership while it waited rejoins
        // without a revocation (nothing was assigned); a new assignment
        // follows.
        if !withheld.cooperative && consumer.assignment_lost() {
            tracing::info!(group = %self.shared.group, "the group's assignment was lost while its committed offsets were unknown; rejoining");
            *guard = None;
            return;
        }
        self.shared.board.progress();
        let result = start.query(consumer, withheld.tpl(), withheld.query_timeout());
        self.shared.board.progress();
        match result {
            Ok(starts) => {
                let cooperative = withheld.cooperative;
                tracing::info!(group = %self.shared.group, partitions = starts.count(), waited = ?withheld.since().elapsed(), "the group's committed offsets are known; assigning");
                *guard = None;
                drop(guard);
                self.assign_starts(consumer, starts, cooperative);
            }
            Err(why) => {
                let told = withheld.failed(why, start);
                drop(guard);
                if let Some(err) = told {
                    self.shared.report(err);
                }
            }
        }
    }

    /// The consumer stops while partitions are withheld: librdkafka waits
    /// for the application's assign call before it can leave the group, so
    /// it is answered with nothing. The partitions are never read.
    pub(crate) fn release_withheld(&self, consumer: &BaseConsumer<Self>) {
        let mut guard = self.withheld();
        let Some(withheld) = guard.as_mut().filter(|w| !w.is_released()) else {
            return;
        };
        withheld.release();
        let nothing = TopicPartitionList::new();
        let result = if withheld.cooperative {
            consumer.incremental_assign(&nothing)
        } else {
            consumer.assign(&nothing)
        };
        drop(guard);
        if let Err(e) = result {
            self.shared.report(Error::kafka(Operation::Rebalance, e));
        }
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
        if let Some(topic) = unavailable_topic(&error, &reason) {
            // A first run against a topic that is not there yet would
            // otherwise look like a consumer with nothing to do. librdkafka
            // raises this once per topic until its state changes, so this
            // warns once while the consumer waits.
            tracing::warn!(
                group = %self.shared.group,
                topic,
                %error,
                "subscribed topic {topic} is not available (it does not exist, or this \
                 client may not read it): waiting for it to appear; create it with \
                 `xkafka topics create {topic}` or check its ACLs"
            );
        }
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
        if let Some((error, reason)) = self.shared.keep_pending_error(error, reason.into_owned()) {
            self.shared.report(Error::client(error, &reason));
        }
    }
}

/// The topic of librdkafka's "Subscribed topic not available: TOPIC:
/// reason" error (a topic that does not exist or is not authorised).
fn unavailable_topic<'r>(error: &KafkaError, reason: &'r str) -> Option<&'r str> {
    let code = error.rdkafka_error_code()?;
    if !matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
    ) {
        return None;
    }
    // Topic names cannot hold ':' or ' ' (Kafka allows [a-zA-Z0-9._-]).
    let rest = reason.split_once("Subscribed topic not available: ")?.1;
    rest.split_once(": ").map(|(topic, _)| topic)
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
                if let Some(start) = &self.shared.start_offsets {
                    let mut withheld = self.withheld();
                    // Eager: a new assignment replaces whatever was waiting.
                    if !cooperative {
                        *withheld = None;
                    }
                    match start.query(consumer, tpl, FIRST_QUERY) {
                        Ok(starts) => {
                            drop(withheld);
                            self.assign_starts(consumer, starts, cooperative);
                        }
                        Err(why) => {
                            tracing::warn!(group = %self.shared.group, ?partitions, ?why, "the group's committed offsets are unknown; the partitions wait for them (a pending transaction holds them until the broker ends it, or the coordinator is slow or failing)");
                            let w = withheld.get_or_insert_with(|| Withheld::new(tpl, cooperative));
                            w.add(tpl);
                            let told = w.failed(why, start);
                            drop(withheld);
                            if let Some(err) = told {
                                self.shared.report(err);
                            }
                        }
                    }
                    return;
                }
                self.assign_starts(consumer, tpl.clone(), cooperative);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                tracing::info!(group = %self.shared.group, ?partitions, cooperative, lost, "partitions revoked");
                // Withheld partitions were never assigned to librdkafka nor
                // read: they go without a commit, and librdkafka is not
                // asked to unassign what it never had.
                let never_assigned = self.forget_withheld(&partitions, cooperative);
                let partitions: BTreeSet<TopicPartition> =
                    partitions.difference(&never_assigned).cloned().collect();
                let assigned;
                let tpl: &TopicPartitionList = if never_assigned.is_empty() {
                    tpl
                } else {
                    assigned = tpl_of(&partitions);
                    &assigned
                };
                let only_withheld = partitions.is_empty() && !never_assigned.is_empty();
                // Let running handlers of these partitions finish, then commit
                // what they processed. A lost partition may already belong to
                // another member: committing for it could move that member's
                // offsets backwards, so it is not committed.
                let mut pipeline = self.pipeline();
                match pipeline.as_mut() {
                    _ if only_withheld => {}
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
                if !self.shared.listeners.is_empty() && !only_withheld {
                    self.shared.notify(&Rebalance::Revoked {
                        partitions: partitions.iter().cloned().collect(),
                        lost,
                    });
                }
                {
                    let mut ledger = self.shared.ledger();
                    for tp in &partitions {
                        ledger.assigned.remove(tp);
                        ledger.stored.remove(tp);
                    }
                    // Eager: everything went, a new assignment follows.
                    // Incremental: what is left is still ours.
                    self.shared.set_state(if ledger.assigned.is_empty() {
                        super::status::GroupState::Rebalancing
                    } else {
                        super::status::GroupState::Stable
                    });
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
                *self.withheld() = None;
                self.shared.ledger().assigned.clear();
                let _ = consumer.unassign();
            }
        }
    }

    /// Takes revoked `partitions` off the withheld ones (all of them when
    /// the assignment is eager: everything goes); returns those that were
    /// withheld.
    fn forget_withheld(
        &self,
        partitions: &BTreeSet<TopicPartition>,
        cooperative: bool,
    ) -> BTreeSet<TopicPartition> {
        let mut guard = self.withheld();
        let Some(withheld) = guard.as_mut() else {
            return BTreeSet::new();
        };
        let removed = withheld.remove(partitions);
        if !removed.is_empty() && !withheld.is_released() {
            tracing::info!(group = %self.shared.group, partitions = ?removed, waited = ?withheld.since().elapsed(), "revoked before their committed offsets were known; never read here");
        }
        if !cooperative || withheld.is_empty() {
            *guard = None;
        }
        removed
    }

    /// Assigns `tpl` (each partition with its start): the pipeline, the
    /// ledger and librdkafka learn of it, and the listeners are told.
    fn assign_starts(
        &self,
        consumer: &BaseConsumer<Self>,
        starts: TopicPartitionList,
        cooperative: bool,
    ) {
        let tpl = &starts;
        let partitions: BTreeSet<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(self.shared.topic(e.topic()), e.partition()))
            .collect();
        if let Some(pipeline) = self.pipeline().as_mut() {
            pipeline.assign(&self.shared, partitions.iter().cloned());
        }
        let mut ledger = self.shared.ledger();
        ledger.assignments += 1;
        ledger.assigned.extend(partitions.iter().cloned());
        drop(ledger);
        self.shared.set_state(super::status::GroupState::Stable);
        if let Some(queue) = self.fetch_queue() {
            queue.route(consumer, tpl);
        }
        let result = if cooperative {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(e) = result {
            self.shared.report(Error::kafka(Operation::Rebalance, e));
        }
        // Before the first fetch of these partitions: nothing of
        // theirs can have reached a handler yet.
        if !self.shared.listeners.is_empty() {
            self.shared
                .notify(&Rebalance::Assigned(partitions.iter().cloned().collect()));
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

/// The list of `partitions` (without offsets).
fn tpl_of(partitions: &BTreeSet<TopicPartition>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_unavailable_subscribed_topic_is_named() {
        let unknown = KafkaError::Global(RDKafkaErrorCode::UnknownTopicOrPartition);
        let reason =
            "Subscribed topic not available: orders.v1: Broker: Unknown topic or partition";
        assert_eq!(unavailable_topic(&unknown, reason), Some("orders.v1"));
        let denied = KafkaError::Global(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(unavailable_topic(&denied, reason), Some("orders.v1"));
        let other = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(unavailable_topic(&other, reason), None);
        assert_eq!(unavailable_topic(&unknown, "1/1 brokers are down"), None);
    }
    use crate::error::Decision;
    use crate::shutdown::ShutdownHandle;

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
