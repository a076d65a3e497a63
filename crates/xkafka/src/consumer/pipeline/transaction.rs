//! The transaction barrier (`CommitMode::Transactional`): when a
//! transaction ends, waiting for its handlers, committing its offsets and
//! output together, or aborting and rewinding the partitions it read; and
//! revocation while a transaction is open.

use super::*;

impl Pipeline {
    /// Transactional mode: what handlers publish and the offsets they
    /// consumed commit together in `txn`.
    pub(crate) fn with_transaction(mut self, txn: Transaction) -> Self {
        self.txn = Some(txn);
        self
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
    pub(super) fn barrier<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        deadline: Instant,
    ) -> bool {
        self.barrier_within(consumer, shared, deadline, true)
    }

    pub(super) fn barrier_within<C: ConsumerContext>(
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
    pub(super) fn transaction_offsets(&self, txn: &Transaction) -> Vec<(TopicPartition, i64)> {
        txn.partitions()
            .filter_map(|tp| Some((tp.clone(), self.partitions.get(tp)?.tracker.watermark()?)))
            .collect()
    }

    /// Commits the open transaction (after a barrier) and opens the next;
    /// an abortable failure aborts and rewinds, a fatal one (fenced) stops
    /// the consumer. Returns whether it committed.
    pub(super) fn commit_transaction<C: ConsumerContext>(
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
    pub(super) fn abort_transaction<C: ConsumerContext>(
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
    pub(super) fn rewind<C: ConsumerContext>(
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

    /// A transactional revocation. The transaction holds the output of
    /// every partition's messages, so it ends here: at a barrier within
    /// `grace`, committed with every partition's offsets (the revoked ones'
    /// last); if handlers do not finish in time, aborted and rewound. A lost
    /// partition may be another member's already: the transaction is
    /// aborted without waiting.
    pub(super) fn revoke_transactional<C: ConsumerContext>(
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
