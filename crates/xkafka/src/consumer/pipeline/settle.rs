//! Settling: completions from the lanes move the offset trackers, count
//! outcomes, store offsets and commit them (synchronously for manual and
//! at-most-once commits).

use super::*;

impl Pipeline {
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

    pub(super) fn settle_with<C: ConsumerContext>(
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

    /// At-most-once: commits one past the highest claimed offset of each
    /// partition (not the watermark: a lower message still queued in another
    /// lane must not be read twice either), then lets the claiming lanes go.
    pub(super) fn commit_claims<C: ConsumerContext>(
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
    pub(super) fn apply_all(
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
}

/// Applies a finished message of the assignment `state` is: counts its
/// outcome, settles its offset unless its failure holds it, notes the
/// partition as changed.
pub(super) fn settle_one(
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
