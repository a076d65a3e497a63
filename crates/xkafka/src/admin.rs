//! Topic administration helpers: some brokers (and librdkafka's mock
//! cluster) do not auto-create topics, so applications, demos and tests
//! create theirs up front.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::{validate_topic, Config};
use crate::error::{Error, Operation};

/// Creates each `(name, partitions)` topic with replication factor 1 unless
/// it exists already; waits up to `timeout` for the broker.
///
/// `extra` holds client properties (security settings, …) besides
/// `bootstrap.servers`.
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
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
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
