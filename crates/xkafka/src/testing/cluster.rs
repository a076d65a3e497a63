//! [`TestCluster`]: the embedded cluster with fixtures published to it
//! and topics read back.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::mock::EmbeddedCluster;
use crate::{Delivery, Error, Message, Producer};

use super::kit_error::KitError;

/// How long [`TestCluster::publish`] waits for each fixture's
/// acknowledgement unless [`TestCluster::publish_timeout`] says otherwise.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded cluster with what a test needs around it. Dropped, it
/// stops.
pub struct TestCluster {
    cluster: EmbeddedCluster,
    producer: Producer,
    publish_timeout: Duration,
}

impl TestCluster {
    /// Starts a one-broker embedded cluster and a producer for fixtures;
    /// must be called inside a tokio runtime.
    pub fn start() -> Result<Self, Error> {
        let cluster = EmbeddedCluster::start(1)?;
        let producer = fixtures_producer(cluster.bootstrap_servers(), DEFAULT_PUBLISH_TIMEOUT)?;
        Ok(TestCluster {
            cluster,
            producer,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
        })
    }

    /// How long [`publish`](Self::publish) waits for each fixture's
    /// acknowledgement (default [`DEFAULT_PUBLISH_TIMEOUT`]). librdkafka
    /// itself gives up on the fixture then (`message.timeout.ms`), so a
    /// fixture reported as timed out is never written later behind the
    /// test's back.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use xkafka::testing::{KitError, TestCluster};
    /// # use xkafka::Message;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = TestCluster::start()?.publish_timeout(Duration::from_secs(2))?;
    /// cluster.create_topic("orders", 1)?;
    /// cluster.cluster().broker_down(1)?;
    /// let err = cluster.publish([Message::builder("orders").value("1").build()]).await;
    /// assert!(matches!(err, Err(KitError::Timeout { .. })), "{err:?}");
    /// # Ok(()) }
    /// ```
    pub fn publish_timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        self.producer = fixtures_producer(self.cluster.bootstrap_servers(), timeout)?;
        self.publish_timeout = timeout;
        Ok(self)
    }

    /// `bootstrap.servers` of the cluster.
    pub fn brokers(&self) -> &str {
        self.cluster.bootstrap_servers()
    }

    /// The cluster itself, for fault injection.
    pub fn cluster(&self) -> &EmbeddedCluster {
        &self.cluster
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), Error> {
        self.cluster.create_topic(name, partitions)
    }

    /// Publishes `messages` in order, each acknowledged before the next;
    /// returns where they landed. A fixture not acknowledged within the
    /// [publish timeout](Self::publish_timeout) fails the call with
    /// [`KitError::Timeout`] (saying how many were published before it),
    /// and the ones after it are not published.
    pub async fn publish(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<Delivery>, KitError> {
        let timeout = self.publish_timeout;
        let mut deliveries = Vec::new();
        for message in messages {
            let what = format!(
                "the acknowledgement of fixture {} (to {})",
                deliveries.len(),
                message.topic()
            );
            let timed_out = |detail: &str| KitError::Timeout {
                waited_for: what.clone(),
                got: format!("{} fixtures published before it{detail}", deliveries.len()),
                timeout,
            };
            // librdkafka fails the fixture at `message.timeout.ms`; the
            // margin only guards against a client that never answers.
            let published = tokio::time::timeout(
                timeout + Duration::from_secs(5),
                self.producer.publish(message),
            )
            .await;
            match published {
                Ok(Ok(delivery)) => deliveries.push(delivery),
                Ok(Err(e)) if e.kafka_code() == Some(RDKafkaErrorCode::MessageTimedOut) => {
                    return Err(timed_out(&format!("; librdkafka gave up on it: {e}")));
                }
                Ok(Err(e)) => return Err(KitError::Kafka(e)),
                Err(_) => return Err(timed_out("; librdkafka did not answer either")),
            }
        }
        Ok(deliveries)
    }

    /// Reads `topic` from the beginning of every partition until it holds
    /// at least `count` messages, then on to the end of every partition,
    /// and returns **everything** it read (in each partition's order;
    /// partitions interleave), as a `read_committed` consumer sees it. So
    /// a test that asserts the length sees duplicates and strays:
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use xkafka::testing::TestCluster;
    /// # use xkafka::Message;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = TestCluster::start()?;
    /// # cluster.create_topic("receipts", 2)?;
    /// // A service under test published receipt 1 twice.
    /// let receipt = |i: i32| Message::builder("receipts").key(i.to_string()).value("paid").build();
    /// cluster.publish([receipt(0), receipt(1), receipt(1)]).await?;
    /// let read = cluster.read("receipts", 2, Duration::from_secs(10)).await?;
    /// assert_eq!(read.len(), 3, "the duplicate is there to be seen");
    /// # Ok(()) }
    /// ```
    ///
    /// Fails after `timeout` saying how many it got (fewer than `count`,
    /// or not at the end of every partition yet). Stop the consumer that
    /// publishes first: what arrives after the read reached the end is not
    /// read.
    pub async fn read(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Message>, KitError> {
        let brokers = self.brokers().to_owned();
        let topic = topic.to_owned();
        let read =
            tokio::task::spawn_blocking(move || read_topic(&brokers, &topic, count, timeout));
        read.await.map_err(|e| {
            KitError::Kafka(Error::Panicked {
                place: "the test kit's reader",
                message: e.to_string(),
            })
        })?
    }

    /// [`read`](Self::read), and fails with [`KitError::TooMany`] when the
    /// topic holds more than `count` messages: the assertion that each
    /// expected message is there exactly once (by count; check the
    /// contents on the returned messages).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use xkafka::testing::{KitError, TestCluster};
    /// # use xkafka::Message;
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cluster = TestCluster::start()?;
    /// # cluster.create_topic("receipts", 1)?;
    /// let receipt = |i: i32| Message::builder("receipts").key(i.to_string()).value("paid").build();
    /// cluster.publish([receipt(0), receipt(1), receipt(1)]).await?;
    /// let err = cluster.read_exactly("receipts", 2, Duration::from_secs(10)).await.unwrap_err();
    /// assert!(matches!(err, KitError::TooMany { found: 3, .. }), "{err}");
    /// // "expected 2 messages in receipts, found 3: alike: receipts[0]@2 = receipts[0]@1"
    /// assert!(err.to_string().contains("receipts[0]@2 = receipts[0]@1"), "{err}");
    /// # Ok(()) }
    /// ```
    pub async fn read_exactly(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Message>, KitError> {
        let read = self.read(topic, count, timeout).await?;
        if read.len() > count {
            return Err(KitError::TooMany {
                topic: topic.to_owned(),
                expected: count,
                found: read.len(),
                surplus: alike(&read),
            });
        }
        Ok(read)
    }
}

impl fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCluster")
            .field("brokers", &self.brokers())
            .finish_non_exhaustive()
    }
}

fn fixtures_producer(brokers: &str, timeout: Duration) -> Result<Producer, Error> {
    Producer::builder("xkafka-test-fixtures")
        .brokers([brokers])
        // librdkafka's own bound (default 300 s): past it the fixture fails
        // and is never sent.
        .config(
            "message.timeout.ms",
            timeout.as_millis().clamp(1, i32::MAX as u128).to_string(),
        )
        .error_handler(|err| tracing::warn!(%err, "test fixtures producer"))
        .build()
}

/// Names the messages of `read` that repeat an earlier one (same partition,
/// key, value and headers), at most ten.
fn alike(read: &[Message]) -> String {
    /// Partition, key, value and headers: what makes two messages alike.
    type Identity<'a> = (
        i32,
        Option<&'a [u8]>,
        Option<&'a [u8]>,
        Vec<(&'a str, Option<&'a [u8]>)>,
    );
    let mut first: HashMap<Identity<'_>, &Message> = HashMap::new();
    let mut pairs = Vec::new();
    for m in read {
        let id = (
            m.partition().unwrap_or(-1),
            m.key().map(|k| &k[..]),
            m.value().map(|v| &v[..]),
            m.headers()
                .iter()
                .map(|h| (h.name(), h.value().map(|v| &v[..])))
                .collect(),
        );
        match first.get(&id) {
            Some(earlier) => pairs.push(format!("{} = {}", m.location(), earlier.location())),
            None => {
                first.insert(id, m);
            }
        }
    }
    if pairs.is_empty() {
        return "no two alike (strays rather than duplicates)".to_owned();
    }
    let more = pairs.len().saturating_sub(10);
    pairs.truncate(10);
    let mut text = format!("alike: {}", pairs.join(", "));
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

fn read_topic(
    brokers: &str,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Message>, KitError> {
    let deadline = Instant::now() + timeout;
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "xkafka-test-kit-reader")
        .set("enable.auto.commit", "false")
        // The end of each partition (its last stable offset, read_committed
        // being librdkafka's default) is reported: the read goes that far.
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| Error::kafka(crate::Operation::Create, e))?;
    let metadata = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::kafka(crate::Operation::Poll, e))?;
    let partitions: HashSet<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
    }
    client
        .assign(&tpl)
        .map_err(|e| Error::kafka(crate::Operation::Subscribe, e))?;
    let name: Arc<str> = topic.into();
    let group: Arc<str> = "xkafka-test-kit-reader".into();
    let mut messages = Vec::with_capacity(count);
    // Partitions read to their end since their last message.
    let mut at_end: HashSet<i32> = HashSet::new();
    loop {
        if messages.len() >= count && !partitions.is_empty() && at_end.len() == partitions.len() {
            return Ok(messages);
        }
        if Instant::now() >= deadline {
            let (waited_for, got) = if messages.len() < count {
                (
                    format!("{count} messages in {topic}"),
                    format!("read {} of them", messages.len()),
                )
            } else {
                (
                    format!("the end of every partition of {topic}"),
                    format!(
                        "read {} messages; partitions not at their end: {:?}",
                        messages.len(),
                        partitions.difference(&at_end).collect::<Vec<_>>()
                    ),
                )
            };
            return Err(KitError::Timeout {
                waited_for,
                got,
                timeout,
            });
        }
        match client.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                at_end.remove(&rdkafka::Message::partition(&m));
                messages.push(crate::convert::owned_message(
                    crate::convert::Fetched::of(&m),
                    name.clone(),
                    &group,
                ));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
}
