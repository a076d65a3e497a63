//! Dispatch with backpressure: each fetched message is tracked and handed
//! to its lane; a partition at its in-flight bound (or all of them at the
//! total bound) is paused instead of blocking the poll loop, resumed once
//! drained, and reported when one unfinished message holds it too long.

use super::settle::settle_one;
use super::*;

impl Pipeline {
    /// Hands a fetched message to its lane; pauses its partition (or all of
    /// them) when the buffers are full.
    pub(crate) fn dispatch<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        message: Message,
    ) {
        let (Some(partition), Some(offset)) = (message.partition(), message.offset()) else {
            return;
        };
        let tp = match self.last_tp.take() {
            // The poll loop interns topic names: the pointer decides.
            Some(tp)
                if tp.partition == partition && Arc::ptr_eq(&tp.topic, message.topic_arc()) =>
            {
                tp
            }
            _ => TopicPartition::new(message.topic_arc().clone(), partition),
        };
        self.dispatch_at(consumer, shared, message, &tp, offset);
        self.last_tp = Some(tp);
    }

    pub(super) fn dispatch_at<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        mut message: Message,
        tp: &TopicPartition,
        offset: i64,
    ) {
        if self.not_before.is_some() {
            let Some(state) = self.partitions.get(tp) else {
                return;
            };
            if state.delayed.is_some() {
                return;
            }
            if self.hold_back(consumer, shared, tp, &message, offset) {
                return;
            }
        }
        let Some(state) = self.partitions.get_mut(tp) else {
            // Fetched before a revocation: the partition's new owner reads it.
            return;
        };
        if state.delayed.is_some() {
            // Fetched after a message held back: fetched again after it.
            return;
        }
        state.tracker.dispatched(offset);
        self.unsettled += 1;
        if let Some(txn) = &mut self.txn {
            txn.dispatched(tp, offset);
            if let Some(refused) = self
                .refused_outputs
                .iter_mut()
                .find(|r| r.tp == *tp && r.offset == offset)
            {
                if self.dispatcher.batches() {
                    let decision = *refused.decision.get_or_insert_with(|| {
                        shared.report(Error::Handler {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            offset,
                            source: refused.reason.to_string().into(),
                        })
                    });
                    settle_one(
                        state,
                        tp,
                        offset,
                        Settled::Failed(decision),
                        &mut self.unsettled,
                        &mut self.txn,
                        &mut self.pending,
                    );
                    return;
                }
                message
                    .extensions_mut()
                    .insert(OutputRefused(refused.reason.clone()));
            }
        }
        // Settled entries count too: behind one unfinished message they
        // pile up (`Order::PerKey`, `Unordered`) until it finishes.
        let full = state.tracker.tracked() >= self.limits.per_partition;
        if full && !state.paused {
            state.paused = true;
            pause(consumer, shared, std::slice::from_ref(tp));
        }
        let epoch = state.epoch;
        // Finished inline: settled right here, on the state at hand (no
        // completion to look its partition up again in `settle`).
        if let Some(settled) = self
            .dispatcher
            .dispatch(message, tp, offset, &state.gate, epoch)
        {
            settle_one(
                state,
                tp,
                offset,
                settled,
                &mut self.unsettled,
                &mut self.txn,
                &mut self.pending,
            );
        }
        if self.unsettled >= self.limits.total {
            let unpaused: Vec<TopicPartition> = self
                .partitions
                .iter_mut()
                .filter(|(_, s)| !s.paused)
                .map(|(tp, s)| {
                    s.paused = true;
                    tp.clone()
                })
                .collect();
            pause(consumer, shared, &unpaused);
        }
    }

    /// Reports each partition paused at its bound behind the same
    /// unfinished message for `stall_after` (once per stall): it cannot
    /// resume before that message finishes, since what is tracked only
    /// shrinks from the front. Waiting its turn (behind its key, for a
    /// permit) is ordinary backpressure, over in a few handler calls: only
    /// a message unfinished for that long is a stall. The poll loop calls
    /// this with the status publication.
    pub(crate) fn report_stalls(&mut self, shared: &Shared) {
        let now = Instant::now();
        for (tp, state) in self.partitions.iter_mut() {
            if !state.paused || state.closing || state.stalled {
                if !state.paused {
                    state.held_since = None;
                }
                continue;
            }
            let held = state
                .tracker
                .held()
                // Not about to resume (`resume_drained`).
                .filter(|_| state.tracker.tracked() > self.limits.per_partition / 2);
            let Some((offset, behind)) = held else {
                state.held_since = None;
                continue;
            };
            let since = match state.held_since {
                Some((o, since)) if o == offset => since,
                _ => {
                    state.held_since = Some((offset, now));
                    now
                }
            };
            if now.duration_since(since) < self.limits.stall_after {
                continue;
            }
            state.stalled = true;
            tracing::warn!(group = %shared.group, partition = %tp, offset, behind, "partition stalled behind an unfinished message");
            #[cfg(feature = "metrics")]
            if let Some(metrics) = &shared.metrics {
                metrics.record_stall(&tp.topic, tp.partition, Some(offset));
            }
            shared.report(Error::Stalled {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                behind,
            });
        }
    }

    pub(super) fn resume_drained<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
    ) {
        if self.unsettled > self.limits.total / 2 {
            return;
        }
        let low = self.limits.per_partition / 2;
        let drained: Vec<TopicPartition> = self
            .partitions
            .iter_mut()
            .filter(|(_, s)| {
                s.paused && !s.closing && s.delayed.is_none() && s.tracker.tracked() <= low
            })
            .map(|(tp, s)| {
                s.paused = false;
                if std::mem::take(&mut s.stalled) {
                    tracing::info!(group = %shared.group, partition = %tp, "stalled partition flows again");
                    #[cfg(feature = "metrics")]
                    if let Some(metrics) = &shared.metrics {
                        metrics.record_stall(&tp.topic, tp.partition, None);
                    }
                }
                tp.clone()
            })
            .collect();
        if drained.is_empty() {
            return;
        }
        let tpl = tpl_of(&drained);
        if let Err(e) = consumer.resume(&tpl) {
            shared.report(Error::kafka(Operation::Poll, e));
        }
    }
}
