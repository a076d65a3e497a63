//! Serves xkafka's Prometheus metrics on `/metrics`, next to the health
//! probes (`/healthz`, `/readyz`, `/status`), while a consumer with
//! retries, skips and a dead-letter topic runs.
//!
//! ```text
//! cargo run -p xkafka --features metrics,http --example metrics       # embedded cluster
//! curl -s 127.0.0.1:9898/metrics | grep xkafka_
//! curl -s 127.0.0.1:9898/healthz; curl -s 127.0.0.1:9898/status
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use clap::Parser;
use xkafka::dlq::DeadLetterLayer;
use xkafka::health::{router, HealthCheck};
use xkafka::metrics::Metrics;
use xkafka::middleware::retry::{Attempt, Backoff, RetryLayer};
use xkafka::mock::EmbeddedCluster;
use xkafka::{Ack, BoxError, Consumer, Decision, Error, Message, Producer};

#[derive(Parser, Debug)]
struct Args {
    /// Kafka bootstrap servers; without them an embedded cluster is used.
    #[arg(long, env = "XKAFKA_BROKERS")]
    brokers: Option<String>,
    /// Where to serve /metrics.
    #[arg(long, default_value = "127.0.0.1:9898")]
    listen: SocketAddr,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    exit_after_secs: Option<u64>,
}

/// Every 10th message is skipped, every 7th fails once (retried), every
/// 13th always fails (dead-lettered).
async fn handle(msg: Message) -> Result<Ack, BoxError> {
    let n: u64 = msg.key_str().unwrap_or("0").parse()?;
    let attempt = msg.extensions().get::<Attempt>().map_or(1, |a| a.0);
    if n % 13 == 0 {
        return Err(format!("order {n} is corrupt").into());
    }
    if n % 7 == 0 && attempt == 1 {
        return Err("database busy".into());
    }
    Ok(if n % 10 == 0 { Ack::Skip } else { Ack::Success })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let embedded;
    let brokers = match args.brokers {
        Some(b) => {
            xkafka::admin::ensure_topics(
                &b,
                &[("orders", 3), ("orders.dlq", 1)],
                &xkafka::Config::new(),
                Duration::from_secs(10),
            )
            .await?;
            b
        }
        None => {
            embedded = EmbeddedCluster::start(1)?;
            embedded.create_topic("orders", 3)?;
            embedded.create_topic("orders.dlq", 1)?;
            embedded.bootstrap_servers().to_owned()
        }
    };
    let metrics = Metrics::new();
    let producer = Producer::builder("metrics-example")
        .brokers([brokers.as_str()])
        .error_handler(|err| eprintln!("producer: {err}"))
        .layer(metrics.producer_layer())
        .build()?;
    for n in 1..=1_000u64 {
        producer
            .publish_async(
                Message::builder("orders")
                    .key(n.to_string())
                    .value("{}")
                    .build(),
            )
            .await?;
    }
    let consumer = Consumer::builder("metrics-example")
        .brokers([brokers.as_str()])
        .topics(["orders"])
        .config("auto.offset.reset", "earliest")
        .metrics(&metrics)
        .error_handler(|err: &Error| {
            eprintln!("consumer: {err}");
            Decision::Continue
        })
        .layer(metrics.layer())
        .layer(DeadLetterLayer::new(producer.clone(), "orders.dlq"))
        .layer(RetryLayer::new(
            Backoff::new()
                .initial_delay(Duration::from_millis(10))
                .max_attempts(3),
        ))
        .handler(handle)
        .build()?;

    let served = metrics.clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { served.render() }))
        .merge(router(consumer.status_handle(), HealthCheck::default()));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let at = listener.local_addr()?;
    println!("metrics on http://{at}/metrics, probes on http://{at}/healthz, /readyz, /status");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let stop = async move {
        match args.exit_after_secs {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let summary = consumer.run(stop).await?;
    producer.close().await;
    println!("{summary:?}");
    Ok(())
}
