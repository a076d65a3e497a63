//! The marks filtered replays leave in their commit metadata.

use crate::client::{runtime, Conn, Failure};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::collections::HashMap;

/// What the commit metadata of a partition starts with when it holds the
/// marks of filtered replays.
pub(super) const MARKS_KEY: &str = "xkafka-dlq-replayed";

/// Kafka refuses commit metadata over `offset.metadata.max.bytes` (4096 by
/// default): the marks stay well under it.
pub(super) const MAX_MARKS_BYTES: usize = 3000;

/// A filtered replay's mark on one partition: every dead letter from the
/// group's committed offset up to `upto` whose error matches `re` was
/// replayed. The committed offset itself only moves past records that are
/// done for every replay, so a replay with another filter (or none) still
/// reads the records this one left, and skips the ones it replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) re: String,
    pub(super) upto: i64,
}

/// Parses a partition's commit metadata (anything that is not ours holds
/// no marks).
pub(super) fn parse_marks(metadata: &str) -> Vec<Mark> {
    let Ok(doc) = serde_json::from_str::<Value>(metadata) else {
        return Vec::new();
    };
    doc.get(MARKS_KEY)
        .and_then(Value::as_array)
        .map(|marks| {
            marks
                .iter()
                .filter_map(|m| {
                    Some(Mark {
                        re: m.get("where")?.as_str()?.to_owned(),
                        upto: m.get("upto")?.as_i64()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn marks_metadata(marks: &[Mark]) -> String {
    if marks.is_empty() {
        return String::new();
    }
    let marks: Vec<Value> = marks
        .iter()
        .map(|m| json!({"where": m.re, "upto": m.upto}))
        .collect();
    json!({ MARKS_KEY: marks }).to_string()
}

/// The marks to commit beside `position`: those still ahead of it, `own`
/// merged in (the same filter keeps the furthest mark).
pub(super) fn next_marks(earlier: &[Mark], own: Option<&Mark>, position: i64) -> Vec<Mark> {
    let mut marks: Vec<Mark> = earlier.to_vec();
    if let Some(own) = own {
        match marks.iter_mut().find(|m| m.re == own.re) {
            Some(m) => m.upto = m.upto.max(own.upto),
            None => marks.push(own.clone()),
        }
    }
    marks.retain(|m| m.upto > position);
    marks
}

/// The offsets and marks `consumer`'s group committed for `topic`'s
/// `partitions` (absent: nothing committed).
pub(super) fn committed_marks(
    conn: &Conn,
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, (i64, Vec<Mark>)>, Failure> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let found = consumer
        .committed_offsets(tpl, conn.timeout)
        .map_err(|e| runtime(format!("committed offsets of {topic}: {e}")))?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), (o, parse_marks(e.metadata())))),
            _ => None,
        })
        .collect())
}
