//! `xkafka produce TOPIC`: one record per line of standard input.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::AsyncBufReadExt as _;
use xkafka::Message;

use crate::cli::{Format, Global, ProduceArgs};
use crate::client::{partitions, runtime, say, watch_ctrl_c, Conn, Failure};
use crate::render;

/// `xkafka produce`: publishes each line (without its `\n` or `\r\n`),
/// split into key and value at the first `--key-separator`, with the
/// `--header`s; prints how many were acknowledged.
pub(crate) async fn produce(
    conn: &Conn,
    global: &Global,
    args: &ProduceArgs,
) -> Result<(), Failure> {
    let topic = &args.topic;
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    if separator.is_some_and(<[u8]>::is_empty) {
        return Err(Failure::Usage("--key-separator is empty".into()));
    }
    {
        let consumer = conn.consumer(None)?;
        let parts = partitions(conn, &consumer, topic)?;
        if let Some(p) = args.partition.filter(|p| !parts.contains(p)) {
            return Err(runtime(format!(
                "topic {topic} has no partition {p} (it has {})",
                parts.len()
            )));
        }
    }
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let producer = conn.producer("xkafka-produce", last_error.clone())?;
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let interrupt = watch_ctrl_c();
    let bar = render::spinner(!global.no_progress, "records sent");
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut interrupted = false;
    loop {
        line.clear();
        let read = tokio::select! {
            () = interrupt.wait() => { interrupted = true; break }
            read = stdin.read_until(b'\n', &mut line) => read,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(format!("reading standard input: {e}"));
                break;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let message = record(topic, &line, separator, args);
        let (a, f, e) = (acked.clone(), failed.clone(), first_error.clone());
        let published = producer
            .publish_async_with(message, move |outcome| match outcome {
                Ok(_) => {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    f.fetch_add(1, Ordering::Relaxed);
                    e.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(err.to_string());
                }
            })
            .await;
        if let Err(err) = published {
            failed.fetch_add(1, Ordering::Relaxed);
            first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(err.to_string());
        }
        bar.inc(1);
    }
    // Waits for every acknowledgement (purging what is left after the
    // delivery timeout: those count as failed).
    producer.close_within(conn.delivery_timeout()).await;
    bar.finish_and_clear();
    let acked = acked.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let mut first_error = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let (Some(e), Some(client)) = (
        first_error.as_mut(),
        last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref(),
    ) {
        *e = format!("{e} ({client})");
    }
    match global.format {
        Format::Json => say(&json!({
            "topic": topic,
            "acknowledged": acked,
            "failed": failed,
            "first_error": first_error,
            "interrupted": interrupted,
        })
        .to_string())?,
        Format::Text if failed == 0 => say(&format!("{acked} acknowledged"))?,
        Format::Text => say(&format!("{acked} acknowledged, {failed} failed"))?,
    }
    if let Some(e) = first_error {
        return Err(runtime(if failed > 0 {
            format!("{failed} records not acknowledged: {e}")
        } else {
            e
        }));
    }
    if interrupted {
        return Err(Failure::Interrupted(format!(
            "interrupted: {acked} records acknowledged"
        )));
    }
    Ok(())
}

/// The record for one line.
fn record(topic: &str, line: &[u8], separator: Option<&[u8]>, args: &ProduceArgs) -> Message {
    let split = separator.and_then(|sep| {
        line.windows(sep.len())
            .position(|w| w == sep)
            .map(|at| (&line[..at], &line[at + sep.len()..]))
    });
    let mut builder = Message::builder(topic.to_owned());
    builder = match split {
        Some((key, value)) => builder.key(key.to_vec()).value(value.to_vec()),
        None => builder.value(line.to_vec()),
    };
    for (k, v) in &args.headers {
        builder = builder.header(k.clone(), v.clone());
    }
    if let Some(p) = args.partition {
        builder = builder.partition(p);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(headers: &[(&str, &str)]) -> ProduceArgs {
        ProduceArgs {
            topic: "t".into(),
            key_separator: Some("::".into()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            partition: None,
        }
    }

    #[test]
    fn lines_become_records() {
        let a = args(&[("source", "cli")]);
        let m = record("t", b"k1::v::1", Some(b"::"), &a);
        assert_eq!((m.key_str(), m.value_str()), (Some("k1"), Some("v::1")));
        assert_eq!(m.headers().get_str("source"), Some("cli"));
        let m = record("t", b"no key", Some(b"::"), &a);
        assert_eq!((m.key(), m.value_str()), (None, Some("no key")));
        let m = record("t", b"\xff::\xfe", Some(b"::"), &a);
        assert_eq!(m.value().map(|v| v.as_ref()), Some(&b"\xfe"[..]));
    }
}
