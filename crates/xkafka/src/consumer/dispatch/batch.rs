//! Batch assembly on the poll thread (per lane, by size or by a window from
//! the batch's first message), and batches handled in their lanes.

use super::*;

impl Dispatcher {
    /// Adds a message to its lane's batch; a full batch is ready.
    pub(super) fn fill(
        &mut self,
        key: LaneKey,
        message: Message,
        origin: Origin,
        size: usize,
        window: Duration,
    ) {
        let full = match self.filling.get_mut(&key) {
            Some(filling) => {
                filling.works.push(message, origin);
                filling.works.len() >= size
            }
            None => {
                let mut works = Works::with_capacity(size.min(1024));
                works.push(message, origin);
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

    pub(super) fn start_batch(&mut self, key: LaneKey, works: Works, done: &mut Vec<Completion>) {
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

/// The messages of a batch on their way to the handler, and where each
/// came from (in step): kept apart from the start, so that the batch is
/// made without moving each message again.
#[derive(Default)]
pub(super) struct Works {
    messages: Vec<Message>,
    origins: Vec<Origin>,
}

impl Works {
    fn with_capacity(capacity: usize) -> Self {
        Works {
            messages: Vec::with_capacity(capacity),
            origins: Vec::with_capacity(capacity),
        }
    }

    fn push(&mut self, message: Message, origin: Origin) {
        self.messages.push(message);
        self.origins.push(origin);
    }

    pub(super) fn len(&self) -> usize {
        self.origins.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Counts each message's handler in (see `Gate::enter`) and drops the
    /// messages of closed gates.
    pub(super) fn retain_entered(&mut self) {
        let entered: Vec<bool> = self.origins.iter().map(|o| o.gate.enter()).collect();
        if entered.iter().all(|e| *e) {
            return;
        }
        let mut keep = entered.iter().copied();
        self.messages.retain(|_| keep.next().unwrap_or(false));
        let mut keep = entered.iter().copied();
        self.origins.retain(|_| keep.next().unwrap_or(false));
    }

    /// Each message with where it came from.
    fn into_pairs(self) -> impl Iterator<Item = (Message, Origin)> {
        self.messages.into_iter().zip(self.origins)
    }
}

/// The batch handed to the handler, and where each message came from.
pub(super) fn batch_of(works: Works) -> (Batch, Vec<Origin>) {
    (Batch::new(works.messages), works.origins)
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
    mut works: Works,
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
    works.retain_entered();
    if cx.commit_wait == CommitWait::Before {
        let mut granted = Works::with_capacity(works.len());
        for (message, origin) in works.into_pairs() {
            match claim(cx, &origin.tp, origin.epoch, origin.offset).await {
                None => return false,
                Some(true) => granted.push(message, origin),
                Some(false) => {
                    let sent = complete(
                        cx,
                        origin.tp,
                        origin.epoch,
                        origin.offset,
                        Settled::Done(Ack::Skip),
                    );
                    origin.gate.leave();
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
