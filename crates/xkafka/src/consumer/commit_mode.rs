//! [`CommitMode`](crate::CommitMode): when offsets are committed, and so which delivery
//! guarantee holds.

/// When offsets are committed, and so which delivery guarantee holds.
///
/// In every mode the offset of a message is stored only after its handler
/// (with the middleware) finished with success or skip, or the error handler
/// chose to skip it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CommitMode {
    /// **At-least-once.** librdkafka commits the stored offsets in the
    /// background every `auto.commit.interval.ms` (default 5 s); revoked
    /// partitions and shutdown commit synchronously. After a crash, up to one
    /// interval of processed messages is delivered again. Fastest.
    #[default]
    Auto,
    /// **At-least-once, one message at a time** (Go xkafka's
    /// `ManualCommit(true)`): a synchronous commit after each processed
    /// message, before the next one is read. After a crash at most the
    /// in-flight message is delivered again. One commit round trip per
    /// message. (The Go documentation calls this at-most-once; it is not:
    /// the commit comes *after* processing.)
    Manual,
    /// **At-most-once.** The offset is stored and committed synchronously
    /// *before* the handler runs: a message whose processing crashes is not
    /// delivered again (it is lost instead). If that commit fails, the
    /// message is not handled (and counted as skipped).
    AtMostOnce,
    /// **Exactly-once** consume-transform-produce, set by
    /// [`ConsumerBuilder::transactional`](crate::ConsumerBuilder::transactional): what the handlers publish through
    /// the transactional producer (dead letters included) and the offsets of
    /// the messages they handled commit in one Kafka transaction, so a
    /// `read_committed` reader of the output sees each input's output once,
    /// whatever crashes, rebalances or zombies happen. One transaction
    /// covers many messages (see
    /// [`transaction_interval`](crate::ConsumerBuilder::transaction_interval)).
    Transactional,
}
