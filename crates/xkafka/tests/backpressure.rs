//! Pause-based backpressure on the real broker: many pause/resume cycles,
//! nothing lost, nothing handled twice.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_buffers_pause_and_resume_without_losing_anything() {
    const N: usize = 3_000;
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
    let probe = seen.clone();
    consumer
        .run(until(
            move || probe.lock().unwrap().len() >= N,
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
}
