//! The pipeline between the poll thread and the lanes: per-partition offset
//! trackers, dispatch with backpressure (pausing partitions), settlement of
//! completions into stored and committed offsets, and the draining that
//! revocations and shutdown need.
//!
//! Only the poll thread touches it (the loop and librdkafka's rebalance
//! callback, which runs inside `poll`), through the mutex in the client's
//! context (`XConsumerContext`), which owns it.

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::TopicPartitionList;
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use super::commit::{commit_sync, store_batch};
use super::commit_mode::CommitMode;
use super::dispatch::{Claim, Completion, Dispatcher, Gate, Report, Settled};
use super::offsets::TopicPartition;
use super::refused::OutputRefused;
use super::shared::Shared;
use super::status::{Ages, PartitionStatus, PauseReason, Published};
use super::tracker::OffsetTracker;
use super::transaction::{AfterFailure, Ending, Transaction};
use crate::error::{Decision, Error, Operation};
use crate::{Ack, Message};

/// How long a drain waits for one completion before re-checking its exit
/// conditions.
const DRAIN_TICK: Duration = Duration::from_millis(10);
/// Bound on rewinding partitions after an aborted transaction.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a commit that ran out of time is resumed (each with the
/// whole transaction timeout) before the consumer gives up and stops.
const COMMIT_ATTEMPTS: u32 = 3;

/// Buffering bounds: past them partitions are paused, not polled less.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) per_partition: usize,
    pub(crate) total: usize,
    /// How long the oldest unfinished message of a partition paused at its
    /// bound may stay unfinished before it is reported as a stall.
    pub(crate) stall_after: Duration,
}

/// Default of [`Limits::stall_after`].
pub(crate) const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);

struct PartitionState {
    tracker: OffsetTracker,
    gate: Arc<Gate>,
    epoch: u64,
    paused: bool,
    /// Being revoked or shut down: stays paused while its handlers drain
    /// (resuming it would let librdkafka prefetch, up to its queue limit,
    /// messages nobody will handle).
    closing: bool,
    /// Paused with an unfinished message holding finished ones behind it,
    /// and reported as such (once per stall).
    stalled: bool,
    /// Paused at its bound behind this unfinished message since then (a
    /// stall once it lasts `stall_after`).
    held_since: Option<(i64, Instant)>,
    /// Paused until then: its next message is not due yet (`not_before`);
    /// the fetch position was set back to it.
    delayed: Option<Instant>,
}

pub(crate) struct Pipeline {
    // Looked up several times per message on the poll thread: FxHash, since
    // SipHash of the topic name was a visible share of its time.
    partitions: FxHashMap<TopicPartition, PartitionState>,
    dispatcher: Dispatcher,
    completions: std_mpsc::Receiver<Report>,
    limits: Limits,
    commit_mode: CommitMode,
    next_epoch: u64,
    unsettled: usize,
    /// Completions of batches handled inline, not settled yet.
    finished_inline: Vec<Completion>,
    /// What messages handled inline settled since the last `settle`: their
    /// trackers moved already, the rest (counts, stores) waits for it.
    pending: Settlement,
    /// [`CommitMode::Transactional`]: the open transaction.
    txn: Option<Transaction>,
    /// Partitions read again from an earlier offset (a transaction aborted)
    /// or newly assigned since the poll loop last looked: messages it
    /// fetched for them before that are stale.
    rewound: Vec<TopicPartition>,
    /// Set by `stop` in transactional mode.
    ending: Option<Ending>,
    /// When a message may be handled (`ConsumerBuilder::not_before`).
    not_before: Option<NotBeforeFn>,
    /// Partitions paused until their next message is due.
    delayed: usize,
    /// The last dispatched message's partition, reused while messages come
    /// in runs of one partition: spares an `Arc` clone and drop per message.
    last_tp: Option<TopicPartition>,
    /// Transactional: inputs whose output no transaction could commit,
    /// found by isolation, kept until a commit moves past them (the
    /// transaction that skips one may abort too, and it is read again).
    refused_outputs: Vec<RefusedOutput>,
}

/// An input whose output no transaction could commit. Dispatched again, a
/// streaming consumer's goes through the handler stack marked, so that the
/// innermost service fails it without calling the handler
/// (`refused.rs`: a dead-letter layer sees the failure); a batch consumer's
/// is settled with the error handler's decision, asked once.
struct RefusedOutput {
    tp: TopicPartition,
    offset: i64,
    reason: Arc<str>,
    decision: Option<Decision>,
}

/// When a message may be handled at the earliest; `None`: now.
pub(crate) type NotBeforeFn = Arc<dyn Fn(&Message) -> Option<std::time::SystemTime> + Send + Sync>;

#[derive(Default)]
struct Settlement {
    changed: BTreeSet<TopicPartition>,
    last_changed: Option<TopicPartition>,
    acks: Vec<oneshot::Sender<()>>,
    claims: Vec<Claim>,
    succeeded: u64,
    skipped: u64,
    failed: u64,
    failed_skipped: u64,
}

impl Pipeline {
    pub(crate) fn new(
        dispatcher: Dispatcher,
        completions: std_mpsc::Receiver<Report>,
        limits: Limits,
        commit_mode: CommitMode,
    ) -> Self {
        Pipeline {
            partitions: FxHashMap::default(),
            dispatcher,
            completions,
            limits: Limits {
                per_partition: limits.per_partition.max(1),
                total: limits.total.max(1),
                stall_after: limits.stall_after,
            },
            commit_mode,
            next_epoch: 0,
            unsettled: 0,
            finished_inline: Vec::new(),
            pending: Settlement::default(),
            txn: None,
            rewound: Vec::new(),
            ending: None,
            not_before: None,
            delayed: 0,
            last_tp: None,
            refused_outputs: Vec::new(),
        }
    }

    /// The end of the transaction that `stop` prepared, for the close
    /// thread (transactional mode only).
    pub(crate) fn take_ending(&mut self) -> Option<Ending> {
        self.ending.take()
    }

    /// Publishes the status of every assigned partition (for
    /// `StatusHandle`s): local figures only, no broker round trip.
    pub(crate) fn publish_status<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        ages: &mut Ages,
    ) {
        let (assigned, committed, counters) = {
            let ledger = shared.ledger();
            (
                ledger.assigned.clone(),
                ledger.committed.clone(),
                super::status::Counters {
                    succeeded: ledger.succeeded,
                    skipped: ledger.skipped,
                    failed: ledger.failed,
                    assignments: ledger.assignments,
                    transactions_committed: ledger.transactions_committed,
                    transactions_aborted: ledger.transactions_aborted,
                },
            )
        };
        ages.retain(&assigned);
        let positions = super::status::fetch_positions(consumer, &assigned);
        let partitions = assigned
            .iter()
            .map(|tp| {
                let state = self.partitions.get(tp);
                let tracker = state.map(|s| &s.tracker);
                let committed = committed.get(tp).copied();
                let high = crate::convert::cached_high_watermark(consumer, &tp.topic, tp.partition);
                let paused = state.and_then(|s| match (s.paused, s.closing, s.stalled) {
                    (_, true, _) => Some(PauseReason::Closing),
                    _ if s.delayed.is_some() => Some(PauseReason::NotDue),
                    (true, _, true) => Some(PauseReason::Stalled),
                    (true, _, false) => Some(PauseReason::Backpressure),
                    (false, _, _) => None,
                });
                // librdkafka's has none just after an assignment or a seek.
                let position =
                    (positions.get(tp).copied()).max(tracker.and_then(OffsetTracker::end));
                PartitionStatus {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    position,
                    stored: tracker.and_then(OffsetTracker::watermark),
                    committed,
                    high_watermark: high,
                    lag: high.zip(committed).map(|(h, c)| (h - c).max(0)),
                    fetchable: high
                        .zip(position.or(committed))
                        .map(|(h, p)| (h - p).max(0)),
                    in_flight: tracker.map_or(0, OffsetTracker::unsettled),
                    paused,
                    oldest_unfinished: ages
                        .head(tp, tracker.and_then(OffsetTracker::oldest_unsettled)),
                    last_handled_ago: ages.handled(tp, tracker.map_or(0, OffsetTracker::finished)),
                    committed_unchanged_for: ages.committed(tp, committed),
                }
            })
            .collect();
        shared.board.publish(Published {
            at: Instant::now(),
            member_id: crate::convert::member_id(consumer),
            partitions,
            counters,
        });
    }

    /// Messages are handled no earlier than `not_before` says.
    pub(crate) fn with_not_before(mut self, not_before: NotBeforeFn) -> Self {
        self.not_before = Some(not_before);
        self
    }

    /// Resumes the partitions whose delayed message is due; returns how
    /// long until the next one is (for the poll's timeout).
    pub(crate) fn resume_due<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
    ) -> Option<Duration> {
        if self.delayed == 0 {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for state in self.partitions.values_mut() {
            match state.delayed {
                Some(at) if at <= now => {
                    state.delayed = None;
                    self.delayed -= 1;
                }
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        self.resume_drained(consumer, shared);
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Holds `message` back when it is not due: pauses its partition until
    /// it is, and sets the fetch position back to it (what was fetched
    /// after it is dropped and fetched again). `false`: handle it now.
    fn hold_back<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        tp: &TopicPartition,
        message: &Message,
        offset: i64,
    ) -> bool {
        let Some(not_before) = &self.not_before else {
            return false;
        };
        let Some(wait) = not_before(message)
            .and_then(|due| due.duration_since(std::time::SystemTime::now()).ok())
            .filter(|w| !w.is_zero())
        else {
            return false;
        };
        let Some(state) = self.partitions.get_mut(tp) else {
            return false;
        };
        if !state.paused {
            state.paused = true;
            pause(consumer, shared, std::slice::from_ref(tp));
        }
        if let Err(e) = consumer.seek(
            &tp.topic,
            tp.partition,
            rdkafka::Offset::Offset(offset),
            SEEK_TIMEOUT,
        ) {
            // Not read again from there: handling it now is the only way
            // not to skip it.
            tracing::warn!(group = %shared.group, partition = %tp, offset, %e, "cannot hold a message back until it is due; handling it now");
            return false;
        }
        state.delayed = Some(Instant::now() + wait);
        self.delayed += 1;
        true
    }

    /// Transactional mode: what handlers publish and the offsets they
    /// consumed commit together in `txn`.
    pub(crate) fn with_transaction(mut self, txn: Transaction) -> Self {
        self.txn = Some(txn);
        self
    }

    /// Opens the first transaction (initialising the producer's, which
    /// fences an older instance with the same `transactional.id`). Nothing
    /// to do without one.
    pub(crate) fn start(&self) -> Result<(), Error> {
        self.txn.as_ref().map_or(Ok(()), Transaction::begin)
    }

    /// Partitions whose messages fetched before now are stale (see
    /// `rewound`); the poll loop asks when [`Shared::rewinds`] moved.
    pub(crate) fn take_rewound(&mut self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.rewound)
    }

    /// Messages dispatched and not settled, over all partitions.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled
    }

    pub(crate) fn assign(
        &mut self,
        shared: &Shared,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) {
        for tp in partitions {
            // Fetched before this assignment: not part of it.
            self.rewound.push(tp.clone());
            self.next_epoch += 1;
            let epoch = self.next_epoch;
            self.partitions.entry(tp).or_insert_with(|| PartitionState {
                tracker: OffsetTracker::new(),
                gate: Gate::new(),
                epoch,
                paused: false,
                closing: false,
                stalled: false,
                held_since: None,
                delayed: None,
            });
        }
        shared
            .rewinds
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Runs `f` (dispatching and settling a poll round) inside the
    /// handlers' runtime, entered once for the whole round.
    pub(crate) fn in_runtime<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        Dispatcher::entered(self, |p| &mut p.dispatcher, f)
    }

    /// Hands a fetched message to its lane; pauses its partition (or all of
    /// them) when the buffers are full.
    pub(crate) fn dispatch<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        message: Message,
    ) {
        let (Some(partition), Some(offset)) = (message.partition(), message.offset()) else {
            return;
        };
        let tp = match self.last_tp.take() {
            // The poll loop interns topic names: the pointer decides.
            Some(tp)
                if tp.partition == partition && Arc::ptr_eq(&tp.topic, message.topic_arc()) =>
            {
                tp
            }
            _ => TopicPartition::new(message.topic_arc().clone(), partition),
        };
        self.dispatch_at(consumer, shared, message, &tp, offset);
        self.last_tp = Some(tp);
    }

    fn dispatch_at<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        mut message: Message,
        tp: &TopicPartition,
        offset: i64,
    ) {
        if self.not_before.is_some() {
            let Some(state) = self.partitions.get(tp) else {
                return;
            };
            if state.delayed.is_some() {
                return;
            }
            if self.hold_back(consumer, shared, tp, &message, offset) {
                return;
            }
        }
        let Some(state) = self.partitions.get_mut(tp) else {
            // Fetched before a revocation: the partition's new owner reads it.
            return;
        };
        if state.delayed.is_some() {
            // Fetched after a message held back: fetched again after it.
            return;
        }
        state.tracker.dispatched(offset);
        self.unsettled += 1;
        if let Some(txn) = &mut self.txn {
            txn.dispatched(tp, offset);
            if let Some(refused) = self
                .refused_outputs
                .iter_mut()
                .find(|r| r.tp == *tp && r.offset == offset)
            {
                if self.dispatcher.batches() {
                    let decision = *refused.decision.get_or_insert_with(|| {
                        shared.report(Error::Handler {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            offset,
                            source: refused.reason.to_string().into(),
                        })
                    });
                    settle_one(
                        state,
                        tp,
                        offset,
                        Settled::Failed(decision),
                        &mut self.unsettled,
                        &mut self.txn,
                        &mut self.pending,
                    );
                    return;
                }
                message
                    .extensions_mut()
                    .insert(OutputRefused(refused.reason.clone()));
            }
        }
        // Settled entries count too: behind one unfinished message they
        // pile up (`Order::PerKey`, `Unordered`) until it finishes.
        let full = state.tracker.tracked() >= self.limits.per_partition;
        if full && !state.paused {
            state.paused = true;
            pause(consumer, shared, std::slice::from_ref(tp));
        }
        let epoch = state.epoch;
        // Finished inline: settled right here, on the state at hand (no
        // completion to look its partition up again in `settle`).
        if let Some(settled) = self
            .dispatcher
            .dispatch(message, tp, offset, &state.gate, epoch)
        {
            settle_one(
                state,
                tp,
                offset,
                settled,
                &mut self.unsettled,
                &mut self.txn,
                &mut self.pending,
            );
        }
        if self.unsettled >= self.limits.total {
            let unpaused: Vec<TopicPartition> = self
                .partitions
                .iter_mut()
                .filter(|(_, s)| !s.paused)
                .map(|(tp, s)| {
                    s.paused = true;
                    tp.clone()
                })
                .collect();
            pause(consumer, shared, &unpaused);
        }
    }

    /// Applies every completion received so far: counts outcomes, stores the
    /// new watermarks (one librdkafka call), commits them in manual mode,
    /// releases lanes waiting for that commit, resumes drained partitions.
    pub(crate) fn settle<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
    ) {
        self.settle_with(consumer, shared, None);
    }

    fn settle_with<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        first: Option<Report>,
    ) {
        self.dispatcher.flush(&mut self.finished_inline);
        // Drains settle without polling: that is progress too.
        shared.board.progress();
        let mut settlement = std::mem::take(&mut self.pending);
        // Kept (with its capacity) for the next round's batches.
        let mut done = std::mem::take(&mut self.finished_inline);
        self.apply_all(done.drain(..), &mut settlement);
        self.finished_inline = done;
        let mut next = first;
        while let Some(report) = next.take().or_else(|| self.completions.try_recv().ok()) {
            match report {
                Report::Completed(c) => self.apply_all(std::iter::once(c), &mut settlement),
                Report::Batch(batch) => self.apply_all(batch.into_iter(), &mut settlement),
                Report::Claim(claim) => settlement.claims.push(claim),
            }
        }
        if settlement.changed.is_empty()
            && settlement.acks.is_empty()
            && settlement.claims.is_empty()
        {
            return;
        }
        {
            let mut ledger = shared.ledger();
            ledger.succeeded += settlement.succeeded;
            ledger.skipped += settlement.skipped;
            ledger.failed += settlement.failed;
            ledger.failed_skipped += settlement.failed_skipped;
        }
        self.commit_claims(consumer, shared, std::mem::take(&mut settlement.claims));
        // Transactional: offsets go into the transaction at its end, not to
        // librdkafka's store.
        if !matches!(
            self.commit_mode,
            CommitMode::AtMostOnce | CommitMode::Transactional
        ) {
            let marks: Vec<(TopicPartition, i64)> = settlement
                .changed
                .iter()
                .filter_map(|tp| {
                    let state = self.partitions.get_mut(tp)?;
                    state.tracker.advance().map(|mark| (tp.clone(), mark))
                })
                .collect();
            let stored = store_batch(consumer, shared, &marks);
            if self.commit_mode == CommitMode::Manual {
                commit_sync(consumer, shared, stored);
            }
        }
        for ack in settlement.acks {
            let _ = ack.send(());
        }
        self.resume_drained(consumer, shared);
    }

    /// Reports each partition paused at its bound behind the same
    /// unfinished message for `stall_after` (once per stall): it cannot
    /// resume before that message finishes, since what is tracked only
    /// shrinks from the front. Waiting its turn (behind its key, for a
    /// permit) is ordinary backpressure, over in a few handler calls: only
    /// a message unfinished for that long is a stall. The poll loop calls
    /// this with the status publication.
    pub(crate) fn report_stalls(&mut self, shared: &Shared) {
        let now = Instant::now();
        for (tp, state) in self.partitions.iter_mut() {
            if !state.paused || state.closing || state.stalled {
                if !state.paused {
                    state.held_since = None;
                }
                continue;
            }
            let held = state
                .tracker
                .held()
                // Not about to resume (`resume_drained`).
                .filter(|_| state.tracker.tracked() > self.limits.per_partition / 2);
            let Some((offset, behind)) = held else {
                state.held_since = None;
                continue;
            };
            let since = match state.held_since {
                Some((o, since)) if o == offset => since,
                _ => {
                    state.held_since = Some((offset, now));
                    now
                }
            };
            if now.duration_since(since) < self.limits.stall_after {
                continue;
            }
            state.stalled = true;
            tracing::warn!(group = %shared.group, partition = %tp, offset, behind, "partition stalled behind an unfinished message");
            #[cfg(feature = "metrics")]
            if let Some(metrics) = &shared.metrics {
                metrics.record_stall(&tp.topic, tp.partition, Some(offset));
            }
            shared.report(Error::Stalled {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                behind,
            });
        }
    }

    /// At-most-once: commits one past the highest claimed offset of each
    /// partition (not the watermark: a lower message still queued in another
    /// lane must not be read twice either), then lets the claiming lanes go.
    fn commit_claims<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        claims: Vec<Claim>,
    ) {
        if claims.is_empty() {
            return;
        }
        let mut next: HashMap<TopicPartition, i64> = HashMap::new();
        let mut granted = Vec::with_capacity(claims.len());
        for claim in claims {
            // A claim for an assignment we no longer hold is refused: its
            // sender drops and the lane skips the message.
            if self
                .partitions
                .get(&claim.tp)
                .is_some_and(|s| s.epoch == claim.epoch)
            {
                let entry = next.entry(claim.tp.clone()).or_insert(claim.offset + 1);
                *entry = (*entry).max(claim.offset + 1);
                granted.push(claim);
            }
        }
        let offsets: Vec<(TopicPartition, i64)> = {
            let ledger = shared.ledger();
            next.into_iter()
                .filter(|(tp, off)| ledger.stored.get(tp).is_none_or(|s| s < off))
                .collect()
        };
        let stored = store_batch(consumer, shared, &offsets);
        let all_stored = stored.len() == offsets.len();
        if all_stored && commit_sync(consumer, shared, stored) {
            for claim in granted {
                let _ = claim.committed.send(());
            }
        }
    }

    /// Applies completions. They come in runs of one partition (a batch, a
    /// lane's round): each run's partition is looked up once.
    fn apply_all(
        &mut self,
        completions: impl Iterator<Item = Completion>,
        settlement: &mut Settlement,
    ) {
        let mut completions = completions.peekable();
        while let Some(c) = completions.next() {
            if let Some(ack) = c.committed {
                settlement.acks.push(ack);
            }
            // `None`: a late report for an assignment we no longer hold
            // (its lane still gets its acknowledgement).
            let mut state = self
                .partitions
                .get_mut(&c.tp)
                .filter(|s| s.epoch == c.epoch);
            if let Some(state) = state.as_deref_mut() {
                settle_one(
                    state,
                    &c.tp,
                    c.offset,
                    c.settled,
                    &mut self.unsettled,
                    &mut self.txn,
                    settlement,
                );
            }
            while let Some(next) = completions.next_if(|n| n.epoch == c.epoch && n.tp == c.tp) {
                if let Some(ack) = next.committed {
                    settlement.acks.push(ack);
                }
                if let Some(state) = state.as_deref_mut() {
                    settle_one(
                        state,
                        &next.tp,
                        next.offset,
                        next.settled,
                        &mut self.unsettled,
                        &mut self.txn,
                        settlement,
                    );
                }
            }
        }
    }

    fn resume_drained<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, shared: &Shared) {
        if self.unsettled > self.limits.total / 2 {
            return;
        }
        let low = self.limits.per_partition / 2;
        let drained: Vec<TopicPartition> = self
            .partitions
            .iter_mut()
            .filter(|(_, s)| {
                s.paused && !s.closing && s.delayed.is_none() && s.tracker.tracked() <= low
            })
            .map(|(tp, s)| {
                s.paused = false;
                if std::mem::take(&mut s.stalled) {
                    tracing::info!(group = %shared.group, partition = %tp, "stalled partition flows again");
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = &shared.metrics {
                        metrics.record_stall(&tp.topic, tp.partition, None);
                    }
                }
                tp.clone()
            })
            .collect();
        if drained.is_empty() {
            return;
        }
        let tpl = tpl_of(&drained);
        if let Err(e) = consumer.resume(&tpl) {
            shared.report(Error::kafka(Operation::Poll, e));
        }
    }

    /// Waits (settling as completions arrive) until no handler of
    /// `partitions` (all when `None`) is running, or `deadline`.
    fn drain<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        partitions: Option<&BTreeSet<TopicPartition>>,
        deadline: Instant,
    ) {
        loop {
            let running: usize = self
                .partitions
                .iter()
                .filter(|(tp, _)| partitions.is_none_or(|set| set.contains(*tp)))
                .map(|(_, s)| s.gate.running())
                .sum();
            let now = Instant::now();
            if running == 0 || now >= deadline {
                self.settle(consumer, shared);
                return;
            }
            let wait = (deadline - now).min(DRAIN_TICK);
            let first = self.completions.recv_timeout(wait).ok();
            self.settle_with(consumer, shared, first);
        }
    }

    /// A clean revocation: stop dispatching the partitions, let their running
    /// handlers finish within `grace`, store and commit their watermarks.
    /// A lost partition is dropped without waiting or committing: another
    /// member may own it already.
    pub(crate) fn revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        partitions: &BTreeSet<TopicPartition>,
        lost: bool,
        grace: Duration,
    ) {
        if self.txn.is_some() {
            self.revoke_transactional(consumer, shared, partitions, lost, grace);
            return;
        }
        let mut unpaused = Vec::new();
        for tp in partitions {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.gate.close();
                state.closing = true;
                if !state.paused {
                    state.paused = true;
                    unpaused.push(tp.clone());
                }
            }
        }
        pause(consumer, shared, &unpaused);
        if !lost {
            self.drain(consumer, shared, Some(partitions), Instant::now() + grace);
            let pending = shared.ledger().uncommitted(Some(partitions));
            commit_sync(consumer, shared, pending);
        }
        for tp in partitions {
            if let Some(state) = self.partitions.remove(tp) {
                if state.delayed.is_some() {
                    self.delayed -= 1;
                }
                self.unsettled -= state.tracker.unsettled();
            }
            self.dispatcher.close_partition(tp);
        }
    }

    /// Shutdown: stop dispatching everything, let running handlers finish
    /// until `deadline`, then abort the rest. Returns how many were aborted.
    ///
    /// Transactional: every dispatched message may finish (queued ones
    /// too) until `deadline`; if all did and none failed the consumer for
    /// good, the transaction is to be committed with their offsets, else
    /// aborted ([`take_ending`](Self::take_ending); the close thread does
    /// it, before the consumer leaves its group).
    pub(crate) fn stop<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        deadline: Instant,
    ) -> u64 {
        let complete = if self.txn.is_some() {
            let all: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
            self.pause_closing(consumer, shared, all.iter());
            self.barrier_within(consumer, shared, deadline, false)
        } else {
            false
        };
        let mut unpaused = Vec::new();
        for (tp, state) in self.partitions.iter_mut() {
            state.gate.close();
            state.closing = true;
            if !state.paused {
                state.paused = true;
                unpaused.push(tp.clone());
            }
        }
        pause(consumer, shared, &unpaused);
        self.drain(consumer, shared, None, deadline);
        let abandoned: usize = self.partitions.values().map(|s| s.gate.running()).sum();
        self.dispatcher.abort_all();
        // Lanes waiting for a manual commit are gone with the abort.
        self.settle(consumer, shared);
        if let Some(transaction) = self.txn.take() {
            let commit =
                (complete && !transaction.poisoned).then(|| self.transaction_offsets(&transaction));
            self.ending = Some(Ending {
                transaction,
                commit,
            });
        }
        abandoned as u64
    }

    /// Whether the consumer is transactional.
    pub(crate) fn is_transactional(&self) -> bool {
        self.txn.is_some()
    }

    /// Transactional: whether the open transaction holds as many messages
    /// as it may.
    pub(crate) fn transaction_full(&self) -> bool {
        self.txn.as_ref().is_some_and(Transaction::full)
    }

    /// Transactional: how long until the open transaction is due, for the
    /// poll's timeout (an idle poll would otherwise end it up to 100 ms
    /// late).
    pub(crate) fn transaction_due_in(&self) -> Option<Duration> {
        self.txn.as_ref().and_then(Transaction::due_in)
    }

    /// Transactional: whether the open transaction's window is full (see
    /// [`Transaction`]): no message may be dispatched into it before one
    /// settles.
    pub(crate) fn transaction_window_full(&mut self) -> bool {
        let floor = 2 * self.dispatcher.capacity();
        let unsettled = self.unsettled;
        match self.txn.as_mut() {
            Some(txn) if unsettled >= txn.window(floor) => {
                txn.window_hit();
                true
            }
            _ => false,
        }
    }

    /// Waits up to `wait` for a completion and settles what arrived (lanes
    /// get what was dispatched to them first).
    pub(crate) fn await_completion<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        wait: Duration,
    ) {
        self.settle(consumer, shared);
        let first = self.completions.recv_timeout(wait).ok();
        self.settle_with(consumer, shared, first);
    }

    /// Transactional: whether the open transaction should end now.
    pub(crate) fn transaction_due(&self) -> bool {
        self.txn.as_ref().is_some_and(Transaction::due)
    }

    /// Transactional: ends the open transaction at a barrier — once every
    /// message dispatched in it has settled — by committing it with their
    /// offsets, and opens the next. Handlers that do not finish within the
    /// transaction timeout abort it instead (see `abort_transaction`).
    pub(crate) fn end_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
    ) {
        let Some(timeout) = self
            .txn
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(Transaction::timeout)
        else {
            return;
        };
        if self.barrier(consumer, shared, Instant::now() + timeout) {
            self.commit_transaction(consumer, shared);
        } else if shared.shutdown.is_shutting_down() {
            // Stopping: `stop` waits within the shutdown's bound and ends
            // the transaction itself.
        } else if !self.txn.as_ref().is_some_and(|t| t.poisoned) {
            let running = self.unsettled;
            self.abort_transaction(
                consumer,
                shared,
                None,
                Some(Error::Transactional(format!(
                    "{running} message(s) were still being handled {timeout:?} after the \
                     transaction was due; it was aborted, and everything it read will be \
                     handled again"
                ))),
            );
        }
        // Poisoned: a failure the error handler stopped on; the consumer is
        // stopping, and the transaction is aborted at the end.
    }

    /// Waits, settling, until every dispatched message has settled (`true`),
    /// or `deadline`, or a failure poisoned the transaction (`false`).
    /// Partial batches are handed to their handlers now rather than at the
    /// end of their window.
    /// A shutdown requested meanwhile ends the wait too (`false`): `stop`
    /// waits again, within the shutdown's own bound.
    fn barrier<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        deadline: Instant,
    ) -> bool {
        self.barrier_within(consumer, shared, deadline, true)
    }

    fn barrier_within<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        deadline: Instant,
        until_shutdown: bool,
    ) -> bool {
        self.dispatcher.close_batches();
        self.settle(consumer, shared);
        loop {
            if self.txn.as_ref().is_some_and(|t| t.poisoned) {
                return false;
            }
            if until_shutdown && self.unsettled > 0 && shared.shutdown.is_shutting_down() {
                return false;
            }
            if self.unsettled == 0 {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let first = self
                .completions
                .recv_timeout((deadline - now).min(DRAIN_TICK))
                .ok();
            self.settle_with(consumer, shared, first);
        }
    }

    /// The next offset to read of each partition the transaction read.
    fn transaction_offsets(&self, txn: &Transaction) -> Vec<(TopicPartition, i64)> {
        txn.partitions()
            .filter_map(|tp| Some((tp.clone(), self.partitions.get(tp)?.tracker.watermark()?)))
            .collect()
    }

    /// Commits the open transaction (after a barrier) and opens the next;
    /// an abortable failure aborts and rewinds, a fatal one (fenced) stops
    /// the consumer. Returns whether it committed.
    fn commit_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
    ) -> bool {
        let Some(txn) = self.txn.as_ref() else {
            return true;
        };
        let offsets = self.transaction_offsets(txn);
        let Some(txn) = self.txn.as_mut() else {
            return true;
        };
        let timeout = txn.timeout();
        let isolating = txn.is_isolating();
        let mut attempt = 1;
        let committed = loop {
            match txn.commit(consumer, &offsets, timeout) {
                // Out of time while librdkafka goes on with the commit: the
                // same call resumes it (an abort would be refused).
                Err(err) if crate::producer::is_resumable(&err) && attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(group = %shared.group, %err, attempt, "transaction commit ran out of time; resuming it");
                    attempt += 1;
                }
                other => break other,
            }
        };
        if isolating && !txn.is_isolating() && committed.is_ok() {
            // The search ended without finding a culprit: the failures
            // were passing ones.
            #[cfg(feature = "metrics")]
            if let (Some(metrics), Some((tp, _))) = (&shared.metrics, offsets.first()) {
                metrics.record_isolation(&tp.topic, false);
            }
        }
        match committed {
            Ok(()) => {
                {
                    let mut ledger = shared.ledger();
                    ledger.transactions_committed += 1;
                    for (tp, offset) in &offsets {
                        ledger.mark_committed(tp, *offset);
                    }
                }
                if !self.refused_outputs.is_empty() {
                    self.refused_outputs.retain(|r| {
                        !offsets
                            .iter()
                            .any(|(tp, next)| *tp == r.tp && *next > r.offset)
                    });
                }
                if let Err(err) = txn.begin() {
                    shared.stop_with(err);
                }
                true
            }
            Err(err) if err.is_fatal() || err.is_fenced() || txn.is_failed() => {
                tracing::error!(group = %shared.group, %err, "transaction fenced or failed for good; stopping");
                shared.stop_with(err);
                false
            }
            Err(err) if crate::producer::is_resumable(&err) => {
                // Neither committed nor abortable (librdkafka is still
                // committing): stop, without rewinding. The broker ends
                // the transaction; the next instance fences this one.
                tracing::error!(group = %shared.group, %err, attempts = COMMIT_ATTEMPTS, "transaction commit did not finish; stopping");
                shared.stop_with(Error::Transactional(format!(
                    "the transaction commit did not finish after {COMMIT_ATTEMPTS} attempts of \
                     {timeout:?} ({err}); the consumer stopped, and the transaction's messages \
                     will be read again by the next instance"
                )));
                false
            }
            Err(err) => {
                match txn.commit_failed() {
                    AfterFailure::Abort => {
                        self.abort_transaction(consumer, shared, None, Some(err))
                    }
                    AfterFailure::Isolated(tp, offset) => {
                        self.abort_transaction(consumer, shared, None, None);
                        #[cfg(feature = "metrics")]
                        if let Some(metrics) = &shared.metrics {
                            metrics.record_isolation(&tp.topic, true);
                        }
                        tracing::error!(group = %shared.group, partition = %tp, offset, %err, "a message's output cannot be committed, even alone in a transaction");
                        let reason = format!(
                            "its output cannot be committed: every transaction holding it \
                             aborted, the last one holding it alone ({err})"
                        );
                        self.refused_outputs.push(RefusedOutput {
                            tp,
                            offset,
                            reason: reason.into(),
                            decision: None,
                        });
                    }
                }
                false
            }
        }
    }

    /// Aborts the open transaction: drops every running handler first (what
    /// it would publish next must not land in the next transaction), then
    /// reads each partition the transaction read again from its first
    /// message in it (except `leaving`: partitions being revoked, which
    /// their next owner reads from the committed offset), and opens the
    /// next transaction. `cause` goes to the error handler, whose decision
    /// stands; when the abort itself fails the consumer stops.
    fn abort_transaction<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        leaving: Option<&BTreeSet<TopicPartition>>,
        cause: Option<Error>,
    ) {
        self.dispatcher.abort_all();
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        let timeout = txn.timeout();
        let (mut rewind, aborted) = txn.abort(timeout);
        if let Err(err) = aborted {
            // Not aborted: reading its messages again here could put their
            // output beside theirs. Stop; the broker aborts it after the
            // transaction timeout, or the next instance fences it.
            tracing::error!(group = %shared.group, %err, "transaction could not be aborted; stopping");
            if let Some(cause) = cause {
                shared.report(cause);
            }
            shared.stop_with(err);
            return;
        }
        let reopened = txn.begin();
        shared.ledger().transactions_aborted += 1;
        if let Some(leaving) = leaving {
            rewind.retain(|(tp, _)| !leaving.contains(tp));
        }
        tracing::warn!(group = %shared.group, partitions = rewind.len(), "transaction aborted; reading its messages again");
        self.rewind(consumer, shared, &rewind);
        if let Some(cause) = cause {
            shared.report(cause);
        }
        if let Err(err) = reopened {
            shared.stop_with(err);
        }
    }

    /// Reads each partition again from `offset`: a fresh tracker and gate
    /// (a new epoch: late reports of the old one are ignored), and a seek.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        points: &[(TopicPartition, i64)],
    ) {
        let mut tpl = TopicPartitionList::with_capacity(points.len());
        for (tp, offset) in points {
            let Some(state) = self.partitions.get_mut(tp) else {
                continue;
            };
            self.unsettled -= state.tracker.unsettled();
            state.gate.close();
            self.next_epoch += 1;
            state.tracker = OffsetTracker::new();
            state.gate = Gate::new();
            state.epoch = self.next_epoch;
            state.stalled = false;
            state.held_since = None;
            if state.delayed.take().is_some() {
                self.delayed -= 1;
            }
            self.dispatcher.close_partition(tp);
            let _ =
                tpl.add_partition_offset(&tp.topic, tp.partition, rdkafka::Offset::Offset(*offset));
            self.rewound.push(tp.clone());
        }
        shared
            .rewinds
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if tpl.count() == 0 {
            return;
        }
        let failed = match consumer.seek_partitions(tpl, SEEK_TIMEOUT) {
            Ok(result) => result.elements().iter().find_map(|e| {
                e.error()
                    .err()
                    .map(|err| (e.topic().to_owned(), e.partition(), err))
            }),
            Err(err) => Some((String::new(), -1, err)),
        };
        if let Some((topic, partition, err)) = failed {
            // Reading on from where it was would skip the aborted messages.
            tracing::error!(group = %shared.group, topic, partition, %err, "cannot rewind after an aborted transaction; stopping");
            shared.stop_with(Error::kafka(Operation::AbortTransaction, err));
        }
    }

    /// Pauses `partitions` and marks them closing (they stay paused), for
    /// a transactional revoke or stop.
    fn pause_closing<'a, C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        partitions: impl Iterator<Item = &'a TopicPartition>,
    ) {
        let mut unpaused = Vec::new();
        for tp in partitions {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.closing = true;
                if !state.paused {
                    state.paused = true;
                    unpaused.push(tp.clone());
                }
            }
        }
        pause(consumer, shared, &unpaused);
    }

    /// A transactional revocation. The transaction holds the output of
    /// every partition's messages, so it ends here: at a barrier within
    /// `grace`, committed with every partition's offsets (the revoked ones'
    /// last); if handlers do not finish in time, aborted and rewound. A lost
    /// partition may be another member's already: the transaction is
    /// aborted without waiting.
    fn revoke_transactional<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        partitions: &BTreeSet<TopicPartition>,
        lost: bool,
        grace: Duration,
    ) {
        self.pause_closing(consumer, shared, partitions.iter());
        let open = self.txn.as_ref().is_some_and(|t| !t.is_empty());
        if open && lost {
            self.abort_transaction(consumer, shared, Some(partitions), None);
        } else if open && self.barrier_within(consumer, shared, Instant::now() + grace, false) {
            self.commit_transaction(consumer, shared);
        } else if open && !self.txn.as_ref().is_some_and(|t| t.poisoned) {
            let running = self.unsettled;
            self.abort_transaction(
                consumer,
                shared,
                Some(partitions),
                Some(Error::Transactional(format!(
                    "{running} message(s) were still being handled when the revoke grace \
                     ({grace:?}) ran out; the transaction was aborted, and what it read will be \
                     handled again (by this member or the partitions' new owner)"
                ))),
            );
        }
        for tp in partitions {
            if let Some(state) = self.partitions.remove(tp) {
                if state.delayed.is_some() {
                    self.delayed -= 1;
                }
                state.gate.close();
                self.unsettled -= state.tracker.unsettled();
            }
            self.dispatcher.close_partition(tp);
        }
    }
}

/// Applies a finished message of the assignment `state` is: counts its
/// outcome, settles its offset unless its failure holds it, notes the
/// partition as changed.
fn settle_one(
    state: &mut PartitionState,
    tp: &TopicPartition,
    offset: i64,
    settled: Settled,
    unsettled: &mut usize,
    txn: &mut Option<Transaction>,
    settlement: &mut Settlement,
) {
    let settle = match settled {
        Settled::Done(Ack::Success) => {
            settlement.succeeded += 1;
            true
        }
        Settled::Done(Ack::Skip) => {
            settlement.skipped += 1;
            true
        }
        Settled::Failed(Decision::Continue) => {
            settlement.failed += 1;
            settlement.failed_skipped += 1;
            true
        }
        // Held: the watermark stays at this offset for good.
        Settled::Failed(Decision::Stop) => {
            settlement.failed += 1;
            if let Some(txn) = txn {
                txn.poisoned = true;
            }
            false
        }
    };
    if settle && state.tracker.settled(offset) {
        *unsettled -= 1;
    }
    // Completions come in runs of one partition; `==` on the `Arc`'d topic
    // is a pointer comparison, the set's ordering is not.
    if settlement.last_changed.as_ref() != Some(tp) {
        settlement.changed.insert(tp.clone());
        settlement.last_changed = Some(tp.clone());
    }
}

fn tpl_of(partitions: &[TopicPartition]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    tpl
}

fn pause<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    shared: &Shared,
    partitions: &[TopicPartition],
) {
    if partitions.is_empty() {
        return;
    }
    if let Err(e) = consumer.pause(&tpl_of(partitions)) {
        shared.report(Error::kafka(Operation::Poll, e));
    }
}

/// Step-by-step tests of the poll thread's side, without a broker: the test
/// thread plays the poll thread, handlers run on a runtime of their own, and
/// lanes' reports are injected where a race would put them. The client is
/// real but never connects (nothing listens at its address): pause, resume
/// and store calls go to librdkafka locally.
#[cfg(test)]
mod tests {
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
            super::super::Order::PerPartition,
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
        use super::super::poll_loop::{DISPATCH_EVERY, POLL_BATCH as ROUND};
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
                    super::super::Order::PerPartition,
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
}
