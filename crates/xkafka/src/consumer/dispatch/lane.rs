//! A lane's task: handles what it receives one item after another, asks
//! the error handler about failures, and reports each outcome to the poll
//! thread (waiting for commits where the commit mode says so).

use super::*;

/// A lane's task: handles what it receives, one item after another.
pub(super) async fn run_lane(
    mut rx: mpsc::UnboundedReceiver<Vec<LaneItem>>,
    mut runner: Runner,
    cx: LaneContext,
    busy: Arc<AtomicUsize>,
) {
    while let Some(items) = rx.recv().await {
        for item in items {
            let keep_going = match (item, &mut runner) {
                (LaneItem::Work(work), Runner::Single(service)) => {
                    handle_work(service, &cx, work, &busy).await
                }
                (LaneItem::Batch(works), Runner::Batch { service, .. }) => {
                    handle_batch(service, &cx, works, &busy).await
                }
                (LaneItem::Resume(resume), _) => {
                    let outcome = finish_caught(resume.future).await;
                    let settled =
                        settle_outcome(&cx, &resume.tp, resume.offset, resume.txn, outcome);
                    let sent =
                        complete(&cx, resume.tp, resume.epoch, resume.offset, settled).is_some();
                    resume.gate.leave();
                    sent
                }
                (LaneItem::ResumeBatch(resume), _) => {
                    let outcome = finish_caught(resume.future).await;
                    let completions =
                        batch_completions(&cx, &resume.batch, &resume.origins, resume.txn, outcome);
                    let sent = cx.completions.send(Report::Batch(completions)).is_ok();
                    resume.origins.leave_all();
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
pub(super) async fn handle_work(
    service: &mut BoxCloneService<Message, Ack, BoxError>,
    cx: &LaneContext,
    work: Work,
    backlog: &Arc<AtomicUsize>,
) -> bool {
    let Work {
        message,
        tp,
        offset,
        gate,
        epoch,
        txn,
    } = work;
    let Some(_permit) = cx.permits.acquire(backlog).await else {
        return false;
    };
    // Revoked or stopping: the message stays unread (the partition's next
    // owner, or our next run, reads it).
    if cx.stopping() || !gate.enter() {
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
    let outcome = call_caught(service, message, txn).await;
    let settled = settle_outcome(cx, &tp, offset, txn, outcome);
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

/// Asks the poll thread to commit past `offset` before it is handled
/// (at-most-once). `false`: not committed, the message must be dropped.
pub(super) async fn claim(
    cx: &LaneContext,
    tp: &TopicPartition,
    epoch: u64,
    offset: i64,
) -> Option<bool> {
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
pub(super) fn complete(
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

/// Turns a handler's result into the settled outcome, asking the error
/// handler about failures.
pub(super) fn settle_outcome(
    cx: &LaneContext,
    tp: &TopicPartition,
    offset: i64,
    txn: Option<u64>,
    outcome: Result<Ack, BoxError>,
) -> Settled {
    match outcome {
        Ok(ack) => Settled::Done(ack),
        // Its transaction aborted: the message is handled again, and this
        // failure (a publish the fence refused, as often as not) must not
        // reach an error handler that could stop on it.
        Err(source) if cx.aborted(txn) => {
            tracing::debug!(partition = %tp, offset, %source, "a handler of an aborted transaction failed; its message is read again");
            Settled::Done(Ack::Skip)
        }
        Err(source) => Settled::Failed(cx.shared.report(handler_error(tp, offset, source))),
    }
}

/// Runs a service call (as part of transaction `txn`, if any), turning a
/// panic into a failure.
pub(super) async fn call_caught<Req, S>(
    service: &mut S,
    request: Req,
    txn: Option<u64>,
) -> Result<Ack, BoxError>
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
    let call = fence::sync_scoped(txn, || service.call(request));
    match txn {
        Some(generation) => caught(fence::scoped(generation, call)).await,
        None => caught(call).await,
    }
}

async fn caught(
    call: impl std::future::Future<Output = Result<Ack, BoxError>>,
) -> Result<Ack, BoxError> {
    AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Box::new(Panicked::from_payload(panic)) as BoxError))
}

/// Awaits the rest of a call started on the poll thread.
pub(super) async fn finish_caught(
    future: BoxFuture<'static, Result<Ack, BoxError>>,
) -> Result<Ack, BoxError> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Box::new(Panicked::from_payload(panic)) as BoxError))
}

pub(super) fn handler_error(tp: &TopicPartition, offset: i64, source: BoxError) -> Error {
    Error::Handler {
        topic: tp.topic.clone(),
        partition: tp.partition,
        offset,
        source,
    }
}
