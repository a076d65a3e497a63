//! The short memory soak: a worker that can handle ~800 msg/s flooded with
//! 2,000 msg/s for 60 s. Pause-based backpressure keeps the backlog in the
//! broker, so the worker's resident memory stays flat after the warm-up.
//!
//! `cargo test -p xkafka-reliability --test soak -- --nocapture`; the
//! 10-minute version: `cargo run -p xkafka-reliability --release -- soak`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use xkafka_reliability::soak::{self, SoakPlan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_while_a_slow_worker_is_flooded() {
    let brokers = std::env::var("XKAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    assert!(
        TcpStream::connect_timeout(&brokers.parse().unwrap(), Duration::from_secs(2)).is_ok(),
        "no Kafka broker at {brokers}: run scripts/test.sh, or scripts/broker.sh start"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/reliability");
    let mut plan = SoakPlan::new(
        brokers,
        PathBuf::from(env!("CARGO_BIN_EXE_xkafka-chaos")),
        dir.clone(),
    );
    plan.duration = Duration::from_secs(60);
    plan.warm_up = Duration::from_secs(20);
    let report = soak::run(&plan).await.expect("the soak ran");
    std::fs::write(
        dir.join("soak-short.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("{}", report.line());
    let backlog = report.published.saturating_sub(report.handled);
    assert!(
        backlog > 20_000,
        "the worker was flooded (backlog {backlog}), or this proves nothing"
    );
    // Flat: the median of the last 10 samples is within 16 MiB of the
    // median of the first 10 after the warm-up (a backlog of 2,000 msg/s
    // buffered in the process would grow by far more), and no sample went
    // past 128 MiB.
    let growth = report
        .end_median_kib
        .saturating_sub(report.start_median_kib);
    assert!(
        growth < 16 * 1024,
        "RSS grew by {growth} KiB: {:?}",
        report.samples
    );
    assert!(
        report.max_rss_kib < 128 * 1024,
        "RSS reached {} KiB: {:?}",
        report.max_rss_kib,
        report.samples
    );
}
