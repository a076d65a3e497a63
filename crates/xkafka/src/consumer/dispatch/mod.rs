//! Lanes: how messages reach handlers under `Concurrency(N)` and an
//! ordering mode, off the poll thread.
//!
//! A lane is a tokio task that handles its messages one after another. Which
//! lane a message goes to decides the ordering: one lane per partition keeps
//! partition order; one lane per (partition, key slot) keeps key order while
//! the keys of one partition run in parallel; unordered lanes take any
//! message. N permits bound how many handlers run at once.
//!
//! Two fast paths keep the common case on the poll thread: a message (or a
//! batch, assembled here per lane) whose lane is idle runs right away, and
//! only a handler that actually waits moves to its lane's task.
//!
//! Here: the [`Dispatcher`] (lane choice, hand-over once per poll round,
//! closing a revoked partition's lanes) and the items it exchanges with the
//! lanes and the pipeline. One concept per file besides:
//! - `gate.rs`: one assignment of one partition, entered by its handlers;
//! - `inline.rs`: the fast path on the poll thread;
//! - `batch.rs`: batch assembly and batches in their lanes;
//! - `lane.rs`: a lane's task, and how an outcome is settled and reported;
//! - `permits.rs`: the N permits, granted to the busiest waiting lane.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as Atomic};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::offsets::TopicPartition;
use super::shared::Shared;
use crate::error::{Decision, Error};
use crate::producer::fence::{self, Fence};
use crate::{Ack, BoxError, Message};
use xkafka_core::middleware::recover::Panicked;
use xkafka_core::Batch;

mod batch;
mod gate;
mod inline;
mod lane;
mod permits;

use batch::*;
pub(crate) use gate::Gate;
use inline::*;
use lane::*;
use permits::{OwnedPermit, Permits};

/// Which messages may be handled in parallel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// Messages of one partition are handled one after another, in offset
    /// order; different partitions run in parallel (up to the concurrency).
    #[default]
    PerPartition,
    /// Messages with the same key are handled in offset order; different
    /// keys of the same partition run in parallel. Keyless messages keep
    /// their partition's order among themselves.
    PerKey,
    /// Any message may run in parallel with any other (Go xkafka's
    /// behaviour), for handlers that do not care about order. A message
    /// goes to an idle lane when there is one, never behind a slow one.
    Unordered,
}

/// A message on its way to a lane.
pub(crate) struct Work {
    pub(crate) message: Message,
    pub(crate) tp: TopicPartition,
    pub(crate) offset: i64,
    pub(crate) gate: Arc<Gate>,
    pub(crate) epoch: u64,
    /// Transactional: the generation of the transaction it was dispatched
    /// in (see `producer/fence.rs`).
    pub(crate) txn: Option<u64>,
}

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    Done(Ack),
    /// Failed; the error handler already decided.
    Failed(Decision),
}

/// What lanes tell the poll thread.
pub(crate) enum Report {
    /// A message finished.
    Completed(Completion),
    /// The messages of a batch finished: one send (and one wake-up of the
    /// poll thread) per batch, not per message.
    Batch(Vec<Completion>),
    /// At-most-once: a lane is about to handle a message and waits for its
    /// offset to be committed first (the sender is dropped if that fails).
    Claim(Claim),
}

pub(crate) struct Claim {
    pub(crate) tp: TopicPartition,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) committed: oneshot::Sender<()>,
}

/// How a lane waits for the commit it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitWait {
    /// Never (automatic commits).
    None,
    /// After each message, before the next one (manual commit).
    After,
    /// Before each message (at-most-once).
    Before,
    /// Never, but every dispatched message is handled even while stopping:
    /// a transaction ends only once all of them finished (see
    /// `Pipeline::barrier`), so none may be left queued for nobody.
    Transaction,
}

/// A lane's report that a message finished.
pub(crate) struct Completion {
    pub(crate) tp: TopicPartition,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) settled: Settled,
    /// Set when the lane waits for the offset to be committed before its
    /// next message (manual commit).
    pub(crate) committed: Option<oneshot::Sender<()>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Partition(TopicPartition),
    Slot(TopicPartition, u64),
    Keyless(TopicPartition),
    Global(u64),
}

impl LaneKey {
    fn partition(&self) -> Option<&TopicPartition> {
        match self {
            LaneKey::Partition(tp) | LaneKey::Slot(tp, _) | LaneKey::Keyless(tp) => Some(tp),
            LaneKey::Global(_) => None,
        }
    }
}

struct Lane {
    tx: mpsc::UnboundedSender<Vec<LaneItem>>,
    /// Items of this poll round, sent together by `flush`: one wake-up of
    /// the lane per round rather than one per message.
    pending: Vec<LaneItem>,
    task: AbortHandle,
    /// Items sent to the lane and not finished yet: the inline fast path
    /// may only run a message of this lane when it is zero (order).
    busy: Arc<AtomicUsize>,
}

/// What a lane receives.
enum LaneItem {
    Work(Work),
    /// A handler call started inline on the poll thread that did not finish
    /// at once: the lane completes it before anything else.
    Resume(Resume),
    /// A batch, complete (full, or its window expired) — batch lanes only.
    Batch(Works),
    /// A batch handler call started inline that did not finish at once.
    ResumeBatch(BatchResume),
}

struct BatchResume {
    future: BoxFuture<'static, Result<Ack, BoxError>>,
    batch: Batch,
    origins: Origins,
    txn: Option<u64>,
    _permit: OwnedPermit,
}

/// A batch being filled on the poll thread.
struct Filling {
    works: Works,
    /// The window ends here: it started with the batch's first message.
    deadline: Instant,
}

struct Resume {
    future: BoxFuture<'static, Result<Ack, BoxError>>,
    tp: TopicPartition,
    offset: i64,
    epoch: u64,
    txn: Option<u64>,
    gate: Arc<Gate>,
    _permit: OwnedPermit,
}

/// What a lane does with its messages.
// `pub` (in a private module) because the sealed `Kind` trait names it.
#[derive(Clone)]
#[allow(unreachable_pub)]
pub enum Runner {
    /// One message at a time through the handler stack.
    Single(BoxCloneService<Message, Ack, BoxError>),
    /// Batches of up to `size` messages, or what arrived within `window`
    /// of the batch's first message.
    Batch {
        service: BoxCloneService<Batch, Ack, BoxError>,
        size: usize,
        window: Duration,
    },
}

/// What every lane shares.
#[derive(Clone)]
struct LaneContext {
    permits: Arc<Permits>,
    completions: std_mpsc::Sender<Report>,
    shared: Arc<Shared>,
    commit_wait: CommitWait,
    /// Transactional: the producer's fence between transactions.
    fence: Option<Arc<Fence>>,
}

impl LaneContext {
    /// Transactional: the generation of the open transaction, which a
    /// message dispatched now belongs to.
    fn generation(&self) -> Option<u64> {
        self.fence.as_ref().map(|f| f.generation())
    }

    /// Whether a handler of generation `txn` belongs to a transaction that
    /// aborted: its message is read and handled again, so its outcome is
    /// nobody's concern (its failure is not reported).
    fn aborted(&self, txn: Option<u64>) -> bool {
        txn.zip(self.fence.as_ref())
            .is_some_and(|(g, fence)| fence.is_aborted(g))
    }

    /// Whether a message not started yet is left unhandled: once stopping
    /// (our next run reads it), except in a transaction, which ends only
    /// when every dispatched message finished.
    fn stopping(&self) -> bool {
        self.commit_wait != CommitWait::Transaction && self.shared.shutdown.is_shutting_down()
    }
}

pub(crate) struct Dispatcher {
    order: Order,
    concurrency: usize,
    runtime: tokio::runtime::Handle,
    runner: Runner,
    lanes: FxHashMap<LaneKey, Lane>,
    context: LaneContext,
    next_global: u64,
    /// The handler stack for the inline fast path (streaming consumers with
    /// automatic commits only).
    inline: Option<BoxCloneService<Message, Ack, BoxError>>,
    /// The same for batch consumers with automatic commits.
    inline_batch: Option<BoxCloneService<Batch, Ack, BoxError>>,
    /// Batches being filled, per lane.
    filling: FxHashMap<LaneKey, Filling>,
    /// Batches complete since the last flush, in completion order.
    ready: Vec<(LaneKey, Works)>,
    /// The poll thread is in the handlers' runtime already (see
    /// [`Dispatcher::entered`]): inline calls need not enter it each.
    entered: bool,
}

impl Dispatcher {
    /// Whether handlers take batches (else one message each).
    pub(crate) fn batches(&self) -> bool {
        matches!(self.runner, Runner::Batch { .. })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        order: Order,
        concurrency: usize,
        runtime: tokio::runtime::Handle,
        runner: Runner,
        completions: std_mpsc::Sender<Report>,
        shared: Arc<Shared>,
        commit_wait: CommitWait,
    ) -> Self {
        let concurrency = concurrency.max(1);
        Dispatcher {
            order,
            concurrency,
            runtime,
            runner,
            lanes: FxHashMap::default(),
            context: LaneContext {
                permits: Arc::new(Permits::new(concurrency)),
                completions,
                shared,
                commit_wait,
                fence: None,
            },
            next_global: 0,
            inline: None,
            inline_batch: None,
            filling: FxHashMap::default(),
            ready: Vec::new(),
            entered: false,
        }
        .with_inline()
    }

    /// Runs `f` inside the handlers' runtime, entered once for all the
    /// inline calls `f` makes rather than once per call (a thread-local
    /// swap each time, a visible share of the poll thread's time).
    pub(crate) fn entered<T, R>(
        owner: &mut T,
        this: impl Fn(&mut T) -> &mut Self,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let dispatcher = this(owner);
        if dispatcher.entered {
            return f(owner);
        }
        let runtime = dispatcher.runtime.clone();
        let _runtime = runtime.enter();
        dispatcher.entered = true;
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut *owner)));
        this(owner).entered = false;
        done.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// How many messages the handlers can work on at once: the
    /// concurrency, times the batch size for batch consumers.
    pub(crate) fn capacity(&self) -> usize {
        match self.runner {
            Runner::Single(_) => self.concurrency,
            Runner::Batch { size, .. } => self.concurrency.saturating_mul(size.max(1)),
        }
    }

    /// Transactional: stamps every handler call with the generation of
    /// the transaction its message was dispatched in, so that the producer
    /// refuses what it publishes once that transaction ended.
    pub(crate) fn with_fence(mut self, fence: Option<Arc<Fence>>) -> Self {
        self.context.fence = fence;
        self
    }

    fn with_inline(mut self) -> Self {
        // With manual commits or at-most-once, lanes wait for commits
        // around each call: those stay in the lanes.
        if matches!(
            self.context.commit_wait,
            CommitWait::None | CommitWait::Transaction
        ) {
            match &self.runner {
                Runner::Single(service) => self.inline = Some(service.clone()),
                Runner::Batch { service, .. } => self.inline_batch = Some(service.clone()),
            }
        }
        self
    }

    fn lane_key(&mut self, message: &Message, tp: &TopicPartition) -> LaneKey {
        self.lane_key_of(message.key(), tp)
    }

    fn lane_key_of(&mut self, key: Option<&bytes::Bytes>, tp: &TopicPartition) -> LaneKey {
        match self.order {
            Order::PerPartition => LaneKey::Partition(tp.clone()),
            Order::PerKey => match key {
                // Same key, same slot: key order holds; N slots per partition
                // are enough to keep N handlers busy.
                Some(key) => {
                    let mut h = DefaultHasher::new();
                    key.hash(&mut h);
                    LaneKey::Slot(tp.clone(), h.finish() % self.concurrency as u64)
                }
                None => LaneKey::Keyless(tp.clone()),
            },
            Order::Unordered => LaneKey::Global(self.least_busy_global()),
        }
    }

    /// The unordered lane for the next message: the first idle one from
    /// where the last search stopped (round robin while all are idle), else
    /// the least busy. Taken in turns whatever their load, a message could
    /// wait behind a slow one while another lane sat idle. Batches keep
    /// plain turns: a lane's batch is only counted busy once sent, so every
    /// message of a round would fill the same one.
    fn least_busy_global(&mut self) -> u64 {
        let n = self.concurrency as u64;
        let start = self.next_global;
        let mut chosen = start % n;
        if matches!(self.runner, Runner::Single(_)) {
            let mut least = usize::MAX;
            for step in 0..n {
                let lane = (start + step) % n;
                let busy = self
                    .lanes
                    .get(&LaneKey::Global(lane))
                    .map_or(0, |l| l.busy.load(Atomic::Acquire));
                if busy < least {
                    (chosen, least) = (lane, busy);
                    if busy == 0 {
                        break;
                    }
                }
            }
        }
        self.next_global = (chosen + 1) % n;
        chosen
    }

    /// Hands a message to its lane, or — when its lane is idle and a
    /// permit is free — runs it right here on the poll thread: a handler
    /// that finishes without waiting (the common, fast case) then costs no
    /// task switch at all. One that waits continues in its lane, ahead of
    /// anything queued after it. Returns how it ended when it finished
    /// inline (of the assignment `gate` and `epoch` are).
    ///
    /// The fast path moves the message once and clones nothing: the
    /// partition, gate and lane key are only copied for what goes to a lane.
    pub(crate) fn dispatch(
        &mut self,
        message: Message,
        tp: &TopicPartition,
        offset: i64,
        gate: &Arc<Gate>,
        epoch: u64,
    ) -> Option<Settled> {
        let txn = self.context.generation();
        let work = |message| Work {
            message,
            tp: tp.clone(),
            offset,
            gate: gate.clone(),
            epoch,
            txn,
        };
        if let Runner::Batch { size, window, .. } = self.runner {
            let key = self.lane_key(&message, tp);
            self.fill(key, message, tp, offset, epoch, gate, size.max(1), window);
            return None;
        }
        // Without any lane yet (every message so far finished inline) no
        // key is needed to know the message's lane is idle — except by key,
        // where a handler that waits takes the message (and its key) along.
        let mut key = None;
        let message = if self.inline.is_some() {
            if self.order == Order::PerKey || !self.lanes.is_empty() {
                key = Some(self.lane_key(&message, tp));
            }
            let idle = key.as_ref().is_none_or(|key| {
                self.lanes
                    .get(key)
                    .is_none_or(|lane| lane.busy.load(Atomic::Acquire) == 0)
            });
            if idle {
                match self.run_inline(message, tp, offset, gate, epoch, txn) {
                    Inline::Done(settled) => return settled,
                    Inline::Pending(resume) => {
                        let key = key.unwrap_or_else(|| self.lane_key_of(None, tp));
                        self.send(key, LaneItem::Resume(resume));
                        return None;
                    }
                    Inline::Declined(message) => message,
                }
            } else {
                message
            }
        } else {
            message
        };
        let key = key.unwrap_or_else(|| self.lane_key(&message, tp));
        self.send(key, LaneItem::Work(work(message)));
        None
    }

    fn send(&mut self, key: LaneKey, item: LaneItem) {
        let lane = self.lanes.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel::<Vec<LaneItem>>();
            let context = self.context.clone();
            let busy = Arc::new(AtomicUsize::new(0));
            let task = self
                .runtime
                .spawn(run_lane(rx, self.runner.clone(), context, busy.clone()));
            Lane {
                tx,
                pending: Vec::new(),
                task: task.abort_handle(),
                busy,
            }
        });
        lane.busy.fetch_add(1, Atomic::AcqRel);
        lane.pending.push(item);
    }

    /// Starts the batches that are complete (full, or whose window has
    /// expired) — inline when their lane is idle and the handler finishes at
    /// once, completions into `done` — then hands each lane what this poll
    /// round gave it.
    pub(crate) fn flush(&mut self, done: &mut Vec<Completion>) {
        if !self.filling.is_empty() {
            let now = Instant::now();
            let expired: Vec<LaneKey> = self
                .filling
                .iter()
                .filter(|(_, f)| f.deadline <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                if let Some(filling) = self.filling.remove(&key) {
                    self.ready.push((key, filling.works));
                }
            }
        }
        for (key, works) in std::mem::take(&mut self.ready) {
            self.start_batch(key, works, done);
        }
        for lane in self.lanes.values_mut() {
            if !lane.pending.is_empty() {
                // A lane only ends when its sender is dropped or it is
                // aborted at the shutdown deadline; then the messages are
                // simply not handled.
                // The next round's vector starts at this one's size rather
                // than growing from empty again.
                let next = Vec::with_capacity(lane.pending.len());
                let _ = lane.tx.send(std::mem::replace(&mut lane.pending, next));
            }
        }
    }

    /// Makes every batch being filled ready now, whatever its window: a
    /// transaction ends only once they were handled.
    pub(crate) fn close_batches(&mut self) {
        for (key, filling) in self.filling.drain() {
            self.ready.push((key, filling.works));
        }
    }

    /// Forgets the lanes (and batches being filled) of a revoked partition;
    /// the lanes end once their running handler (if any) finished.
    pub(crate) fn close_partition(&mut self, tp: &TopicPartition) {
        self.lanes.retain(|key, _| key.partition() != Some(tp));
        self.filling.retain(|key, _| key.partition() != Some(tp));
        self.ready.retain(|(key, _)| key.partition() != Some(tp));
    }

    /// Stops every lane now, dropping running handlers (shutdown deadline).
    pub(crate) fn abort_all(&mut self) {
        self.filling.clear();
        self.ready.clear();
        for (_, lane) in self.lanes.drain() {
            lane.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_lets_no_handler_in_and_counts_those_inside() {
        let gate = Gate::new();
        assert!(gate.enter());
        assert_eq!(gate.running(), 1);
        gate.close();
        // One inside before the close stays counted (a drain waits for it);
        // none gets in after it, and a refused one is not counted.
        assert!(!gate.enter());
        assert_eq!(gate.running(), 1);
        gate.leave();
        assert_eq!(gate.running(), 0);
    }

    fn work(tp: &TopicPartition, key: Option<&str>, offset: i64) -> Work {
        let mut message = Message::builder(tp.topic.clone())
            .partition(tp.partition)
            .offset(offset);
        if let Some(key) = key {
            message = message.key(key.to_owned());
        }
        Work {
            message: message.build(),
            tp: tp.clone(),
            offset,
            gate: Gate::new(),
            epoch: 1,
            txn: None,
        }
    }

    fn lk(d: &mut Dispatcher, w: &Work) -> LaneKey {
        d.lane_key(&w.message, &w.tp)
    }

    fn dispatcher(
        order: Order,
        concurrency: usize,
        runtime: &tokio::runtime::Runtime,
    ) -> Dispatcher {
        let service = tower::service_fn(|_m: Message| async { Ok::<_, BoxError>(Ack::Success) });
        dispatcher_with(order, concurrency, runtime, BoxCloneService::new(service)).0
    }

    /// A dispatcher calling `service`, and the poll thread's end of its
    /// completions.
    fn dispatcher_with(
        order: Order,
        concurrency: usize,
        runtime: &tokio::runtime::Runtime,
        service: BoxCloneService<Message, Ack, BoxError>,
    ) -> (Dispatcher, std_mpsc::Receiver<Report>) {
        let (tx, rx) = std_mpsc::channel();
        let shared = Arc::new(Shared::new(
            "dispatch-tests".into(),
            Arc::new(|_: &Error| Decision::Stop),
            crate::ShutdownHandle::new(),
            Duration::from_secs(1),
        ));
        let dispatcher = Dispatcher::new(
            order,
            concurrency,
            runtime.handle().clone(),
            Runner::Single(service),
            tx,
            shared,
            CommitWait::None,
        );
        (dispatcher, rx)
    }

    #[test]
    fn lanes_follow_the_order() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let tp = TopicPartition::new("t", 0);
        let other = TopicPartition::new("t", 1);

        let mut d = dispatcher(Order::PerPartition, 4, &runtime);
        assert!(lk(&mut d, &work(&tp, Some("a"), 0)) == lk(&mut d, &work(&tp, Some("b"), 1)));
        assert!(lk(&mut d, &work(&tp, None, 0)) != lk(&mut d, &work(&other, None, 1)));

        let mut d = dispatcher(Order::PerKey, 4, &runtime);
        let same = (
            lk(&mut d, &work(&tp, Some("a"), 0)),
            lk(&mut d, &work(&tp, Some("a"), 9)),
        );
        assert!(same.0 == same.1, "one key, one lane");
        assert!(
            lk(&mut d, &work(&tp, Some("a"), 0)) != lk(&mut d, &work(&other, Some("a"), 0)),
            "per partition"
        );
        let keyless = lk(&mut d, &work(&tp, None, 0));
        assert!(
            matches!(keyless, LaneKey::Keyless(_)),
            "keyless ones keep their own order"
        );
        let slots: std::collections::HashSet<u64> = (0..200)
            .map(
                |i| match lk(&mut d, &work(&tp, Some(&format!("k{i}")), i)) {
                    LaneKey::Slot(_, slot) => slot,
                    _ => unreachable!(),
                },
            )
            .collect();
        assert_eq!(slots.len(), 4, "keys spread over as many slots as handlers");

        let mut d = dispatcher(Order::Unordered, 3, &runtime);
        let lanes: std::collections::HashSet<u64> = (0..6)
            .map(|i| match lk(&mut d, &work(&tp, Some("same"), i)) {
                LaneKey::Global(n) => n,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(lanes.len(), 3, "round robin over the lanes");
    }

    /// A runtime for lanes, and a handler whose call for offset 0 waits
    /// until `true` is sent (the others finish at once); every call's
    /// offset is recorded in `started`.
    #[allow(clippy::type_complexity)]
    fn held_at_offset_0() -> (
        tokio::runtime::Runtime,
        tokio::sync::watch::Sender<bool>,
        Arc<std::sync::Mutex<Vec<i64>>>,
        BoxCloneService<Message, Ack, BoxError>,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (release, released) = tokio::sync::watch::channel(false);
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = started.clone();
        let service = tower::service_fn(move |m: Message| {
            record.lock().unwrap().push(m.offset().unwrap());
            let mut released = released.clone();
            async move {
                if m.offset() == Some(0) {
                    let _ = released.wait_for(|r| *r).await;
                }
                Ok::<_, BoxError>(Ack::Success)
            }
        });
        (runtime, release, started, BoxCloneService::new(service))
    }

    #[test]
    fn unordered_messages_go_to_an_idle_lane_not_behind_a_slow_one() {
        let (runtime, release, _, service) = held_at_offset_0();
        let (mut d, _rx) = dispatcher_with(Order::Unordered, 2, &runtime, service);
        let tp = TopicPartition::new("t", 0);
        let gate = Gate::new();
        let msg = |offset| {
            Message::builder(tp.topic.clone())
                .partition(0)
                .offset(offset)
                .build()
        };
        assert!(d.dispatch(msg(0), &tp, 0, &gate, 1).is_none(), "waits");
        // One lane is held by offset 0; the other is idle each time, so
        // every later message runs at once on the poll thread.
        for offset in 1..6 {
            assert!(
                matches!(
                    d.dispatch(msg(offset), &tp, offset, &gate, 1),
                    Some(Settled::Done(Ack::Success))
                ),
                "offset {offset} queued behind the slow one"
            );
        }
        release.send(true).unwrap();
    }

    #[test]
    fn a_handler_that_waits_carries_its_permit_into_the_lane_and_gives_it_back() {
        let (runtime, release, started, service) = held_at_offset_0();
        let (mut d, rx) = dispatcher_with(Order::PerPartition, 1, &runtime, service);
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let (gate_a, gate_b) = (Gate::new(), Gate::new());
        let msg = |tp: &TopicPartition, offset| {
            Message::builder(tp.topic.clone())
                .partition(tp.partition)
                .offset(offset)
                .build()
        };
        let mut done = Vec::new();
        assert!(d.dispatch(msg(&a, 0), &a, 0, &gate_a, 1).is_none(), "waits");
        assert_eq!(d.context.permits.available(), 0, "carried");
        // Another partition's lane is idle, but Concurrency(1) is taken: it
        // must wait in its lane, not run on the poll thread.
        assert!(d.dispatch(msg(&b, 1), &b, 1, &gate_b, 1).is_none());
        d.flush(&mut done);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*started.lock().unwrap(), vec![0], "within the concurrency");
        release.send(true).unwrap();
        let mut finished = Vec::new();
        while finished.len() < 2 {
            if let Report::Completed(c) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("both finish")
            {
                finished.push(c.offset);
            }
        }
        finished.sort_unstable();
        assert_eq!(finished, vec![0, 1]);
        assert_eq!(*started.lock().unwrap(), vec![0, 1]);
        // Given back once each: exactly the one permit again (a lane drops
        // its own after reporting, so wait for that).
        let deadline = Instant::now() + Duration::from_secs(5);
        while d.context.permits.available() != 1 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(d.context.permits.available(), 1);
        // The poll thread runs the next one itself again.
        assert!(matches!(
            d.dispatch(msg(&a, 2), &a, 2, &gate_a, 1),
            Some(Settled::Done(Ack::Success))
        ));
    }
}
