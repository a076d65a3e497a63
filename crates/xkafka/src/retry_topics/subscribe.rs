//! [`RetryTopics::subscribe`]: a consumer of the source and its tiers. Apart
//! from the tiers themselves, so that the tiers need not know the consumer's
//! builder (which looks for their layer when it is added).

use super::headers::due;
use super::tiers::RetryTopics;
use crate::consumer::{ConsumerBuilder, Kind};

impl RetryTopics {
    /// Subscribes `builder` to the main topic and every tier, with
    /// [`due`] as its [`not_before`](ConsumerBuilder::not_before), and (with
    /// [`keep_key_order`](Self::keep_key_order)) what key order needs: one
    /// consumer handling both. Add [`layer`](Self::layer) to it as well,
    /// where the stack should have it.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use xkafka::retry_topics::RetryTopics;
    /// use xkafka::{Ack, Consumer, Decision, Message, Producer};
    ///
    /// # fn build() -> Result<(), xkafka::Error> {
    /// let producer = Producer::builder("orders-retries")
    ///     .brokers(["127.0.0.1:9092"])
    ///     .error_handler(|err| eprintln!("{err}"))
    ///     .build()?;
    /// let retries = RetryTopics::new(producer, "orders")
    ///     .tiers([Duration::from_secs(1), Duration::from_secs(30)])
    ///     .keep_key_order();
    /// let consumer = retries
    ///     .subscribe(Consumer::builder("billing"))
    ///     .brokers(["127.0.0.1:9092"])
    ///     .error_handler(|_| Decision::Stop)
    ///     .layer(retries.layer())
    ///     .handler(|_m: Message| async { Ack::Success })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe<K: Kind>(&self, builder: ConsumerBuilder<K>) -> ConsumerBuilder<K> {
        let (topics, listener) = self.subscription();
        let builder = builder.topics(topics).not_before(due);
        match listener {
            Some(listener) => builder.listener(listener),
            None => builder,
        }
    }
}
