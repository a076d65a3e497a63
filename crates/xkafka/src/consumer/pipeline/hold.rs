//! Holding messages that are not yet due (`ConsumerBuilder::not_before`):
//! a partition whose next message is early is paused and its fetch position
//! set back to that message, then resumed when it is due.

use super::*;

impl Pipeline {
    /// Messages are handled no earlier than `not_before` says.
    pub(crate) fn with_not_before(mut self, not_before: NotBeforeFn) -> Self {
        self.not_before = Some(not_before);
        self
    }

    /// Resumes the partitions whose delayed message is due; returns how
    /// long until the next one is (for the poll's timeout).
    pub(crate) fn resume_due<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
    ) -> Option<Duration> {
        if self.delayed == 0 {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for state in self.partitions.values_mut() {
            match state.delayed {
                Some(at) if at <= now => {
                    state.delayed = None;
                    self.delayed -= 1;
                }
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        self.resume_drained(consumer, shared);
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Holds `message` back when it is not due: pauses its partition until
    /// it is, and sets the fetch position back to it (what was fetched
    /// after it is dropped and fetched again). `false`: handle it now.
    pub(super) fn hold_back<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        tp: &TopicPartition,
        message: &Message,
        offset: i64,
    ) -> bool {
        let Some(not_before) = &self.not_before else {
            return false;
        };
        let Some(wait) = not_before(message)
            .and_then(|due| due.duration_since(std::time::SystemTime::now()).ok())
            .filter(|w| !w.is_zero())
        else {
            return false;
        };
        let Some(state) = self.partitions.get_mut(tp) else {
            return false;
        };
        if !state.paused {
            state.paused = true;
            pause(consumer, shared, std::slice::from_ref(tp));
        }
        if let Err(e) = consumer.seek(
            &tp.topic,
            tp.partition,
            rdkafka::Offset::Offset(offset),
            SEEK_TIMEOUT,
        ) {
            // Not read again from there: handling it now is the only way
            // not to skip it.
            tracing::warn!(group = %shared.group, partition = %tp, offset, %e, "cannot hold a message back until it is due; handling it now");
            return false;
        }
        state.delayed = Some(Instant::now() + wait);
        self.delayed += 1;
        true
    }
}
