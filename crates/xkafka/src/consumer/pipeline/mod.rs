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

mod backpressure;
mod hold;
mod revoke;
mod settle;
mod status;
#[cfg(test)]
mod tests;
mod transaction;

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
