//! [`Summary`](crate::Summary): what a consumer's run handled, counted.

use std::collections::BTreeMap;

use super::offsets::TopicPartition;

/// What a consumer did, returned by [`Consumer::run`](crate::Consumer::run).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Messages handled with [`Ack::Success`](crate::Ack::Success).
    pub succeeded: u64,
    /// Messages handled with [`Ack::Skip`](crate::Ack::Skip) (or dropped in
    /// [`CommitMode::AtMostOnce`](crate::CommitMode::AtMostOnce) because their commit failed).
    pub skipped: u64,
    /// Messages whose handler failed (whatever the error handler decided).
    pub failed: u64,
    /// Of the failed messages, those the error handler skipped
    /// ([`Decision::Continue`](crate::Decision::Continue)): their offsets were stored.
    pub failed_skipped: u64,
    /// In-flight messages abandoned when the shutdown grace period ran out;
    /// their offsets were not stored.
    pub abandoned: u64,
    /// Last committed offset (the next one to read) per partition.
    pub committed: BTreeMap<TopicPartition, i64>,
    /// Offsets stored but not committed when the consumer stopped.
    pub uncommitted: BTreeMap<TopicPartition, i64>,
    /// Partition assignments received (the first one included): more than
    /// one means the group rebalanced while this consumer ran.
    pub assignments: u64,
    /// Whether the consumer left its group and closed before the deadline.
    pub closed_cleanly: bool,
    /// [`CommitMode::Transactional`](crate::CommitMode::Transactional): transactions committed (with the
    /// offsets of what they read).
    pub transactions_committed: u64,
    /// [`CommitMode::Transactional`](crate::CommitMode::Transactional): transactions aborted (their messages
    /// were read again, or left to the partitions' next owner). The one
    /// open at a shutdown that could not finish it counts too.
    pub transactions_aborted: u64,
}
