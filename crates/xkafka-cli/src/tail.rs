//! `xkafka tail TOPIC`.

use std::collections::HashSet;

use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::cli::{Format, Global, Start, TailArgs};
use crate::client::{
    fatal, owned, partitions, runtime, say, watch_ctrl_c, watermarks, Conn, Failure,
};
use crate::render;

/// `xkafka tail`: prints records until `--count`, Ctrl-C or (with
/// `--until-end`) the end offsets of the start.
pub(crate) async fn tail(conn: &Conn, global: &Global, args: &TailArgs) -> Result<(), Failure> {
    let topic = &args.topic;
    let consumer = conn.consumer(None)?;
    let all = partitions(conn, &consumer, topic)?;
    let parts = match args.partition {
        Some(p) if all.contains(&p) => vec![p],
        Some(p) => {
            return Err(runtime(format!(
                "topic {topic} has no partition {p} (it has {})",
                all.len()
            )))
        }
        None => all,
    };
    if args.count == Some(0) {
        return Ok(());
    }
    let marks = watermarks(conn, &consumer, topic, &parts)?;
    let starts = start_offsets(conn, &consumer, topic, &parts, &args.from)?;
    let mut tpl = TopicPartitionList::new();
    let mut left: HashSet<i32> = HashSet::new();
    for &p in &parts {
        let (low, high) = marks[&p];
        let start = match starts[&p] {
            // Out of range would reset to the beginning: clamp instead.
            Offset::Offset(o) => Offset::Offset(o.clamp(low, high.max(low))),
            other => other,
        };
        let already_done = match start {
            Offset::Offset(o) => o >= high,
            Offset::End => true,
            _ => low >= high,
        };
        if !already_done {
            left.insert(p);
        }
        tpl.add_partition_offset(topic, p, start)
            .map_err(|e| runtime(format!("{topic}[{p}]: {e}")))?;
    }
    if args.until_end && left.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&tpl)
        .map_err(|e| runtime(format!("cannot read {topic}: {e}")))?;
    let interrupt = watch_ctrl_c();
    let mut printed = 0u64;
    loop {
        let received = tokio::select! {
            () = interrupt.wait() => return Ok(()),
            r = consumer.recv() => r,
        };
        match received {
            Ok(m) => {
                let p = m.partition();
                let end = marks.get(&p).map_or(i64::MAX, |&(_, high)| high);
                if args.until_end {
                    if m.offset() >= end {
                        left.remove(&p);
                        if left.is_empty() {
                            return Ok(());
                        }
                        continue;
                    }
                    if m.offset() + 1 >= end {
                        left.remove(&p);
                    }
                }
                let m = owned(&m);
                match global.format {
                    Format::Json => say(&render::record_json(&m).to_string())?,
                    Format::Text => say(&render::record_text(&m))?,
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    return Ok(());
                }
            }
            Err(KafkaError::PartitionEOF(p)) => {
                left.remove(&p);
            }
            Err(e) => {
                if e.rdkafka_error_code().is_some_and(fatal) {
                    return Err(runtime(format!("reading {topic}: {e}")));
                }
            }
        }
        if args.until_end && left.is_empty() {
            return Ok(());
        }
    }
}

/// Where each partition starts.
fn start_offsets(
    conn: &Conn,
    consumer: &rdkafka::consumer::StreamConsumer,
    topic: &str,
    parts: &[i32],
    from: &Start,
) -> Result<std::collections::HashMap<i32, Offset>, Failure> {
    let fixed = |o: Offset| Ok(parts.iter().map(|&p| (p, o)).collect());
    match *from {
        Start::Beginning => fixed(Offset::Beginning),
        Start::End => fixed(Offset::End),
        Start::Offset(o) => fixed(Offset::Offset(o)),
        Start::FromEnd(n) => fixed(Offset::OffsetTail(n)),
        Start::Time(ms) => {
            let mut tpl = TopicPartitionList::new();
            for &p in parts {
                tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(|e| runtime(format!("{topic}[{p}]: {e}")))?;
            }
            let found = consumer
                .offsets_for_times(tpl, conn.timeout)
                .map_err(|e| runtime(format!("offsets of {topic} at {}: {e}", render::time(ms))))?;
            Ok(found
                .elements()
                .iter()
                .map(|e| {
                    let o = match e.offset() {
                        // Nothing at or after that time yet.
                        Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                        _ => Offset::End,
                    };
                    (e.partition(), o)
                })
                .collect())
        }
    }
}
