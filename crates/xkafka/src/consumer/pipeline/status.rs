//! Status publishing: the poll thread's view of each partition (position,
//! stored and committed offsets, in flight, pauses, the oldest unfinished
//! message) written to the status board for `StatusHandle` readers.

use super::*;

impl Pipeline {
    /// Publishes the status of every assigned partition (for
    /// `StatusHandle`s): local figures only, no broker round trip.
    pub(crate) fn publish_status<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        ages: &mut Ages,
    ) {
        let (assigned, committed, counters) = {
            let ledger = shared.ledger();
            (
                ledger.assigned.clone(),
                ledger.committed.clone(),
                crate::consumer::status::Counters {
                    succeeded: ledger.succeeded,
                    skipped: ledger.skipped,
                    failed: ledger.failed,
                    assignments: ledger.assignments,
                    transactions_committed: ledger.transactions_committed,
                    transactions_aborted: ledger.transactions_aborted,
                },
            )
        };
        ages.retain(&assigned);
        let positions = crate::consumer::status::fetch_positions(consumer, &assigned);
        let partitions = assigned
            .iter()
            .map(|tp| {
                let state = self.partitions.get(tp);
                let tracker = state.map(|s| &s.tracker);
                let committed = committed.get(tp).copied();
                let high = crate::convert::cached_high_watermark(consumer, &tp.topic, tp.partition);
                let paused = state.and_then(|s| match (s.paused, s.closing, s.stalled) {
                    (_, true, _) => Some(PauseReason::Closing),
                    _ if s.delayed.is_some() => Some(PauseReason::NotDue),
                    (true, _, true) => Some(PauseReason::Stalled),
                    (true, _, false) => Some(PauseReason::Backpressure),
                    (false, _, _) => None,
                });
                // librdkafka's has none just after an assignment or a seek.
                let position =
                    (positions.get(tp).copied()).max(tracker.and_then(OffsetTracker::end));
                PartitionStatus {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    position,
                    stored: tracker.and_then(OffsetTracker::watermark),
                    committed,
                    high_watermark: high,
                    lag: high.zip(committed).map(|(h, c)| (h - c).max(0)),
                    fetchable: high
                        .zip(position.or(committed))
                        .map(|(h, p)| (h - p).max(0)),
                    in_flight: tracker.map_or(0, OffsetTracker::unsettled),
                    paused,
                    oldest_unfinished: ages
                        .head(tp, tracker.and_then(OffsetTracker::oldest_unsettled)),
                    last_handled_ago: ages.handled(tp, tracker.map_or(0, OffsetTracker::finished)),
                    committed_unchanged_for: ages.committed(tp, committed),
                }
            })
            .collect();
        shared.board.publish(Published {
            at: Instant::now(),
            member_id: crate::convert::member_id(consumer),
            partitions,
            counters,
        });
    }
}
