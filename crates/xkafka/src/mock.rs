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
//! latency, request errors); it is not reachable from other processes.
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
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
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
        self.with_mock(|m| m.create_topic(name, partitions, 1))
    }

    /// Takes a broker down: its connections are closed and new ones refused.
    pub fn broker_down(&self, broker_id: i32) -> Result<(), Error> {
        self.with_mock(|m| m.broker_down(broker_id))
    }

    /// Brings a broker back up.
    pub fn broker_up(&self, broker_id: i32) -> Result<(), Error> {
        self.with_mock(|m| m.broker_up(broker_id))
    }

    /// Adds latency to every request a broker answers.
    pub fn broker_round_trip_time(&self, broker_id: i32, delay: Duration) -> Result<(), Error> {
        self.with_mock(|m| m.broker_round_trip_time(broker_id, delay))
    }

    /// Fails the next requests of kind `api_key`, one error per request in
    /// the order given, whichever client sends them (the errors are
    /// cluster-wide). The whole request fails: a Produce request carrying
    /// several partitions' batches fails for all of them, and nothing is
    /// written. `RD_KAFKA_RESP_ERR__TRANSPORT` makes the broker close the
    /// connection instead of answering.
    pub fn request_errors(
        &self,
        api_key: RDKafkaApiKey,
        errors: &[RDKafkaRespErr],
    ) -> Result<(), Error> {
        self.with_mock(|m| {
            m.request_errors(api_key, errors);
            Ok(())
        })
    }

    /// Starts (or restarts, forgetting what was recorded) recording the
    /// requests the brokers receive, for [`requests`](Self::requests): a
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

    /// How many requests of kind `api_key` the brokers received since
    /// [`start_request_tracking`](Self::start_request_tracking) (0 when not
    /// tracking).
    #[allow(unsafe_code)]
    pub fn requests(&self, api_key: RDKafkaApiKey) -> usize {
        use rdkafka::bindings as rd;
        let wanted = i16::from(api_key);
        // SAFETY: the client is alive; a null mock cluster is checked.
        // `rd_kafka_mock_get_requests` returns `count` copies (or null when
        // there are none) that we own and free with
        // `rd_kafka_mock_request_destroy_array`.
        unsafe {
            let mcluster = rd::rd_kafka_handle_mock_cluster(self.client.client().native_ptr());
            if mcluster.is_null() {
                return 0;
            }
            let mut count = 0usize;
            let requests = rd::rd_kafka_mock_get_requests(mcluster, &mut count);
            if requests.is_null() {
                return 0;
            }
            let matching = (0..count)
                .filter(|&i| rd::rd_kafka_mock_request_api_key(*requests.add(i)) == wanted)
                .count();
            rd::rd_kafka_mock_request_destroy_array(requests, count);
            matching
        }
    }

    /// The underlying rdkafka mock, for fault injection this type does not
    /// wrap.
    pub fn with_mock<T>(
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
