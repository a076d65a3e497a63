//! Topic administration helpers for set-up code (demos, tests, a service
//! creating its own topics at start): brokers commonly refuse to auto-create
//! topics, so create them up front. Partition counts and replication follow
//! what you ask and the cluster's defaults; manage production topics with
//! your usual tooling.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::{validate_topic, Config};
use crate::error::{Error, Operation};

/// Creates each `(name, partitions)` topic unless it exists already, with
/// the cluster's default replication factor (`default.replication.factor`:
/// 1 on a single node, 3 on the failover tests' cluster); waits up to
/// `timeout` for the broker.
///
/// `extra` holds client properties (security settings, …) besides
/// `bootstrap.servers`. librdkafka's mock cluster does not answer
/// CreateTopics (this times out there): create its topics with
/// [`EmbeddedCluster::create_topic`](crate::mock::EmbeddedCluster::create_topic).
pub async fn ensure_topics(
    brokers: &str,
    topics: &[(&str, i32)],
    extra: &Config,
    timeout: Duration,
) -> Result<(), Error> {
    for (name, _) in topics {
        validate_topic(name)?;
    }
    let mut config = extra.clone();
    config.set("bootstrap.servers", brokers);
    let admin: AdminClient<DefaultClientContext> = config
        .to_client_config()?
        .create()
        .map_err(|e| Error::kafka(Operation::Create, e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        // -1: the broker's default (CreateTopics v4+, Kafka 2.4+), so that a
        // topic on a real cluster is replicated as the cluster says.
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| Error::kafka(Operation::Client, e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(Error::kafka(
                    Operation::Client,
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// How many partitions `topic` has, from the cluster's metadata; an error
/// names the topic when it does not exist.
pub async fn partition_count(brokers: &str, topic: &str, timeout: Duration) -> Result<i32, Error> {
    validate_topic(topic)?;
    let (brokers, name) = (brokers.to_owned(), topic.to_owned());
    let counted = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| Error::kafka(Operation::Create, e))?;
        let metadata = client
            .fetch_metadata(Some(&name), timeout)
            .map_err(|e| Error::kafka(Operation::Client, e))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == name) else {
            return Err(Error::InvalidTopic {
                name: name.clone(),
                reason: "the cluster does not know it",
            });
        };
        match t.error() {
            Some(code) => Err(Error::kafka(
                Operation::Client,
                rdkafka::error::KafkaError::MetadataFetch(code.into()),
            )),
            None => Ok(i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)),
        }
    })
    .await;
    counted.unwrap_or_else(|e| {
        Err(Error::Panicked {
            place: "reading a topic's metadata",
            message: e.to_string(),
        })
    })
}
