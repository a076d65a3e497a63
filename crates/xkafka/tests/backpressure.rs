//! Pause-based backpressure on the real broker: many pause/resume cycles,
//! nothing lost, nothing handled twice.
//!
//! The pauses are observed where they take effect, in librdkafka: with
//! `debug=topic` it logs every `rd_kafka_pause_partitions` /
//! `rd_kafka_resume_partitions` call ("Application pausing N partition(s)").
//! A test binary of its own because it installs the global `tracing`
//! subscriber that captures those lines.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use xkafka::Message;

/// The consumer's pause and resume calls, in order, as librdkafka logged
/// them: `true` for a pause.
fn pauses_and_resumes(logs: &str) -> Vec<bool> {
    logs.lines()
        .filter_map(|line| {
            if line.contains("Application pausing") {
                Some(true)
            } else if line.contains("Application resuming") {
                Some(false)
            } else {
                None
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_buffers_pause_and_resume_without_losing_anything() {
    const N: usize = 3_000;
    let logs = captured_debug_logs();
    let topic = topic("backpressure", 3).await;
    let producer = producer();
    for p in 0..3 {
        for i in 0..N / 3 {
            let msg = Message::builder(topic.as_str())
                .partition(p)
                .key(format!("{p}-{i}"))
                .build();
            producer.publish_async(msg).await.unwrap();
        }
    }
    assert_eq!(producer.close().await.undelivered, 0);
    let seen: Arc<Mutex<Vec<(i32, i64)>>> = Arc::default();
    let record = seen.clone();
    let consumer = consumer(&unique("backpressure-g"), &topic)
        // librdkafka logs each pause and resume call of the application.
        .config("debug", "topic")
        .concurrency(2)
        .max_in_flight_per_partition(50)
        .max_in_flight(120)
        .error_handler(|err| panic!("unexpected: {err}"))
        .handler(move |m: Message| {
            let record = record.clone();
            async move {
                // Slower than fetching: the buffers fill and partitions pause.
                tokio::time::sleep(Duration::from_micros(200)).await;
                record
                    .lock()
                    .unwrap()
                    .push((m.partition().unwrap(), m.offset().unwrap()));
            }
        })
        .build()
        .unwrap();
    // The log as it was when the last message was handled: shutdown pauses
    // every partition too, and must not count as backpressure.
    let consumed_mark: Arc<OnceLock<usize>> = Arc::default();
    let (probe, mark) = (seen.clone(), consumed_mark.clone());
    consumer
        .run(until(
            move || {
                let done = probe.lock().unwrap().len() >= N;
                if done {
                    mark.get_or_init(|| logs.mark());
                }
                done
            },
            Duration::from_secs(90),
        ))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let distinct: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        N,
        "every message handled ({} handlings)",
        seen.len()
    );
    assert_eq!(seen.len(), N, "none twice");

    let mark = *consumed_mark.get().expect("all handled");
    let calls = pauses_and_resumes(&logs.text_until(mark));
    let pauses = calls.iter().filter(|&&pause| pause).count();
    // The consumer resumes what it is assigned once; every other resume
    // follows a pause of the buffers.
    let resumes_after_a_pause = calls
        .iter()
        .skip_while(|&&pause| !pause)
        .filter(|&&pause| !pause)
        .count();
    println!(
        "while consuming {N} messages: {pauses} pause calls, {resumes_after_a_pause} resume calls \
         after the first pause"
    );
    assert!(
        pauses >= 2 && resumes_after_a_pause >= 2,
        "buffers of 50 per partition / 120 in all, for {N} messages, pause and resume \
         several times: {pauses} pauses, {resumes_after_a_pause} resumes ({calls:?})"
    );
}
