//! Prometheus metrics on the real broker, scraped over HTTP as the
//! `metrics` example serves them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xkafka::metrics::Metrics;
use xkafka::middleware::retry::{Attempt, Backoff, RetryLayer};
use xkafka::{Ack, BoxError, Decision, Message};

async fn scrape(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("xkafka_") && !l.contains("_bucket"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counters_match_what_happened_and_lag_reaches_zero() {
    let topic = topic("metrics", 2).await;
    let metrics = Metrics::new();
    let producer = xkafka::Producer::builder("xkafka-tests-metrics")
        .brokers([brokers()])
        .error_handler(|err| eprintln!("producer: {err}"))
        .layer(metrics.producer_layer())
        .build()
        .unwrap();
    for n in 1..=40u32 {
        let msg = Message::builder(topic.as_str())
            .partition((n % 2) as i32)
            .key(n.to_string())
            .build();
        producer.publish(msg).await.unwrap();
    }
    producer.close().await;

    // n % 10 == 0: skip; n % 7 == 0: fails once, then succeeds; 13 and 26 always fail.
    let mut expected: BTreeMap<(u32, &str), u64> = BTreeMap::new();
    let mut retries = 0;
    for n in 1..=40u32 {
        let outcome = if n == 13 || n == 26 {
            retries += 2;
            "fail"
        } else if n % 10 == 0 {
            "skip"
        } else {
            if n % 7 == 0 {
                retries += 1;
            }
            "success"
        };
        *expected.entry((n % 2, outcome)).or_default() += 1;
    }

    let served = metrics.clone();
    let app = axum::Router::new().route("/metrics", get(move || async move { served.render() }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let consumer = consumer(&unique("metrics-g"), &topic)
        .metrics(&metrics)
        .error_handler(|_| Decision::Continue)
        .layer(metrics.layer())
        .layer(RetryLayer::new(
            Backoff::new()
                .initial_delay(Duration::from_millis(5))
                .max_attempts(3),
        ))
        .handler(|m: Message| async move {
            let n: u32 = m.key_str().unwrap().parse()?;
            let attempt = m.extensions().get::<Attempt>().unwrap().0;
            if n == 13 || n == 26 || (n % 7 == 0 && n % 10 != 0 && attempt == 1) {
                return Err::<Ack, BoxError>(format!("failing {n}").into());
            }
            Ok(if n % 10 == 0 { Ack::Skip } else { Ack::Success })
        })
        .build()
        .unwrap();
    let stop = consumer.shutdown_handle();
    let run = tokio::spawn(consumer.run(std::future::pending()));

    let deadline = Instant::now() + Duration::from_secs(30);
    let metric = |m: &BTreeMap<String, f64>, k: String| m.get(&k).copied().unwrap_or(0.0);
    let lag_key = |p: u32| format!("xkafka_consumer_lag{{partition=\"{p}\",topic=\"{topic}\"}}");
    let mut seen = scrape(addr).await;
    while Instant::now() < deadline
        && !(seen.contains_key(&lag_key(0))
            && seen.contains_key(&lag_key(1))
            && metric(&seen, lag_key(0)) == 0.0
            && metric(&seen, lag_key(1)) == 0.0
            && metric(
                &seen,
                format!("xkafka_handler_duration_seconds_count{{topic=\"{topic}\"}}"),
            ) == 40.0)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = scrape(addr).await;
    }
    stop.shutdown();
    run.await.unwrap().unwrap();

    for ((p, outcome), count) in &expected {
        let key = format!("xkafka_messages_consumed_total{{outcome=\"{outcome}\",partition=\"{p}\",topic=\"{topic}\"}}");
        assert_eq!(metric(&seen, key.clone()), *count as f64, "{key}");
    }
    assert_eq!(
        metric(&seen, format!("xkafka_retries_total{{topic=\"{topic}\"}}")),
        retries as f64
    );
    assert_eq!(
        metric(
            &seen,
            format!("xkafka_messages_published_total{{outcome=\"success\",topic=\"{topic}\"}}")
        ),
        40.0
    );
    assert_eq!(
        metric(
            &seen,
            format!("xkafka_messages_in_flight{{topic=\"{topic}\"}}")
        ),
        0.0
    );
    for p in 0..2 {
        assert_eq!(
            seen.get(&lag_key(p)),
            Some(&0.0),
            "caught up: lag 0 on partition {p}"
        );
        let committed = format!("xkafka_committed_offset{{partition=\"{p}\",topic=\"{topic}\"}}");
        assert_eq!(seen.get(&committed), Some(&20.0));
    }
}
