//! `xkafka lag --group G [--topic T]`.

use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::cli::{Format, Global, LagArgs};
use crate::client::{partitions, runtime, say, watermarks, Conn, Failure};

/// One partition's line.
pub(crate) struct Row {
    /// The topic.
    pub(crate) topic: String,
    /// The partition.
    pub(crate) partition: i32,
    /// The group's committed offset (none yet: `None`).
    pub(crate) committed: Option<i64>,
    /// The partition's end offset.
    pub(crate) end: i64,
    /// Records after the committed offset (all retained ones when none).
    pub(crate) lag: i64,
}

impl Row {
    /// As JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
        })
    }
}

/// `xkafka lag`: committed, end and lag per partition, and the total.
pub(crate) fn lag(conn: &Conn, global: &Global, args: &LagArgs) -> Result<(), Failure> {
    if args.group.trim().is_empty() {
        return Err(Failure::Usage("--group is empty".into()));
    }
    let rows = offsets(conn, &args.group, args.topic.as_deref())?;
    if rows.is_empty() {
        return Err(runtime(format!(
            "group {} has no committed offsets",
            args.group
        )));
    }
    print(global.format, &args.group, &rows)
}

/// The group's committed offset, end and lag of each partition of `topic`,
/// or of every topic where the group committed offsets; sorted.
pub(crate) fn offsets(conn: &Conn, group: &str, topic: Option<&str>) -> Result<Vec<Row>, Failure> {
    let consumer = conn.consumer(Some(group))?;
    let topics: Vec<(String, Vec<i32>)> = match topic {
        Some(t) => vec![(t.to_owned(), partitions(conn, &consumer, t)?)],
        None => {
            let metadata = consumer
                .fetch_metadata(None, conn.timeout)
                .map_err(|e| conn.unreachable(e))?;
            metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
                .map(|t| {
                    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                    ps.sort_unstable();
                    (t.name().to_owned(), ps)
                })
                .collect()
        }
    };
    let mut tpl = TopicPartitionList::new();
    for (t, ps) in &topics {
        for &p in ps {
            tpl.add_partition(t, p);
        }
    }
    let found = if tpl.count() == 0 {
        tpl
    } else {
        consumer
            .committed_offsets(tpl, conn.timeout)
            .map_err(|e| runtime(format!("committed offsets of group {group}: {e}")))?
    };
    let committed = found.to_topic_map();
    let offset_of = |t: &str, p: i32| match committed.get(&(t.to_owned(), p)) {
        Some(Offset::Offset(o)) => Some(*o),
        _ => None,
    };
    let mut rows = Vec::new();
    for (t, ps) in &topics {
        if topic.is_none() && ps.iter().all(|&p| offset_of(t, p).is_none()) {
            continue;
        }
        let marks = watermarks(conn, &consumer, t, ps)?;
        for &p in ps {
            let (low, end) = marks[&p];
            let committed = offset_of(t, p);
            let lag = (end - committed.unwrap_or(low)).max(0);
            rows.push(Row {
                topic: t.clone(),
                partition: p,
                committed,
                end,
                lag,
            });
        }
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(rows)
}

/// Prints `rows` and their total lag.
fn print(format: Format, group: &str, rows: &[Row]) -> Result<(), Failure> {
    let total: i64 = rows.iter().map(|r| r.lag).sum();
    match format {
        Format::Json => {
            let partitions: Vec<_> = rows.iter().map(Row::json).collect();
            say(&json!({"group": group, "partitions": partitions, "total_lag": total}).to_string())
        }
        Format::Text => say(&text(rows)),
    }
}

/// The rows as a table, with the total.
pub(crate) fn text(rows: &[Row]) -> String {
    let total: i64 = rows.iter().map(|r| r.lag).sum();
    let width = rows
        .iter()
        .map(|r| r.topic.len())
        .max()
        .unwrap_or(0)
        .max("TOPIC".len());
    let mut out = vec![format!(
        "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}",
        "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
    )];
    for r in rows {
        let committed = r
            .committed
            .map_or_else(|| "-".to_owned(), |c| c.to_string());
        out.push(format!(
            "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}",
            r.topic, r.partition, committed, r.end, r.lag
        ));
    }
    out.push(format!(
        "{:<width$}  {:>9}  {:>12}  {:>12}  {:>12}",
        "total", "", "", "", total
    ));
    out.join("\n")
}
