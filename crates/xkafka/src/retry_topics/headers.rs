//! The headers a message carries in a retry tier.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Message;

/// Its own failed attempts so far: 1 after its first failure. A
/// message that followed its key into the tiers without being handled
/// keeps its count (0 if it never failed): its retry budget is spent
/// by its own failures only.
pub const ATTEMPT: &str = "x-retry-attempt";
/// The tier it is in (1-based). Copies written before this header
/// existed carry their tier in [`ATTEMPT`].
pub const TIER: &str = "x-retry-tier";
/// When it is due, milliseconds since the Unix epoch.
pub const DUE: &str = "x-retry-due";
/// The topic it was first consumed from.
pub const ORIGINAL_TOPIC: &str = "x-retry-original-topic";
/// Its partition there.
pub const ORIGINAL_PARTITION: &str = "x-retry-original-partition";
/// Its offset there.
pub const ORIGINAL_OFFSET: &str = "x-retry-original-offset";
/// Its original timestamp, milliseconds since the Unix epoch.
pub const ORIGINAL_TIMESTAMP: &str = "x-retry-original-timestamp";
/// The first error, as text.
pub const FIRST_ERROR: &str = "x-retry-first-error";
/// The last error, as text.
pub const LAST_ERROR: &str = "x-retry-last-error";
/// When it first failed, milliseconds since the Unix epoch.
pub const FIRST_FAILURE: &str = "x-retry-first-failure";
/// It was moved without being handled, behind an earlier message of its
/// key (with key order kept): that message's original offset.
pub const FOLLOWS: &str = "x-retry-follows";

/// Every header above, which a copy for the next tier replaces.
const ALL_HEADERS: [&str; 11] = [
    ATTEMPT,
    TIER,
    DUE,
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    FIRST_ERROR,
    LAST_ERROR,
    FIRST_FAILURE,
    FOLLOWS,
];

/// When a message in a retry tier is due (its [`DUE`] header);
/// `None` for any other message. Give it to
/// [`ConsumerBuilder::not_before`](crate::ConsumerBuilder::not_before) on
/// the consumer of the tiers.
pub fn due(message: &Message) -> Option<SystemTime> {
    let ms: u64 = message.headers().get_str(DUE)?.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// A message to `topic` with `message`'s key, value and headers, the
/// retry headers left out.
pub(super) fn carry(message: &Message, topic: impl Into<Arc<str>>) -> crate::MessageBuilder {
    let own: crate::Headers = message
        .headers()
        .iter()
        .filter(|x| !ALL_HEADERS.contains(&x.name()))
        .cloned()
        .collect();
    let mut b = Message::builder(topic).headers(own);
    if let Some(key) = message.key() {
        b = b.key(key.clone());
    }
    if let Some(value) = message.value() {
        b = b.value(value.clone());
    }
    b
}
