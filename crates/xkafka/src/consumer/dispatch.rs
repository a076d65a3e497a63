//! Lanes: how messages reach handlers under `Concurrency(N)` and an
//! ordering mode, off the poll thread.
//!
//! A lane is a tokio task that handles its messages one after another. Which
//! lane a message goes to decides the ordering: one lane per partition keeps
//! partition order; one lane per (partition, key slot) keeps key order while
//! the keys of one partition run in parallel; unordered lanes take any
//! message. A semaphore of N permits bounds how many handlers run at once.
//!
//! Two fast paths keep the common case on the poll thread: a message (or a
//! batch, assembled here per lane) whose lane is idle runs right away, and
//! only a handler that actually waits moves to its lane's task.

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
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::offsets::TopicPartition;
use super::shared::Shared;
use crate::error::{Decision, Error};
use crate::{Ack, BoxError, Message};
use xkafka_core::middleware::recover::Panicked;
use xkafka_core::Batch;

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
    /// behaviour), for handlers that do not care about order.
    Unordered,
}

/// Open for one assignment of one partition; closed when it is revoked (or
/// the consumer stops), after which its queued messages are dropped unread.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    /// Handlers of this partition running right now.
    running: AtomicUsize,
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Gate {
            open: AtomicBool::new(true),
            running: AtomicUsize::new(0),
        })
    }

    // SeqCst on both sides: a lane announces itself (`enter`) and then
    // checks the gate, while a revocation closes the gate and then counts
    // running handlers; with sequential consistency one of them must see the
    // other, so no handler starts unseen after a drain found none running.
    pub(crate) fn close(&self) {
        self.open.store(false, Atomic::SeqCst);
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Atomic::SeqCst)
    }

    /// Counts a handler in; `false` (and counted out again) when the gate
    /// is closed.
    fn enter(&self) -> bool {
        self.running.fetch_add(1, Atomic::SeqCst);
        if self.open.load(Atomic::SeqCst) {
            true
        } else {
            self.leave();
            false
        }
    }

    fn leave(&self) {
        self.running.fetch_sub(1, Atomic::SeqCst);
    }
}

/// A message on its way to a lane.
pub(crate) struct Work {
    pub(crate) message: Message,
    pub(crate) tp: TopicPartition,
    pub(crate) offset: i64,
    pub(crate) gate: Arc<Gate>,
    pub(crate) epoch: u64,
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
    Batch(Vec<Work>),
    /// A batch handler call started inline that did not finish at once.
    ResumeBatch(BatchResume),
}

struct BatchResume {
    future: BoxFuture<'static, Result<Ack, BoxError>>,
    batch: Batch,
    origins: Vec<Origin>,
    _permit: OwnedSemaphorePermit,
}

/// A batch being filled on the poll thread.
struct Filling {
    works: Vec<Work>,
    /// The window ends here: it started with the batch's first message.
    deadline: Instant,
}

struct Resume {
    future: BoxFuture<'static, Result<Ack, BoxError>>,
    tp: TopicPartition,
    offset: i64,
    epoch: u64,
    gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
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
    permits: Arc<Semaphore>,
    completions: std_mpsc::Sender<Report>,
    shared: Arc<Shared>,
    commit_wait: CommitWait,
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
    ready: Vec<(LaneKey, Vec<Work>)>,
}

impl Dispatcher {
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
                permits: Arc::new(Semaphore::new(concurrency)),
                completions,
                shared,
                commit_wait,
            },
            next_global: 0,
            inline: None,
            inline_batch: None,
            filling: FxHashMap::default(),
            ready: Vec::new(),
        }
        .with_inline()
    }

    fn with_inline(mut self) -> Self {
        // With manual commits or at-most-once, lanes wait for commits
        // around each call: those stay in the lanes.
        if self.context.commit_wait == CommitWait::None {
            match &self.runner {
                Runner::Single(service) => self.inline = Some(service.clone()),
                Runner::Batch { service, .. } => self.inline_batch = Some(service.clone()),
            }
        }
        self
    }

    fn lane_key(&mut self, work: &Work) -> LaneKey {
        match self.order {
            Order::PerPartition => LaneKey::Partition(work.tp.clone()),
            Order::PerKey => match work.message.key() {
                // Same key, same slot: key order holds; N slots per partition
                // are enough to keep N handlers busy.
                Some(key) => {
                    let mut h = DefaultHasher::new();
                    key.hash(&mut h);
                    LaneKey::Slot(work.tp.clone(), h.finish() % self.concurrency as u64)
                }
                None => LaneKey::Keyless(work.tp.clone()),
            },
            Order::Unordered => {
                self.next_global = (self.next_global + 1) % self.concurrency as u64;
                LaneKey::Global(self.next_global)
            }
        }
    }

    /// Hands a message to its lane, or — when its lane is idle and a
    /// permit is free — runs it right here on the poll thread: a handler
    /// that finishes without waiting (the common, fast case) then costs no
    /// task switch at all. One that waits continues in its lane, ahead of
    /// anything queued after it. Returns the completion when it finished
    /// inline.
    pub(crate) fn dispatch(&mut self, work: Work) -> Option<Completion> {
        let key = self.lane_key(&work);
        if let Runner::Batch { size, window, .. } = self.runner {
            self.fill(key, work, size.max(1), window);
            return None;
        }
        let idle = || {
            self.lanes
                .get(&key)
                .is_none_or(|lane| lane.busy.load(Atomic::Acquire) == 0)
        };
        // Batch runners have no inline path: no need to look the lane up.
        let work = if self.inline.is_some() && idle() {
            match self.run_inline(work) {
                Inline::Done(completion) => return completion,
                Inline::Pending(resume) => {
                    self.send(key, LaneItem::Resume(resume));
                    return None;
                }
                Inline::Declined(work) => work,
            }
        } else {
            work
        };
        self.send(key, LaneItem::Work(work));
        None
    }

    fn run_inline(&mut self, work: Work) -> Inline {
        let Some(service) = self.inline.as_mut() else {
            return Inline::Declined(work);
        };
        let Ok(permit) = self.context.permits.clone().try_acquire_owned() else {
            return Inline::Declined(work);
        };
        let panicked = match ready_now(service) {
            Readiness::Ready => None,
            Readiness::NotReady => return Inline::Declined(work),
            Readiness::Panicked(panic) => Some(panic),
        };
        let Work {
            message,
            tp,
            offset,
            gate,
            epoch,
        } = work;
        if self.context.shared.shutdown.is_shutting_down() || !gate.enter() {
            return Inline::Done(None);
        }
        let first = match panicked {
            Some(panic) => FirstPoll::Ready(Err(panic)),
            None => call_inline(&self.runtime, service, message),
        };
        let outcome = match first {
            FirstPoll::Ready(outcome) => outcome,
            FirstPoll::Pending(future) => {
                return Inline::Pending(Resume {
                    future,
                    tp,
                    offset,
                    epoch,
                    gate,
                    _permit: permit,
                });
            }
        };
        let settled = settle_outcome(&self.context, &tp, offset, outcome);
        gate.leave();
        drop(permit);
        Inline::Done(Some(Completion {
            tp,
            epoch,
            offset,
            settled,
            committed: None,
        }))
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

    /// Adds a message to its lane's batch; a full batch is ready.
    fn fill(&mut self, key: LaneKey, work: Work, size: usize, window: Duration) {
        let full = match self.filling.get_mut(&key) {
            Some(filling) => {
                filling.works.push(work);
                filling.works.len() >= size
            }
            None => {
                let mut works = Vec::with_capacity(size.min(1024));
                works.push(work);
                let deadline = Instant::now() + window;
                self.filling
                    .insert(key.clone(), Filling { works, deadline });
                size == 1
            }
        };
        if full {
            if let Some(filling) = self.filling.remove(&key) {
                self.ready.push((key, filling.works));
            }
        }
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

    fn start_batch(&mut self, key: LaneKey, works: Vec<Work>, done: &mut Vec<Completion>) {
        let idle = self
            .lanes
            .get(&key)
            .is_none_or(|lane| lane.busy.load(Atomic::Acquire) == 0);
        let works = if idle {
            match self.run_batch_inline(works) {
                InlineBatch::Done(completions) => {
                    done.extend(completions);
                    return;
                }
                InlineBatch::Pending(resume) => {
                    self.send(key, LaneItem::ResumeBatch(resume));
                    return;
                }
                InlineBatch::Declined(works) => works,
            }
        } else {
            works
        };
        self.send(key, LaneItem::Batch(works));
    }

    fn run_batch_inline(&mut self, mut works: Vec<Work>) -> InlineBatch {
        let Some(service) = self.inline_batch.as_mut() else {
            return InlineBatch::Declined(works);
        };
        let Ok(permit) = self.context.permits.clone().try_acquire_owned() else {
            return InlineBatch::Declined(works);
        };
        let panicked = match ready_now(service) {
            Readiness::Ready => None,
            Readiness::NotReady => return InlineBatch::Declined(works),
            Readiness::Panicked(panic) => Some(panic),
        };
        // As in the lane: not handled at all once stopping; messages of
        // revoked partitions dropped.
        if self.context.shared.shutdown.is_shutting_down() {
            return InlineBatch::Done(Vec::new());
        }
        works.retain(|w| w.gate.enter());
        if works.is_empty() {
            return InlineBatch::Done(Vec::new());
        }
        let (batch, origins) = batch_of(works);
        let first = match panicked {
            Some(panic) => FirstPoll::Ready(Err(panic)),
            None => call_inline(&self.runtime, service, batch.clone()),
        };
        let outcome = match first {
            FirstPoll::Ready(outcome) => outcome,
            FirstPoll::Pending(future) => {
                return InlineBatch::Pending(BatchResume {
                    future,
                    batch,
                    origins,
                    _permit: permit,
                });
            }
        };
        let completions = batch_completions(&self.context, &batch, &origins, outcome);
        for origin in &origins {
            origin.gate.leave();
        }
        InlineBatch::Done(completions)
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

enum InlineBatch {
    /// Finished (or dropped: stopping, all revoked).
    Done(Vec<Completion>),
    /// Waiting: continues in the lane.
    Pending(BatchResume),
    /// Not run inline (lane busy, no permit, service not ready, commits
    /// to wait for): goes to the lane.
    Declined(Vec<Work>),
}

/// The batch handed to the handler, and where each message came from.
fn batch_of(works: Vec<Work>) -> (Batch, Vec<Origin>) {
    let mut messages = Vec::with_capacity(works.len());
    let mut origins = Vec::with_capacity(works.len());
    for work in works {
        messages.push(work.message);
        origins.push(Origin {
            tp: work.tp,
            offset: work.offset,
            epoch: work.epoch,
            gate: work.gate,
        });
    }
    (Batch::new(messages), origins)
}

/// Each message's outcome: the one the handler recorded for it, else the
/// batch's. Failures go to the error handler (a whole-batch failure once,
/// for its first message).
fn batch_completions(
    cx: &LaneContext,
    batch: &Batch,
    origins: &[Origin],
    outcome: Result<Ack, BoxError>,
) -> Vec<Completion> {
    let recorded = batch.take_outcomes();
    let overall = outcome.map_err(|source| {
        let first = &origins[0];
        cx.shared
            .report(handler_error(&first.tp, first.offset, source))
    });
    origins
        .iter()
        .zip(recorded)
        .map(|(origin, recorded)| {
            let settled = match (recorded, &overall) {
                (Some(Ok(ack)), _) => Settled::Done(ack),
                (Some(Err(source)), _) => Settled::Failed(cx.shared.report(handler_error(
                    &origin.tp,
                    origin.offset,
                    source,
                ))),
                (None, Ok(ack)) => Settled::Done(*ack),
                (None, Err(decision)) => Settled::Failed(*decision),
            };
            Completion {
                tp: origin.tp.clone(),
                epoch: origin.epoch,
                offset: origin.offset,
                settled,
                committed: None,
            }
        })
        .collect()
}

/// Asks the poll thread to commit past `offset` before it is handled
/// (at-most-once). `false`: not committed, the message must be dropped.
async fn claim(cx: &LaneContext, tp: &TopicPartition, epoch: u64, offset: i64) -> Option<bool> {
    let (committed, claimed) = oneshot::channel();
    let claim = Claim {
        tp: tp.clone(),
        epoch,
        offset,
        committed,
    };
    cx.completions.send(Report::Claim(claim)).ok()?;
    Some(claimed.await.is_ok())
}

/// Reports a finished message; returns what to wait for before the next
/// one (manual commit), or `None` when the poll thread is gone.
fn complete(
    cx: &LaneContext,
    tp: TopicPartition,
    epoch: u64,
    offset: i64,
    settled: Settled,
) -> Option<Option<oneshot::Receiver<()>>> {
    let (committed, wait) = if cx.commit_wait == CommitWait::After {
        let (tx, rx) = oneshot::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let completion = Completion {
        tp,
        epoch,
        offset,
        settled,
        committed,
    };
    cx.completions.send(Report::Completed(completion)).ok()?;
    Some(wait)
}

enum Inline {
    /// Finished (or dropped: revoked / stopping).
    Done(Option<Completion>),
    /// Waiting: continues in the lane.
    Pending(Resume),
    /// Not run inline (no permit, service not ready): goes to the lane.
    Declined(Work),
}

/// Turns a handler's result into the settled outcome, asking the error
/// handler about failures.
fn settle_outcome(
    cx: &LaneContext,
    tp: &TopicPartition,
    offset: i64,
    outcome: Result<Ack, BoxError>,
) -> Settled {
    match outcome {
        Ok(ack) => Settled::Done(ack),
        Err(source) => Settled::Failed(cx.shared.report(handler_error(tp, offset, source))),
    }
}

/// Runs a service call, turning a panic into a failure.
async fn call_caught<Req, S>(service: &mut S, request: Req) -> Result<Ack, BoxError>
where
    S: Service<Req, Response = Ack, Error = BoxError>,
{
    // `poll_ready` is the application's code too (a middleware's).
    match AssertUnwindSafe(service.ready()).catch_unwind().await {
        Ok(ready) => {
            ready?;
        }
        Err(panic) => return Err(Box::new(Panicked::from_payload(panic))),
    }
    AssertUnwindSafe(service.call(request))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Box::new(Panicked::from_payload(panic)) as BoxError))
}

/// What calling a handler on the poll thread gave.
enum FirstPoll {
    /// Finished at once (a panic is a `Panicked` failure).
    Ready(Result<Ack, BoxError>),
    /// Waiting: its lane's task polls it on.
    Pending(BoxFuture<'static, Result<Ack, BoxError>>),
}

enum Readiness {
    Ready,
    /// Not ready now, or failed: the lane waits for it (and reports a
    /// failure as the message's).
    NotReady,
    /// `poll_ready` (a middleware's code) panicked: a failure of the
    /// message, which must not unwind through the poll thread.
    Panicked(BoxError),
}

/// Whether `service` is ready without waiting: one that is not (a rate
/// limit…) gets its call in a lane instead of on the poll thread.
fn ready_now<Req>(service: &mut BoxCloneService<Req, Ack, BoxError>) -> Readiness {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| service.poll_ready(&mut cx))) {
        Ok(Poll::Ready(Ok(()))) => Readiness::Ready,
        Ok(_) => Readiness::NotReady,
        Err(panic) => Readiness::Panicked(Box::new(Panicked::from_payload(panic))),
    }
}

/// Calls `service` and polls the call once, right here on the poll thread.
fn call_inline<Req>(
    runtime: &tokio::runtime::Handle,
    service: &mut BoxCloneService<Req, Ack, BoxError>,
    request: Req,
) -> FirstPoll {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Handlers may use timers or spawn tasks: give them the runtime.
    let _runtime = runtime.enter();
    let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut future = service.call(request);
        match future.as_mut().poll(&mut cx) {
            // Dropped in here: the handler's future may panic in its drop.
            Poll::Ready(outcome) => FirstPoll::Ready(outcome),
            // The lane's first poll registers its own waker; a wake-up sent
            // to the no-op waker meanwhile is covered by that poll.
            Poll::Pending => FirstPoll::Pending(future),
        }
    }));
    called.unwrap_or_else(|panic| FirstPoll::Ready(Err(Box::new(Panicked::from_payload(panic)))))
}

/// Awaits the rest of a call started on the poll thread.
async fn finish_caught(future: BoxFuture<'static, Result<Ack, BoxError>>) -> Result<Ack, BoxError> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Box::new(Panicked::from_payload(panic)) as BoxError))
}

fn handler_error(tp: &TopicPartition, offset: i64, source: BoxError) -> Error {
    Error::Handler {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset,
        source,
    }
}

/// A lane's task: handles what it receives, one item after another.
async fn run_lane(
    mut rx: mpsc::UnboundedReceiver<Vec<LaneItem>>,
    mut runner: Runner,
    cx: LaneContext,
    busy: Arc<AtomicUsize>,
) {
    while let Some(items) = rx.recv().await {
        for item in items {
            let keep_going = match (item, &mut runner) {
                (LaneItem::Work(work), Runner::Single(service)) => {
                    handle_work(service, &cx, work).await
                }
                (LaneItem::Batch(works), Runner::Batch { service, .. }) => {
                    handle_batch(service, &cx, works).await
                }
                (LaneItem::Resume(resume), _) => {
                    let outcome = finish_caught(resume.future).await;
                    let settled = settle_outcome(&cx, &resume.tp, resume.offset, outcome);
                    let sent =
                        complete(&cx, resume.tp, resume.epoch, resume.offset, settled).is_some();
                    resume.gate.leave();
                    sent
                }
                (LaneItem::ResumeBatch(resume), _) => {
                    let outcome = finish_caught(resume.future).await;
                    let completions =
                        batch_completions(&cx, &resume.batch, &resume.origins, outcome);
                    let sent = cx.completions.send(Report::Batch(completions)).is_ok();
                    for origin in &resume.origins {
                        origin.gate.leave();
                    }
                    sent
                }
                // A lane receives only what its runner's dispatch makes.
                (LaneItem::Work(_), Runner::Batch { .. })
                | (LaneItem::Batch(_), Runner::Single(_)) => true,
            };
            busy.fetch_sub(1, Atomic::AcqRel);
            if !keep_going {
                return;
            }
        }
    }
}

/// Handles one message in its lane; `false` when the poll thread is gone.
async fn handle_work(
    service: &mut BoxCloneService<Message, Ack, BoxError>,
    cx: &LaneContext,
    work: Work,
) -> bool {
    let Work {
        message,
        tp,
        offset,
        gate,
        epoch,
    } = work;
    let Ok(_permit) = cx.permits.acquire().await else {
        return false;
    };
    // Revoked or stopping: the message stays unread (the partition's next
    // owner, or our next run, reads it).
    if cx.shared.shutdown.is_shutting_down() || !gate.enter() {
        return true;
    }
    if cx.commit_wait == CommitWait::Before {
        match claim(cx, &tp, epoch, offset).await {
            None => {
                gate.leave();
                return false;
            }
            Some(true) => {}
            Some(false) => {
                // Not committed: handling it could process it twice after a
                // restart, so at-most-once drops it (counted as skipped).
                let sent = complete(cx, tp, epoch, offset, Settled::Done(Ack::Skip));
                gate.leave();
                return sent.is_some();
            }
        }
    }
    let outcome = call_caught(service, message).await;
    let settled = settle_outcome(cx, &tp, offset, outcome);
    // Report before lowering `running`, so that a drain that sees zero
    // running handlers also sees every completion.
    let wait = complete(cx, tp, epoch, offset, settled);
    gate.leave();
    match wait {
        None => false,
        // Manual commit: the next message of this lane waits until this
        // one's offset is committed (or the consumer is stopping).
        Some(Some(wait)) => {
            let _ = wait.await;
            true
        }
        Some(None) => true,
    }
}

/// Where a message of a batch came from.
struct Origin {
    tp: TopicPartition,
    offset: i64,
    epoch: u64,
    gate: Arc<Gate>,
}

/// Handles one batch in its lane; `false` when the poll thread is gone.
async fn handle_batch(
    service: &mut BoxCloneService<Batch, Ack, BoxError>,
    cx: &LaneContext,
    mut works: Vec<Work>,
) -> bool {
    let Ok(_permit) = cx.permits.acquire().await else {
        return false;
    };
    // Messages of revoked partitions are dropped; when stopping, the batch
    // is not handled at all (rather than with a dying context).
    if cx.shared.shutdown.is_shutting_down() {
        return true;
    }
    // Count every message's handler in before anything runs (see
    // `Gate::enter`); those of closed gates are dropped here.
    works.retain(|w| w.gate.enter());
    if cx.commit_wait == CommitWait::Before {
        let mut granted = Vec::with_capacity(works.len());
        for work in works {
            match claim(cx, &work.tp, work.epoch, work.offset).await {
                None => return false,
                Some(true) => granted.push(work),
                Some(false) => {
                    let sent = complete(
                        cx,
                        work.tp,
                        work.epoch,
                        work.offset,
                        Settled::Done(Ack::Skip),
                    );
                    work.gate.leave();
                    if sent.is_none() {
                        return false;
                    }
                }
            }
        }
        works = granted;
    }
    if works.is_empty() {
        return true;
    }
    let (batch, origins) = batch_of(works);
    let outcome = call_caught(service, batch.clone()).await;
    let mut completions = batch_completions(cx, &batch, &origins, outcome);
    // Manual commit: the poll thread settles a report as a whole before
    // it commits, so one acknowledgement covers the batch.
    let wait = if cx.commit_wait == CommitWait::After {
        let (tx, rx) = oneshot::channel();
        if let Some(last) = completions.last_mut() {
            last.committed = Some(tx);
        }
        Some(rx)
    } else {
        None
    };
    // Report before lowering `running` (see `handle_work`).
    let sent = cx.completions.send(Report::Batch(completions)).is_ok();
    for origin in &origins {
        origin.gate.leave();
    }
    if !sent {
        return false;
    }
    if let Some(wait) = wait {
        let _ = wait.await;
    }
    true
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
        }
    }

    fn dispatcher(
        order: Order,
        concurrency: usize,
        runtime: &tokio::runtime::Runtime,
    ) -> Dispatcher {
        let service = tower::service_fn(|_m: Message| async { Ok::<_, BoxError>(Ack::Success) });
        let (tx, _rx) = std_mpsc::channel();
        let shared = Arc::new(Shared::new(
            "dispatch-tests".into(),
            Arc::new(|_: &Error| Decision::Stop),
            crate::ShutdownHandle::new(),
            Duration::from_secs(1),
        ));
        Dispatcher::new(
            order,
            concurrency,
            runtime.handle().clone(),
            Runner::Single(BoxCloneService::new(service)),
            tx,
            shared,
            CommitWait::None,
        )
    }

    #[test]
    fn lanes_follow_the_order() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let tp = TopicPartition::new("t", 0);
        let other = TopicPartition::new("t", 1);

        let mut d = dispatcher(Order::PerPartition, 4, &runtime);
        assert!(d.lane_key(&work(&tp, Some("a"), 0)) == d.lane_key(&work(&tp, Some("b"), 1)));
        assert!(d.lane_key(&work(&tp, None, 0)) != d.lane_key(&work(&other, None, 1)));

        let mut d = dispatcher(Order::PerKey, 4, &runtime);
        let same = (
            d.lane_key(&work(&tp, Some("a"), 0)),
            d.lane_key(&work(&tp, Some("a"), 9)),
        );
        assert!(same.0 == same.1, "one key, one lane");
        assert!(
            d.lane_key(&work(&tp, Some("a"), 0)) != d.lane_key(&work(&other, Some("a"), 0)),
            "per partition"
        );
        let keyless = d.lane_key(&work(&tp, None, 0));
        assert!(
            matches!(keyless, LaneKey::Keyless(_)),
            "keyless ones keep their own order"
        );
        let slots: std::collections::HashSet<u64> = (0..200)
            .map(
                |i| match d.lane_key(&work(&tp, Some(&format!("k{i}")), i)) {
                    LaneKey::Slot(_, slot) => slot,
                    _ => unreachable!(),
                },
            )
            .collect();
        assert_eq!(slots.len(), 4, "keys spread over as many slots as handlers");

        let mut d = dispatcher(Order::Unordered, 3, &runtime);
        let lanes: std::collections::HashSet<u64> = (0..6)
            .map(|i| match d.lane_key(&work(&tp, Some("same"), i)) {
                LaneKey::Global(n) => n,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(lanes.len(), 3, "round robin over the lanes");
    }
}
