//! The xkafka demo: publishes a few thousand messages, consumes them through
//! a handler with middleware, and prints a summary.
//!
//! ```text
//! cargo run -p xkafka --example demo                         # embedded cluster
//! cargo run -p xkafka --example demo -- --brokers 127.0.0.1:9092
//! ```
//!
//! Exit code 0 when every published message was consumed and committed.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use xkafka::middleware::{from_fn, Next};
use xkafka::mock::EmbeddedCluster;
use xkafka::{Ack, BoxError, CommitMode, Consumer, Decision, Error, Message, Order, Producer};

#[derive(Parser, Debug)]
#[command(about = "Publish and consume messages with xkafka, then print a summary")]
struct Args {
    /// Kafka bootstrap servers; without them an embedded (in-process) cluster is used.
    #[arg(long, env = "XKAFKA_BROKERS")]
    brokers: Option<String>,
    /// How many messages to publish.
    #[arg(long, default_value_t = 5_000)]
    messages: u64,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

/// The business logic: every 100th order is a test order and is skipped; the
/// order with id 4242 is malformed and fails (the error handler skips it).
async fn handle_order(msg: Message) -> Result<Ack, BoxError> {
    let id: u64 = msg.key_str().ok_or("order without a key")?.parse()?;
    if id == 4242 {
        return Err(format!("order {id} is malformed").into());
    }
    if id % 100 == 0 {
        return Ok(Ack::Skip);
    }
    Ok(Ack::Success)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,demo=info".into()),
        )
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("demo failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool, Error> {
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let topic = format!("xkafka-demo-{run_id}");
    let group = format!("xkafka-demo-{run_id}");

    // With no brokers configured, bring up librdkafka's mock cluster in-process.
    let embedded;
    let brokers = match &args.brokers {
        Some(b) => {
            xkafka::admin::ensure_topics(
                b,
                &[(&topic, args.partitions)],
                &xkafka::Config::new(),
                Duration::from_secs(10),
            )
            .await?;
            println!("broker:      {b}");
            b.clone()
        }
        None => {
            embedded = EmbeddedCluster::start(3)?;
            embedded.create_topic(&topic, args.partitions)?;
            println!(
                "broker:      embedded mock cluster at {}",
                embedded.bootstrap_servers()
            );
            embedded.bootstrap_servers().to_owned()
        }
    };
    println!("topic:       {topic} ({} partitions)", args.partitions);

    // --- publish -----------------------------------------------------------
    let delivered = Arc::new(AtomicU64::new(0));
    let not_delivered = Arc::new(AtomicU64::new(0));
    let producer = Producer::builder("xkafka-demo")
        .brokers([brokers.as_str()])
        .config("linger.ms", "5")
        .error_handler(|err| tracing::warn!(target: "demo", %err, "producer error"))
        .on_delivery({
            let (ok, bad) = (delivered.clone(), not_delivered.clone());
            move |report: &Result<xkafka::Delivery, Error>| {
                let counter = if report.is_ok() { &ok } else { &bad };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        // A producer middleware: stamp every message with where it came from.
        .layer(from_fn(
            |mut msg: Message, next: Next<xkafka::Delivery>| async move {
                msg.headers_mut().insert("origin", "xkafka-demo");
                next.run(msg).await
            },
        ))
        .build()?;
    let started = Instant::now();
    for id in 1..=args.messages {
        let msg = Message::builder(topic.as_str())
            .key(id.to_string())
            .value(format!(r#"{{"order":{id},"total":{}}}"#, id * 3))
            .header("content-type", "application/json")
            .build();
        producer.publish_async(msg).await?;
    }
    let close = producer.close().await;
    let published = delivered.load(Ordering::Relaxed);
    println!(
        "published:   {published} in {:.2?} ({} not delivered)",
        started.elapsed(),
        close.undelivered as u64 + not_delivered.load(Ordering::Relaxed)
    );

    // --- consume -----------------------------------------------------------
    let seen = Arc::new(AtomicU64::new(0));
    let consumer = Consumer::builder(group.as_str())
        .brokers([brokers.as_str()])
        .topics([topic.as_str()])
        .config("auto.offset.reset", "earliest")
        .commit_mode(CommitMode::Auto)
        // Four handlers at once; orders of one customer (key) stay in order.
        .concurrency(4)
        .order(Order::PerKey)
        .shutdown_timeout(Duration::from_secs(10))
        .error_handler(|err: &Error| {
            tracing::warn!(target: "demo", %err, "consumer error");
            // Failed orders are parked explicitly (a dead-letter topic would
            // go here); everything else librdkafka retries by itself.
            if err.is_fatal() {
                Decision::Stop
            } else {
                Decision::Continue
            }
        })
        // Logging middleware: one line per message at debug level.
        .layer(from_fn(|msg: Message, next: Next| async move {
            let location = msg.location();
            let started = Instant::now();
            let outcome = next.run(msg).await;
            match &outcome {
                Ok(ack) => {
                    tracing::debug!(target: "demo", %location, ?ack, elapsed = ?started.elapsed())
                }
                Err(err) => tracing::error!(target: "demo", %location, %err, "failed"),
            }
            outcome
        }))
        // A closure middleware that counts messages and stops the demo when
        // all of them went through.
        .layer(from_fn({
            let seen = seen.clone();
            move |msg: Message, next: Next| {
                let seen = seen.clone();
                async move {
                    let outcome = next.run(msg).await;
                    seen.fetch_add(1, Ordering::Relaxed);
                    outcome
                }
            }
        }))
        .handler(handle_order)
        .build()?;
    let shutdown = consumer.shutdown_handle();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let all_seen = {
        let seen = seen.clone();
        async move {
            while seen.load(Ordering::Relaxed) < published && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let started = Instant::now();
    let summary = consumer.run(all_seen).await?;
    drop(shutdown);
    let consumed = summary.succeeded + summary.skipped + summary.failed;
    let committed: i64 = summary.committed.values().sum();
    println!("consumed:    {consumed} in {:.2?}", started.elapsed());
    println!("  succeeded: {}", summary.succeeded);
    println!("  skipped:   {}", summary.skipped);
    println!(
        "  failed:    {} ({} skipped by the error handler)",
        summary.failed, summary.failed_skipped
    );
    println!("committed offsets:");
    for (tp, offset) in &summary.committed {
        println!("  {tp}: {offset}");
    }
    println!("  total: {committed}");
    let ok = consumed == published
        && u64::try_from(committed).ok() == Some(published)
        && summary.uncommitted.is_empty();
    println!("result:      {}", if ok { "OK" } else { "MISMATCH" });
    Ok(ok)
}
