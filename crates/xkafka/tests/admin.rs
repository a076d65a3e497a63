//! `admin::ensure_topics`: topics get the cluster's default replication
//! factor (one replica on the single test node, three on the 3-broker
//! cluster) — a helper that always asked for one replica left nothing to fail
//! over to — and creating an existing topic is not an error.

mod common;

use std::time::Duration;

use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::ClientConfig;

/// Replicas of each partition of `topic`, as the brokers' metadata says.
fn replicas(brokers: &str, topic: &str) -> Vec<usize> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.replicas().len())
        .collect()
}

async fn create(brokers: &str, topic: &str) {
    xkafka::admin::ensure_topics(
        brokers,
        &[(topic, 3)],
        &xkafka::Config::new(),
        Duration::from_secs(15),
    )
    .await
    .expect("create");
}

#[tokio::test]
async fn topics_get_the_clusters_replication_factor() {
    let cluster = common::cluster_brokers();
    let topic = common::unique("admin-rf");
    create(&cluster, &topic).await;
    // Again: an existing topic is fine.
    create(&cluster, &topic).await;
    assert_eq!(replicas(&cluster, &topic), vec![3, 3, 3]);

    let single = common::brokers();
    let topic = common::unique("admin-rf1");
    create(&single, &topic).await;
    assert_eq!(replicas(&single, &topic), vec![1, 1, 1]);
}
