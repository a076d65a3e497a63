//! The inline fast path: a message (or a complete batch) whose lane is idle
//! is handled right on the poll thread; a handler that finishes at once then
//! costs no task switch, and one that waits continues in its lane.

use super::*;

impl Dispatcher {
    pub(super) fn run_inline(
        &mut self,
        message: Message,
        tp: &TopicPartition,
        offset: i64,
        gate: &Arc<Gate>,
        epoch: u64,
        txn: Option<u64>,
    ) -> Inline {
        let Some(service) = self.inline.as_mut() else {
            return Inline::Declined(message);
        };
        // Borrowed: an owned permit costs an `Arc` clone and drop per
        // message, and most handlers finish here.
        let Some(permit) = self.context.permits.try_acquire() else {
            return Inline::Declined(message);
        };
        let panicked = match ready_now(service) {
            Readiness::Ready => None,
            Readiness::NotReady => return Inline::Declined(message),
            Readiness::Panicked(panic) => Some(panic),
        };
        if self.context.stopping() || !gate.enter() {
            return Inline::Done(None);
        }
        let first = match panicked {
            Some(panic) => FirstPoll::Ready(Err(panic)),
            None => call_inline(
                (!self.entered).then_some(&self.runtime),
                service,
                message,
                txn,
            ),
        };
        let outcome = match first {
            FirstPoll::Ready(outcome) => outcome,
            FirstPoll::Pending(future) => {
                // The lane carries the permit on and gives it back.
                return Inline::Pending(Resume {
                    future,
                    tp: tp.clone(),
                    offset,
                    epoch,
                    txn,
                    gate: gate.clone(),
                    _permit: permit.carry(),
                });
            }
        };
        let settled = settle_outcome(&self.context, tp, offset, txn, outcome);
        gate.leave();
        drop(permit);
        Inline::Done(Some(settled))
    }

    pub(super) fn run_batch_inline(&mut self, mut works: Works) -> InlineBatch {
        let Some(service) = self.inline_batch.as_mut() else {
            return InlineBatch::Declined(works);
        };
        let Some(permit) = self.context.permits.try_acquire_owned() else {
            return InlineBatch::Declined(works);
        };
        let panicked = match ready_now(service) {
            Readiness::Ready => None,
            Readiness::NotReady => return InlineBatch::Declined(works),
            Readiness::Panicked(panic) => Some(panic),
        };
        // As in the lane: not handled at all once stopping; messages of
        // revoked partitions dropped.
        if self.context.stopping() {
            return InlineBatch::Done(Vec::new());
        }
        works.retain_entered();
        if works.is_empty() {
            return InlineBatch::Done(Vec::new());
        }
        let works_txn = works.txn;
        let (batch, origins) = batch_of(works);
        let first = match panicked {
            Some(panic) => FirstPoll::Ready(Err(panic)),
            None => call_inline(
                (!self.entered).then_some(&self.runtime),
                service,
                batch.clone(),
                works_txn,
            ),
        };
        let outcome = match first {
            FirstPoll::Ready(outcome) => outcome,
            FirstPoll::Pending(future) => {
                return InlineBatch::Pending(BatchResume {
                    future,
                    batch,
                    origins,
                    txn: works_txn,
                    _permit: permit,
                });
            }
        };
        let completions = batch_completions(&self.context, &batch, &origins, works_txn, outcome);
        origins.leave_all();
        InlineBatch::Done(completions)
    }
}

pub(super) enum InlineBatch {
    /// Finished (or dropped: stopping, all revoked).
    Done(Vec<Completion>),
    /// Waiting: continues in the lane.
    Pending(BatchResume),
    /// Not run inline (lane busy, no permit, service not ready, commits
    /// to wait for): goes to the lane.
    Declined(Works),
}

pub(super) enum Inline {
    /// Finished (or dropped: revoked / stopping).
    Done(Option<Settled>),
    /// Waiting: continues in the lane.
    Pending(Resume),
    /// Not run inline (no permit, service not ready): goes to the lane.
    Declined(Message),
}

/// What calling a handler on the poll thread gave.
pub(super) enum FirstPoll {
    /// Finished at once (a panic is a `Panicked` failure).
    Ready(Result<Ack, BoxError>),
    /// Waiting: its lane's task polls it on.
    Pending(BoxFuture<'static, Result<Ack, BoxError>>),
}

pub(super) enum Readiness {
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
pub(super) fn ready_now<Req>(service: &mut BoxCloneService<Req, Ack, BoxError>) -> Readiness {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| service.poll_ready(&mut cx))) {
        Ok(Poll::Ready(Ok(()))) => Readiness::Ready,
        Ok(_) => Readiness::NotReady,
        Err(panic) => Readiness::Panicked(Box::new(Panicked::from_payload(panic))),
    }
}

/// Calls `service` and polls the call once, right here on the poll thread.
/// `runtime`: the runtime to enter for the call, `None` when the poll
/// thread is in it already ([`Dispatcher::entered`]); `txn`: the
/// transaction the call belongs to (transactional consumers).
pub(super) fn call_inline<Req>(
    runtime: Option<&tokio::runtime::Handle>,
    service: &mut BoxCloneService<Req, Ack, BoxError>,
    request: Req,
    txn: Option<u64>,
) -> FirstPoll {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Handlers may use timers or spawn tasks: give them the runtime.
    let _runtime = runtime.map(tokio::runtime::Handle::enter);
    let called = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut future = fence::sync_scoped(txn, || service.call(request));
        if let Some(generation) = txn {
            future = Box::pin(fence::scoped(generation, future));
        }
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
