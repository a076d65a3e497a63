//! Batch assembly on the poll thread (per lane, by size or by a window from
//! the batch's first message), and batches handled in their lanes.

use super::*;

impl Dispatcher {
    /// Adds a message to its lane's batch; a full batch is ready.
    /// The work is made (`work(message)`) right into the batch: a `Work`
    /// made first would be copied in whole.
    pub(super) fn fill(
        &mut self,
        key: LaneKey,
        work: impl FnOnce(Message) -> Work,
        message: Message,
        size: usize,
        window: Duration,
    ) {
        let full = match self.filling.get_mut(&key) {
            Some(filling) => {
                filling.works.push(work(message));
                filling.works.len() >= size
            }
            None => {
                let mut works = Vec::with_capacity(size.min(1024));
                works.push(work(message));
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

    pub(super) fn start_batch(
        &mut self,
        key: LaneKey,
        works: Vec<Work>,
        done: &mut Vec<Completion>,
    ) {
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
}

/// The batch handed to the handler, and where each message came from.
pub(super) fn batch_of(works: Vec<Work>) -> (Batch, Vec<Origin>) {
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
pub(super) fn batch_completions(
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

/// Handles one batch in its lane; `false` when the poll thread is gone.
pub(super) async fn handle_batch(
    service: &mut BoxCloneService<Batch, Ack, BoxError>,
    cx: &LaneContext,
    mut works: Vec<Work>,
) -> bool {
    let Ok(_permit) = cx.permits.acquire().await else {
        return false;
    };
    // Messages of revoked partitions are dropped; when stopping, the batch
    // is not handled at all (rather than with a dying context).
    if cx.stopping() {
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
