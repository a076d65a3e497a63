//! `xkafka lag --group G [--topic T]`.

use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

use crate::cli::{Format, Global, LagArgs};
use crate::client::{partitions, runtime, say, watermarks, Conn, Failure};

/// One partition's line.
struct Row {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    end: i64,
    lag: i64,
}

/// `xkafka lag`: committed, end and lag per partition, and the total.
pub(crate) fn lag(conn: &Conn, global: &Global, args: &LagArgs) -> Result<(), Failure> {
    if args.group.trim().is_empty() {
        return Err(Failure::Usage("--group is empty".into()));
    }
    let consumer = conn.consumer(Some(&args.group))?;
    let topics: Vec<(String, Vec<i32>)> = match &args.topic {
        Some(t) => vec![(t.clone(), partitions(conn, &consumer, t)?)],
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
            .map_err(|e| runtime(format!("committed offsets of group {}: {e}", args.group)))?
    };
    let committed = found.to_topic_map();
    let offset_of = |t: &str, p: i32| match committed.get(&(t.to_owned(), p)) {
        Some(Offset::Offset(o)) => Some(*o),
        _ => None,
    };
    let mut rows = Vec::new();
    for (t, ps) in &topics {
        if args.topic.is_none() && ps.iter().all(|&p| offset_of(t, p).is_none()) {
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
    if rows.is_empty() {
        return Err(runtime(format!(
            "group {} has no committed offsets",
            args.group
        )));
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let total: i64 = rows.iter().map(|r| r.lag).sum();
    match global.format {
        Format::Json => {
            let partitions: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({
                        "topic": r.topic,
                        "partition": r.partition,
                        "committed": r.committed,
                        "end": r.end,
                        "lag": r.lag,
                    })
                })
                .collect();
            say(
                &json!({"group": args.group, "partitions": partitions, "total_lag": total})
                    .to_string(),
            )
        }
        Format::Text => {
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
            for r in &rows {
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
            say(&out.join("\n"))
        }
    }
}
