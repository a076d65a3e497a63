//! [`KitError`]: what a test kit wait did not see happen in time.

use std::time::Duration;

use crate::Error;

/// What a test kit wait did not see happen in time, or the consumer's own
/// error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KitError {
    /// The wait's timeout passed first.
    #[error("{waited_for} did not happen within {timeout:?}: {got}")]
    Timeout {
        /// What was awaited.
        waited_for: String,
        /// What had happened by then.
        got: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A read found more messages than the test expected: duplicates (a
    /// handler that published twice, a redelivery the service did not
    /// deduplicate) or stray publishes. See [`TestCluster::read_exactly`](crate::testing::TestCluster::read_exactly).
    #[error("expected {expected} messages in {topic}, found {found}: {surplus}")]
    TooMany {
        /// The topic read.
        topic: String,
        /// How many the test expected.
        expected: usize,
        /// How many the topic holds.
        found: usize,
        /// The messages alike (same partition, key, value and headers as
        /// an earlier one), or else that none are alike.
        surplus: String,
    },
    /// The consumer (or a client) failed.
    #[error(transparent)]
    Kafka(#[from] Error),
}
