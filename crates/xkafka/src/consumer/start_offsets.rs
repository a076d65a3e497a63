//! Where a transactional consumer starts reading a partition it was just
//! assigned: the group's committed offset, asked for here, on the poll
//! thread, rather than by librdkafka's assignment state machine.
//!
//! Why: a member killed inside its transaction's commit leaves a pending
//! transactional offset commit, and until the broker aborts that
//! transaction (after its `transaction.timeout.ms`) an offset query with
//! `isolation.level=read_committed` gets `UNSTABLE_OFFSET_COMMIT`.
//! librdkafka (2.12) retries such a query, but when a rebalance lands
//! while it is in flight, it puts the partition back on its pending list
//! with the *invalid* offset, which its state machine reads as "no
//! committed offset": the partition starts from `auto.offset.reset`, and
//! everything since the beginning is handled, and committed, again. The
//! storm of transactional members showed it (2,438 inputs with two
//! committed outputs); `tests/transactions.rs` reproduces it with one
//! pending commit and one rebalance.
//!
//! The cure: assign with explicit offsets. The query is repeated, in short
//! slices so that a shutdown is not held up, until the offsets are stable;
//! a partition without a committed offset starts where
//! `auto.offset.reset` says. Waiting blocks this member's rebalance
//! callback, as the Java consumer's `poll` waits for positions; it is
//! bounded below `max.poll.interval.ms` (past that librdkafka would leave
//! the group), after which the partitions are handed to librdkafka's own
//! query as before.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::shared::Shared;
use crate::config::Config;

/// One offset query: short, so that a shutdown requested meanwhile is seen
/// within it.
const SLICE: Duration = Duration::from_millis(500);
/// librdkafka's default `max.poll.interval.ms`.
const DEFAULT_MAX_POLL_INTERVAL: Duration = Duration::from_secs(300);

/// Where a partition with no committed offset starts (`auto.offset.reset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reset {
    Beginning,
    End,
    /// `error`: left to librdkafka, which raises it.
    Error,
}

impl Reset {
    fn parse(value: Option<&str>) -> Reset {
        match value.map(str::to_ascii_lowercase).as_deref() {
            Some("smallest" | "earliest" | "beginning") => Reset::Beginning,
            Some("error") => Reset::Error,
            // librdkafka's default is `largest`.
            _ => Reset::End,
        }
    }

    fn offset(self) -> Offset {
        match self {
            Reset::Beginning => Offset::Beginning,
            Reset::End => Offset::End,
            Reset::Error => Offset::Invalid,
        }
    }
}

/// How a transactional consumer resolves the start of its new partitions.
#[derive(Clone, Debug)]
pub(crate) struct StartOffsets {
    reset: Reset,
    /// How long to wait for unstable offsets at most.
    max_wait: Duration,
}

impl StartOffsets {
    pub(crate) fn from_config(config: &Config) -> Self {
        let max_poll = config
            .get("max.poll.interval.ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_MAX_POLL_INTERVAL, Duration::from_millis);
        StartOffsets {
            reset: Reset::parse(config.get("auto.offset.reset")),
            // A margin for the rest of the rebalance callback.
            max_wait: max_poll.mul_f64(0.8),
        }
    }

    /// Sets each partition of `tpl` to start at the group's committed
    /// offset (or where `auto.offset.reset` says when it has none), waiting
    /// while a pending transaction holds them. Partitions it cannot resolve
    /// (shutdown, the bound, a per-partition error) keep the invalid offset:
    /// librdkafka queries them itself.
    pub(crate) fn resolve<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        shared: &Shared,
        tpl: &mut TopicPartitionList,
    ) {
        if tpl.count() == 0 {
            return;
        }
        let started = Instant::now();
        let mut warned = false;
        let committed = loop {
            match consumer.committed_offsets(tpl.clone(), SLICE) {
                Ok(committed) => break committed,
                Err(err) => {
                    if shared.shutdown.is_shutting_down() {
                        return;
                    }
                    if started.elapsed() >= self.max_wait {
                        tracing::warn!(group = %shared.group, %err, waited = ?started.elapsed(), "the group's committed offsets stayed unknown; librdkafka queries them itself");
                        return;
                    }
                    if !warned && is_timeout(&err) {
                        warned = true;
                        tracing::warn!(group = %shared.group, partitions = tpl.count(), "waiting for the group's committed offsets: a pending transaction (a member that died in its commit) holds them until the broker ends it");
                    } else if !is_timeout(&err) {
                        // Not a slow answer but a failed one: pace the retries.
                        tracing::debug!(group = %shared.group, %err, "committed offsets: retrying");
                        std::thread::sleep(
                            SLICE.min(self.max_wait.saturating_sub(started.elapsed())),
                        );
                    }
                }
            }
        };
        if warned {
            tracing::info!(group = %shared.group, waited = ?started.elapsed(), "the group's committed offsets are stable again");
        }
        for e in committed.elements() {
            let start = match (e.error(), e.offset()) {
                (Ok(()), Offset::Offset(o)) if o >= 0 => Offset::Offset(o),
                (Ok(()), _) => self.reset.offset(),
                (Err(err), _) => {
                    tracing::warn!(group = %shared.group, topic = e.topic(), partition = e.partition(), %err, "committed offset unknown; librdkafka queries it itself");
                    Offset::Invalid
                }
            };
            // Only fails for a partition not in the list; it is.
            let _ = tpl.set_partition_offset(e.topic(), e.partition(), start);
        }
    }
}

fn is_timeout(err: &KafkaError) -> bool {
    err.rdkafka_error_code() == Some(RDKafkaErrorCode::OperationTimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_offset_reset_maps_to_a_start_offset_with_librdkafkas_default() {
        for (value, reset) in [
            (Some("earliest"), Reset::Beginning),
            (Some("smallest"), Reset::Beginning),
            (Some("Beginning"), Reset::Beginning),
            (Some("latest"), Reset::End),
            (Some("largest"), Reset::End),
            (Some("end"), Reset::End),
            (Some("error"), Reset::Error),
            (None, Reset::End),
        ] {
            assert_eq!(Reset::parse(value), reset, "{value:?}");
        }
        assert_eq!(Reset::Error.offset(), Offset::Invalid);
    }

    #[test]
    fn the_wait_stays_below_the_max_poll_interval() {
        let config: Config = [("max.poll.interval.ms", "10000")].into_iter().collect();
        let start = StartOffsets::from_config(&config);
        assert_eq!(start.max_wait, Duration::from_secs(8));
        assert_eq!(start.reset, Reset::End);
        let start = StartOffsets::from_config(&Config::new());
        assert_eq!(start.max_wait, Duration::from_secs(240));
    }
}
