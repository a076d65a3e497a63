//! How a handler settles a message: success, skip, or failure.

use crate::BoxError;

/// What a handler did with a message, when it did not fail.
///
/// A failure is the `Err` side of the handler's result; together they are the
/// seed's three outcomes:
///
/// | outcome | offset may be stored | counted as |
/// |---|---|---|
/// | `Ok(Ack::Success)` | yes | success |
/// | `Ok(Ack::Skip)` | yes | skipped (processed nothing, on purpose) |
/// | `Err(error)` | **no**: the consumer's error handler decides | failure |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ack {
    /// Processed.
    Success,
    /// Deliberately not processed (e.g. a message type this service ignores,
    /// or one moved to a dead-letter topic). The offset moves on.
    Skip,
}

/// Converts a handler's return value into its outcome.
///
/// Implemented for `()` (success), [`Ack`], and `Result<T, E>` where `T`
/// converts and `E: Into<BoxError>` — so a handler may return
/// `Result<(), MyError>`, `Result<Ack, anyhow::Error>`, or just `()`.
pub trait IntoOutcome {
    /// The outcome: `Ok(ack)` or the failure.
    fn into_outcome(self) -> Result<Ack, BoxError>;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Result<Ack, BoxError> {
        Ok(Ack::Success)
    }
}

impl IntoOutcome for Ack {
    fn into_outcome(self) -> Result<Ack, BoxError> {
        Ok(self)
    }
}

impl<T, E> IntoOutcome for Result<T, E>
where
    T: IntoOutcome,
    E: Into<BoxError>,
{
    fn into_outcome(self) -> Result<Ack, BoxError> {
        self.map_err(Into::into).and_then(IntoOutcome::into_outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(().into_outcome().unwrap(), Ack::Success);
        assert_eq!(Ack::Skip.into_outcome().unwrap(), Ack::Skip);
        let ok: Result<(), std::io::Error> = Ok(());
        assert_eq!(ok.into_outcome().unwrap(), Ack::Success);
        let err: Result<Ack, &str> = Err("boom");
        assert_eq!(err.into_outcome().unwrap_err().to_string(), "boom");
    }
}
