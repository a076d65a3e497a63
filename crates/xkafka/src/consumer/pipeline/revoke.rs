//! Revocation and shutdown: draining a partition's (or every partition's)
//! handlers within a deadline, then committing what finished.

use super::*;

impl Pipeline {
    /// Waits (settling as completions arrive) until no handler of
    /// `partitions` (all when `None`) is running, or `deadline`.
    pub(super) fn drain<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        partitions: Option<&BTreeSet<TopicPartition>>,
        deadline: Instant,
    ) {
        loop {
            let running: usize = self
                .partitions
                .iter()
                .filter(|(tp, _)| partitions.is_none_or(|set| set.contains(*tp)))
                .map(|(_, s)| s.gate.running())
                .sum();
            let now = Instant::now();
            if running == 0 || now >= deadline {
                self.settle(consumer, shared);
                return;
            }
            let wait = (deadline - now).min(DRAIN_TICK);
            let first = self.completions.recv_timeout(wait).ok();
            self.settle_with(consumer, shared, first);
        }
    }

    /// A clean revocation: stop dispatching the partitions, let their running
    /// handlers finish within `grace`, store and commit their watermarks.
    /// A lost partition is dropped without waiting or committing: another
    /// member may own it already.
    pub(crate) fn revoke<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        partitions: &BTreeSet<TopicPartition>,
        lost: bool,
        grace: Duration,
    ) {
        if self.txn.is_some() {
            self.revoke_transactional(consumer, shared, partitions, lost, grace);
            return;
        }
        let mut unpaused = Vec::new();
        for tp in partitions {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.gate.close();
                state.closing = true;
                if !state.paused {
                    state.paused = true;
                    unpaused.push(tp.clone());
                }
            }
        }
        pause(consumer, shared, &unpaused);
        if !lost {
            self.drain(consumer, shared, Some(partitions), Instant::now() + grace);
            let pending = shared.ledger().uncommitted(Some(partitions));
            commit_sync(consumer, shared, pending);
        }
        for tp in partitions {
            if let Some(state) = self.partitions.remove(tp) {
                if state.delayed.is_some() {
                    self.delayed -= 1;
                }
                self.unsettled -= state.tracker.unsettled();
            }
            self.dispatcher.close_partition(tp);
        }
    }

    /// Shutdown: stop dispatching everything, let running handlers finish
    /// until `deadline`, then abort the rest. Returns how many were aborted.
    ///
    /// Transactional: every dispatched message may finish (queued ones
    /// too) until `deadline`; if all did and none failed the consumer for
    /// good, the transaction is to be committed with their offsets, else
    /// aborted ([`take_ending`](Self::take_ending); the close thread does
    /// it, before the consumer leaves its group).
    pub(crate) fn stop<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        deadline: Instant,
    ) -> u64 {
        let complete = if self.txn.is_some() {
            let all: Vec<TopicPartition> = self.partitions.keys().cloned().collect();
            self.pause_closing(consumer, shared, all.iter());
            self.barrier_within(consumer, shared, deadline, false)
        } else {
            false
        };
        let mut unpaused = Vec::new();
        for (tp, state) in self.partitions.iter_mut() {
            state.gate.close();
            state.closing = true;
            if !state.paused {
                state.paused = true;
                unpaused.push(tp.clone());
            }
        }
        pause(consumer, shared, &unpaused);
        self.drain(consumer, shared, None, deadline);
        let abandoned: usize = self.partitions.values().map(|s| s.gate.running()).sum();
        self.dispatcher.abort_all();
        // Lanes waiting for a manual commit are gone with the abort.
        self.settle(consumer, shared);
        if let Some(transaction) = self.txn.take() {
            let commit =
                (complete && !transaction.poisoned).then(|| self.transaction_offsets(&transaction));
            self.ending = Some(Ending {
                transaction,
                commit,
            });
        }
        abandoned as u64
    }

    /// Pauses `partitions` and marks them closing (they stay paused), for
    /// a transactional revoke or stop.
    pub(super) fn pause_closing<'a, C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        partitions: impl Iterator<Item = &'a TopicPartition>,
    ) {
        let mut unpaused = Vec::new();
        for tp in partitions {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.closing = true;
                if !state.paused {
                    state.paused = true;
                    unpaused.push(tp.clone());
                }
            }
        }
        pause(consumer, shared, &unpaused);
    }
}
