//! Where a published message landed.

use std::sync::Arc;

use crate::message::Timestamp;

/// The broker's acknowledgement of a published message: its topic, partition
/// and offset.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The topic written to.
    pub topic: Arc<str>,
    /// The partition the record landed in.
    pub partition: i32,
    /// The record's offset in that partition.
    pub offset: i64,
    /// The record's timestamp, if known.
    pub timestamp: Option<Timestamp>,
}

impl Delivery {
    /// A delivery report (also useful to fake a producer in tests).
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Self {
        Delivery {
            topic: topic.into(),
            partition,
            offset,
            timestamp: None,
        }
    }

    /// With a timestamp.
    pub fn with_timestamp(mut self, timestamp: Option<Timestamp>) -> Self {
        self.timestamp = timestamp;
        self
    }
}
