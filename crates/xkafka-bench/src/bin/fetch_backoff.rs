//! The `fetch.queue.backoff.ms` experiment (BENCHMARKS.md, "The fetch
//! queue backoff"): one xkafka consumer with a no-op handler reads a
//! prefilled topic; prints its rate, its longest pause between two messages
//! and the process's peak memory, as one JSON line. Run once per setting,
//! each in a process of its own so that the peak memory is that run's:
//!
//! ```sh
//! cargo run --release -p xkafka-bench --bin fetch_backoff -- --backoff-ms 1000
//! cargo run --release -p xkafka-bench --bin fetch_backoff -- --backoff-ms 10
//! ```
//!
//! Without `--brokers` it starts librdkafka's mock cluster in process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use xkafka::mock::EmbeddedCluster;
use xkafka::{Consumer, Decision, Message, Producer};

#[derive(Parser, Debug)]
struct Args {
    /// A real broker; without it, librdkafka's mock cluster in process.
    #[arg(long)]
    brokers: Option<String>,
    /// Messages to prefill and consume.
    #[arg(long, default_value_t = 180_000)]
    messages: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// `fetch.queue.backoff.ms` for the consumer (unset: xkafka's default).
    #[arg(long)]
    backoff_ms: Option<u64>,
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut _mock = None;
    let brokers = match &args.brokers {
        Some(b) => b.clone(),
        None => {
            let mock = EmbeddedCluster::start(1)?;
            let b = mock.bootstrap_servers().to_owned();
            _mock = Some(mock);
            b
        }
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("fetch-backoff-{stamp}-{}", std::process::id());
    match &_mock {
        Some(mock) => mock.create_topic(&topic, args.partitions)?,
        None => {
            xkafka::admin::ensure_topics(
                &brokers,
                &[(&topic, args.partitions)],
                &xkafka::Config::new(),
                Duration::from_secs(10),
            )
            .await?;
        }
    }
    let producer = Producer::builder("fetch-backoff")
        .brokers([brokers.as_str()])
        .config("linger.ms", "5")
        .error_handler(|e| eprintln!("producer: {e}"))
        .build()?;
    let value = vec![b'x'; args.size];
    for n in 0..args.messages {
        let msg = Message::builder(topic.as_str())
            .key(format!("k{}", n % 1000))
            .value(value.clone())
            .build();
        producer.publish_async(msg).await?;
    }
    producer.close().await;

    let handled = Arc::new(AtomicUsize::new(0));
    let epoch = Instant::now();
    // Nanoseconds since `epoch`: first message, last message, longest gap.
    let first = Arc::new(AtomicU64::new(u64::MAX));
    let last = Arc::new(AtomicU64::new(0));
    let gap = Arc::new(AtomicU64::new(0));
    let (h, f, l, g) = (handled.clone(), first.clone(), last.clone(), gap.clone());
    let mut builder = Consumer::builder(format!("{topic}-g"))
        .brokers([brokers.as_str()])
        .topics([topic.as_str()])
        .config("auto.offset.reset", "earliest")
        .error_handler(|e| {
            eprintln!("consumer: {e}");
            Decision::Stop
        });
    if let Some(ms) = args.backoff_ms {
        builder = builder.config("fetch.queue.backoff.ms", ms.to_string());
    }
    let consumer = builder
        .handler(move |_m: Message| {
            let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let prev = l.swap(now, Ordering::Relaxed);
            if f.load(Ordering::Relaxed) == u64::MAX {
                f.store(now, Ordering::Relaxed);
            } else {
                g.fetch_max(now.saturating_sub(prev), Ordering::Relaxed);
            }
            h.fetch_add(1, Ordering::Relaxed);
            async {}
        })
        .build()?;
    let target = args.messages;
    let probe = handled.clone();
    let done = async move {
        while probe.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(300), consumer.run(done)).await??;
    let span = (last.load(Ordering::Relaxed) - first.load(Ordering::Relaxed)) as f64 / 1e9;
    println!(
        "{}",
        serde_json::json!({
            "backoff_ms": args.backoff_ms,
            "broker": if args.brokers.is_some() { "kafka" } else { "mock" },
            "messages": args.messages,
            "size": args.size,
            "msgs_per_s": (args.messages as f64 / span).round(),
            "longest_gap_ms": gap.load(Ordering::Relaxed) / 1_000_000,
            "peak_rss_mib": peak_rss_kib() / 1024,
        })
    );
    Ok(())
}
