//! **For tests and demos, not production**: an embedded Kafka cluster,
//! librdkafka's in-process mock brokers, for demos and tests that need no
//! external broker. It is not Apache Kafka (no transactions across
//! restarts, no CreateTopics; see [`EmbeddedCluster::create_topic`]), so
//! prove what matters on a real broker too.
//!
//! Its listeners are real TCP sockets on 127.0.0.1, so any client of the same
//! process (xkafka or raw rdkafka) connects to
//! [`EmbeddedCluster::bootstrap_servers`]. It supports consumer groups,
//! commits, idempotent producers, and fault injection (brokers down,
//! latency; request errors and the rest of librdkafka's mock through
//! [`crate::raw::MockClusterExt`]); it is not reachable from other processes.
//!
//! Feature `testing`.
//!
//! ```
//! use xkafka::mock::EmbeddedCluster;
//!
//! let cluster = EmbeddedCluster::start(1).unwrap();
//! cluster.create_topic("orders", 3).unwrap();
//! assert!(cluster.bootstrap_servers().starts_with("127.0.0.1:"));
//! ```

use std::fmt;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::ClientConfig;

use crate::error::{Error, Operation};

/// librdkafka's mock cluster, running inside this process until dropped.
pub struct EmbeddedCluster {
    // The mock cluster lives inside this client's librdkafka instance.
    client: BaseProducer,
    bootstrap: String,
}

impl EmbeddedCluster {
    /// Starts a cluster of `brokers` brokers (ids 1..=brokers).
    pub fn start(brokers: u16) -> Result<Self, Error> {
        let client: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.max(1).to_string())
            .create()
            .map_err(|e| Error::kafka(Operation::Create, e))?;
        let bootstrap = client
            .client()
            .mock_cluster()
            .map(|m| m.bootstrap_servers())
            .ok_or_else(|| {
                Error::kafka(
                    Operation::Create,
                    rdkafka::error::KafkaError::ClientCreation("no mock cluster".into()),
                )
            })?;
        let cluster = EmbeddedCluster { client, bootstrap };
        cluster.no_initial_rebalance_delay();
        Ok(cluster)
    }

    /// The mock's group coordinator waits 3 s before a group's first
    /// assignment by default (like a real broker's
    /// `group.initial.rebalance.delay.ms`); tests and demos want it now.
    #[allow(unsafe_code)]
    fn no_initial_rebalance_delay(&self) {
        use rdkafka::bindings as rd;
        // SAFETY: the client is alive and owns a mock cluster (checked in
        // `start`); the setter only records an integer in it.
        unsafe {
            let mcluster = rd::rd_kafka_handle_mock_cluster(self.client.client().native_ptr());
            if !mcluster.is_null() {
                rd::rd_kafka_mock_group_initial_rebalance_delay_ms(mcluster, 0);
            }
        }
    }

    /// `bootstrap.servers` for clients of this cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the mock does not auto-create topics it is asked
    /// about by consumers).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), Error> {
        crate::config::validate_topic(name)?;
        self.on_mock(|m| m.create_topic(name, partitions, 1))
    }

    /// Takes a broker down: its connections are closed and new ones refused.
    pub fn broker_down(&self, broker_id: i32) -> Result<(), Error> {
        self.on_mock(|m| m.broker_down(broker_id))
    }

    /// Brings a broker back up.
    pub fn broker_up(&self, broker_id: i32) -> Result<(), Error> {
        self.on_mock(|m| m.broker_up(broker_id))
    }

    /// Adds latency to every request a broker answers.
    pub fn broker_round_trip_time(&self, broker_id: i32, delay: Duration) -> Result<(), Error> {
        self.on_mock(|m| m.broker_round_trip_time(broker_id, delay))
    }

    /// Starts (or restarts, forgetting what was recorded) recording the
    /// requests the brokers receive, for
    /// [`MockClusterExt::requests`](crate::raw::MockClusterExt::requests): a
    /// test can then check that an injected fault was actually hit.
    #[allow(unsafe_code)]
    pub fn start_request_tracking(&self) {
        use rdkafka::bindings as rd;
        // SAFETY: the client is alive; a null mock cluster is checked.
        unsafe {
            let mcluster = rd::rd_kafka_handle_mock_cluster(self.client.client().native_ptr());
            if !mcluster.is_null() {
                rd::rd_kafka_mock_start_request_tracking(mcluster);
            }
        }
    }

    /// The client whose librdkafka instance holds the mock cluster (for
    /// [`crate::raw::MockClusterExt`]).
    pub(crate) fn client(&self) -> &BaseProducer {
        &self.client
    }

    /// Runs `f` on librdkafka's mock cluster.
    pub(crate) fn on_mock<T>(
        &self,
        f: impl FnOnce(
            &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        ) -> rdkafka::error::KafkaResult<T>,
    ) -> Result<T, Error> {
        let mock = self.client.client().mock_cluster().ok_or_else(|| {
            Error::kafka(
                Operation::Client,
                rdkafka::error::KafkaError::ClientCreation("mock cluster gone".into()),
            )
        })?;
        f(&mock).map_err(|e| Error::kafka(Operation::Client, e))
    }
}

impl fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap_servers", &self.bootstrap)
            .finish()
    }
}
