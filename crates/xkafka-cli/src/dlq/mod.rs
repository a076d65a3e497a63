//! `xkafka dlq inspect` and `xkafka dlq replay`.

mod holder;
mod inspect;
mod marks;
mod replay;

pub(crate) use inspect::inspect;
pub(crate) use replay::replay;

/// What every header of [`xkafka::dlq::headers`] starts with: a replayed
/// copy carries none of them.
pub(crate) const DLQ_PREFIX: &str = "x-dlq-";
