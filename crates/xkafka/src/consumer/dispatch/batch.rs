//! Batch assembly on the poll thread (per lane, by size or by a window from
//! the batch's first message), and batches handled in their lanes.

use super::*;

impl Dispatcher {
    /// Adds a message to its lane's batch; a full batch is ready.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill(
        &mut self,
        key: LaneKey,
        message: Message,
        tp: &TopicPartition,
        offset: i64,
        epoch: u64,
        gate: &Arc<Gate>,
        size: usize,
        window: Duration,
    ) {
        let full = match self.filling.get_mut(&key) {
            Some(filling) => {
                filling.works.push(message, tp, offset, epoch, gate);
                filling.works.len() >= size
            }
            None => {
                let mut works = Works::with_capacity(size.min(1024));
                works.txn = self.context.generation();
                works.push(message, tp, offset, epoch, gate);
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
    origins: Origins,
    /// Transactional: the transaction the batch was filled in (a barrier
    /// hands every batch over before a transaction ends).
    pub(super) txn: Option<u64>,
}

impl Works {
    fn with_capacity(capacity: usize) -> Self {
        Works {
            messages: Vec::with_capacity(capacity),
            origins: Origins {
                runs: Vec::new(),
                offsets: Vec::with_capacity(capacity),
            },
            txn: None,
        }
    }

    fn push(
        &mut self,
        message: Message,
        tp: &TopicPartition,
        offset: i64,
        epoch: u64,
        gate: &Arc<Gate>,
    ) {
        self.messages.push(message);
        self.origins.push(tp, offset, epoch, gate);
    }

    pub(super) fn len(&self) -> usize {
        self.origins.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.origins.len() == 0
    }

    /// Counts each message's handler in (see `Gate::enter`), a run at a
    /// time, and drops the messages of closed gates.
    pub(super) fn retain_entered(&mut self) {
        let entered: Vec<bool> = self
            .origins
            .runs
            .iter()
            .map(|run| run.gate.enter_many(run.len))
            .collect();
        if entered.iter().all(|e| *e) {
            return;
        }
        let old = std::mem::take(&mut self.origins);
        let messages = std::mem::take(&mut self.messages);
        let mut keep = old
            .runs
            .iter()
            .zip(&entered)
            .flat_map(|(run, entered)| std::iter::repeat_n(*entered, run.len));
        for (message, (run, offset)) in messages.into_iter().zip(old.iter()) {
            if keep.next().unwrap_or(false) {
                self.push(message, &run.tp, offset, run.epoch, &run.gate);
            }
        }
    }

    /// Each message with its run and offset.
    fn into_pairs(self) -> impl Iterator<Item = (Message, (TopicPartition, u64, Arc<Gate>), i64)> {
        let origins: Vec<_> = self
            .origins
            .iter()
            .map(|(run, offset)| ((run.tp.clone(), run.epoch, run.gate.clone()), offset))
            .collect();
        self.messages
            .into_iter()
            .zip(origins)
            .map(|(message, (run, offset))| (message, run, offset))
    }
}

/// Where the messages of a batch came from, in step with them: runs of
/// messages of one assignment (a partition's gate and epoch) — a batch is
/// usually one run — so a message costs its offset, not two `Arc` clones
/// and, later, two atomic gate updates.
#[derive(Default)]
pub(super) struct Origins {
    runs: Vec<Run>,
    offsets: Vec<i64>,
}

/// Consecutive messages of one assignment of one partition.
struct Run {
    tp: TopicPartition,
    epoch: u64,
    gate: Arc<Gate>,
    len: usize,
}

impl Origins {
    fn push(&mut self, tp: &TopicPartition, offset: i64, epoch: u64, gate: &Arc<Gate>) {
        match self.runs.last_mut() {
            Some(run) if run.epoch == epoch && Arc::ptr_eq(&run.gate, gate) => run.len += 1,
            _ => self.runs.push(Run {
                tp: tp.clone(),
                epoch,
                gate: gate.clone(),
                len: 1,
            }),
        }
        self.offsets.push(offset);
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Each message's run and offset, in order.
    fn iter(&self) -> impl Iterator<Item = (&Run, i64)> {
        self.runs
            .iter()
            .flat_map(|run| std::iter::repeat_n(run, run.len))
            .zip(self.offsets.iter().copied())
    }

    /// Counts every message's handler out (see `Gate::leave`).
    pub(super) fn leave_all(&self) {
        for run in &self.runs {
            run.gate.leave_many(run.len);
        }
    }
}

/// The batch handed to the handler, and where each message came from.
pub(super) fn batch_of(works: Works) -> (Batch, Origins) {
    (Batch::new(works.messages), works.origins)
}

/// Each message's outcome: the one the handler recorded for it, else the
/// batch's. Failures go to the error handler (a whole-batch failure once,
/// for its first message).
pub(super) fn batch_completions(
    cx: &LaneContext,
    batch: &Batch,
    origins: &Origins,
    txn: Option<u64>,
    outcome: Result<Ack, BoxError>,
) -> Vec<Completion> {
    let recorded = batch.take_outcomes();
    if cx.aborted(txn) {
        // As in `settle_outcome`: read and handled again, nothing to report.
        return origins
            .iter()
            .map(|(run, offset)| Completion {
                tp: run.tp.clone(),
                epoch: run.epoch,
                offset,
                settled: Settled::Done(Ack::Skip),
                committed: None,
            })
            .collect();
    }
    let overall = outcome.map_err(|source| {
        let (first, offset) = origins.iter().next().expect("a batch is never empty");
        cx.shared.report(handler_error(&first.tp, offset, source))
    });
    origins
        .iter()
        .zip(recorded)
        .map(|((run, offset), recorded)| {
            let settled = match (recorded, &overall) {
                (Some(Ok(ack)), _) => Settled::Done(ack),
                (Some(Err(source)), _) => {
                    Settled::Failed(cx.shared.report(handler_error(&run.tp, offset, source)))
                }
                (None, Ok(ack)) => Settled::Done(*ack),
                (None, Err(decision)) => Settled::Failed(*decision),
            };
            Completion {
                tp: run.tp.clone(),
                epoch: run.epoch,
                offset,
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
    backlog: &Arc<AtomicUsize>,
) -> bool {
    let Some(_permit) = cx.permits.acquire(backlog).await else {
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
        granted.txn = works.txn;
        for (message, (tp, epoch, gate), offset) in works.into_pairs() {
            match claim(cx, &tp, epoch, offset).await {
                None => return false,
                Some(true) => granted.push(message, &tp, offset, epoch, &gate),
                Some(false) => {
                    let sent = complete(cx, tp, epoch, offset, Settled::Done(Ack::Skip));
                    gate.leave();
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
    let txn = works.txn;
    let (batch, origins) = batch_of(works);
    let outcome = call_caught(service, batch.clone(), txn).await;
    let mut completions = batch_completions(cx, &batch, &origins, txn, outcome);
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
    origins.leave_all();
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

    fn message(tp: &TopicPartition, offset: i64) -> Message {
        Message::fetched(
            tp.topic.clone(),
            tp.partition,
            offset,
            None,
            Some(format!("{}-{offset}", tp.partition).into()),
            crate::Headers::new(),
            None,
            "g".into(),
        )
    }

    #[test]
    fn origins_keep_runs_of_one_assignment_and_a_closed_gate_drops_only_its_messages() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let (gate_a, gate_b) = (Gate::new(), Gate::new());
        let mut works = Works::with_capacity(4);
        for (tp, gate, offset) in [(&a, &gate_a, 0), (&a, &gate_a, 1), (&b, &gate_b, 5)] {
            works.push(message(tp, offset), tp, offset, 7, gate);
        }
        // Back to the first assignment: a new run (order is kept).
        works.push(message(&a, 2), &a, 2, 7, &gate_a);
        // Same partition, a later assignment (new gate and epoch): a new run.
        let gate_a2 = Gate::new();
        works.push(message(&a, 0), &a, 0, 8, &gate_a2);
        assert_eq!(works.len(), 5);
        assert_eq!(works.origins.runs.len(), 4, "a, b, a, a (reassigned)");
        let seen: Vec<(i32, i64, u64)> = works
            .origins
            .iter()
            .map(|(run, offset)| (run.tp.partition, offset, run.epoch))
            .collect();
        assert_eq!(
            seen,
            [(0, 0, 7), (0, 1, 7), (1, 5, 7), (0, 2, 7), (0, 0, 8)]
        );

        // b was revoked: its message goes, every other is counted in.
        gate_b.close();
        works.retain_entered();
        assert_eq!(
            (gate_a.running(), gate_b.running(), gate_a2.running()),
            (3, 0, 1)
        );
        let values: Vec<String> = works
            .messages
            .iter()
            .map(|m| m.value_str().unwrap().to_owned())
            .collect();
        assert_eq!(values, ["0-0", "0-1", "0-2", "0-0"], "in order, b's gone");
        let offsets: Vec<i64> = works.origins.iter().map(|(_, o)| o).collect();
        assert_eq!(offsets, [0, 1, 2, 0], "in step with the messages");
        assert_eq!(
            works.origins.runs.len(),
            2,
            "a's two runs merged once b left"
        );

        let (batch, origins) = batch_of(works);
        assert_eq!(batch.len(), 4);
        origins.leave_all();
        assert_eq!((gate_a.running(), gate_a2.running()), (0, 0));
    }
}
