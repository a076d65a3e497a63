//! `xkafka groups reset-offsets`: a plan, applied only with `--execute`
//! and only while the group has no members (as Kafka's own tool does).
//!
//! rdkafka 0.39 has no AlterConsumerGroupOffsets: the plan is committed by
//! a client of the group that does not join it (an OffsetCommit without
//! generation, which the broker accepts only from outside a group with no
//! members, the same request Kafka's admin client sends).

use std::collections::HashMap;

use rdkafka::consumer::{CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::cli::{Format, ResetArgs};
use crate::client::{partitions, runtime, say, watermarks, Conn, Failure};
use crate::render::table;

/// One partition of the plan.
struct Move {
    partition: i32,
    current: Option<i64>,
    target: i64,
    end: i64,
}

/// `groups reset-offsets`.
pub(crate) async fn reset(conn: &Conn, format: Format, args: &ResetArgs) -> Result<(), Failure> {
    let (group, topic) = (&args.group, &args.topic);
    if group.trim().is_empty() {
        return Err(Failure::Usage("the group id is empty".into()));
    }
    // A group that does not exist yet is fine: resetting it sets where
    // its first consumer starts.
    let members = crate::groups::fetch(conn, Some(group))?
        .into_iter()
        .next()
        .map(|g| {
            if g.protocol == "consumer" {
                None
            } else {
                Some(g.members)
            }
        })
        .unwrap_or(Some(Vec::new()));
    let consumer = conn.consumer(Some(group))?;
    let all = partitions(conn, &consumer, topic)?;
    let chosen: Vec<i32> = match args.partition {
        Some(p) if !all.contains(&p) => {
            return Err(runtime(format!(
                "topic {topic} has no partition {p} (it has {})",
                all.len()
            )))
        }
        Some(p) => vec![p],
        None => all,
    };
    let marks = watermarks(conn, &consumer, topic, &chosen)?;
    let mut tpl = TopicPartitionList::new();
    for &p in &chosen {
        tpl.add_partition(topic, p);
    }
    let committed: HashMap<i32, i64> = consumer
        .committed_offsets(tpl, conn.timeout)
        .map_err(|e| runtime(format!("committed offsets of group {group}: {e}")))?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    let by_time = match args.to_timestamp {
        Some(ms) => Some(offsets_at(conn, &consumer, topic, &chosen, ms)?),
        None => None,
    };
    let mut plan = Vec::with_capacity(chosen.len());
    for &p in &chosen {
        let (low, end) = marks[&p];
        let current = committed.get(&p).copied();
        let wanted = if args.to_earliest {
            low
        } else if args.to_latest {
            end
        } else if let Some(n) = args.to_offset {
            n
        } else if let Some(n) = args.shift_by {
            current.unwrap_or(low).saturating_add(n)
        } else if let Some(at) = &by_time {
            at.get(&p).copied().unwrap_or(end)
        } else {
            return Err(Failure::Usage("no --to-* or --shift-by given".into()));
        };
        plan.push(Move {
            partition: p,
            current,
            target: wanted.clamp(low, end),
            end,
        });
    }
    let busy = match &members {
        Some(m) if m.is_empty() => None,
        Some(m) => Some(format!(
            "group {group} has {} members ({}): stop its consumers before --execute",
            m.len(),
            m.iter()
                .map(|m| format!("{} on {}", m.client_id, m.host))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => None,
    };
    if args.execute {
        if let Some(why) = busy {
            return Err(runtime(why));
        }
        let mut tpl = TopicPartitionList::new();
        for m in &plan {
            tpl.add_partition_offset(topic, m.partition, Offset::Offset(m.target))
                .map_err(|e| runtime(format!("{topic}[{}]: {e}", m.partition)))?;
        }
        consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
            let hint = if members.is_none() {
                " (a KIP-848 group, whose members the broker does not list to this \
                     client: stop its consumers first)"
            } else {
                ""
            };
            runtime(format!(
                "cannot reset the offsets of group {group}: {e}{hint}"
            ))
        })?;
    }
    print(format, args, &plan, busy.as_deref())
}

/// The first offset at or after `ms` in each partition (the end offset
/// when no record is that recent).
fn offsets_at(
    conn: &Conn,
    consumer: &rdkafka::consumer::StreamConsumer,
    topic: &str,
    chosen: &[i32],
    ms: i64,
) -> Result<HashMap<i32, i64>, Failure> {
    let mut tpl = TopicPartitionList::new();
    for &p in chosen {
        tpl.add_partition_offset(topic, p, Offset::Offset(ms))
            .map_err(|e| runtime(format!("{topic}[{p}]: {e}")))?;
    }
    let found = consumer
        .offsets_for_times(tpl, conn.timeout)
        .map_err(|e| runtime(format!("offsets of {topic} at {ms} ms: {e}")))?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o >= 0 => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

fn print(
    format: Format,
    args: &ResetArgs,
    plan: &[Move],
    busy: Option<&str>,
) -> Result<(), Failure> {
    match format {
        Format::Json => {
            let partitions: Vec<Value> = plan
                .iter()
                .map(|m| {
                    json!({
                        "topic": args.topic,
                        "partition": m.partition,
                        "current": m.current,
                        "target": m.target,
                        "end": m.end,
                        "lag": m.end - m.target,
                    })
                })
                .collect();
            say(&json!({
                "group": args.group,
                "executed": args.execute,
                "partitions": partitions,
                "blocked": busy,
            })
            .to_string())
        }
        Format::Text => {
            let cells: Vec<Vec<String>> = plan
                .iter()
                .map(|m| {
                    vec![
                        args.topic.clone(),
                        m.partition.to_string(),
                        m.current.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                        m.target.to_string(),
                        (m.end - m.target).to_string(),
                    ]
                })
                .collect();
            let mut out = table(
                &["TOPIC", "PARTITION", "CURRENT", "NEW", "LAG-AFTER"],
                &cells,
            );
            if args.execute {
                out.push_str(&format!("\napplied to group {}", args.group));
            } else {
                out.push_str("\ndry run: nothing changed (apply with --execute)");
                if let Some(why) = busy {
                    out.push_str(&format!("; {why}"));
                }
            }
            say(&out)
        }
    }
}
