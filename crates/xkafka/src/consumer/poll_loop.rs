//! The poll loop: one dedicated thread per consumer that polls librdkafka,
//! runs the handler stack on each message, stores and commits offsets, and
//! shuts down within its deadline.
//!
//! librdkafka's callbacks (rebalance, commit results) run on the thread that
//! polls, so they can commit synchronously without blocking an async
//! runtime's worker. Handler futures run on this thread too (through the
//! runtime's handle), which keeps the sequential path free of task switches;
//! anything they spawn runs on the runtime as usual.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::context::{commit_sync, store, Shared, XConsumerContext};
use super::offsets::TopicPartition;
use super::CommitMode;
use crate::convert::owned_message;
use crate::error::{Decision, Error, Operation};
use crate::{Ack, BoxError, Message};

/// How long one poll waits for a message: bounds how late a shutdown request
/// is noticed while the topics are idle.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct PollLoop {
    pub(crate) consumer: BaseConsumer<XConsumerContext>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) service: BoxCloneService<Message, Ack, BoxError>,
    pub(crate) commit_mode: CommitMode,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) topics: Vec<String>,
}

/// How the loop ended.
pub(crate) struct LoopEnd {
    pub(crate) closed_cleanly: bool,
}

impl PollLoop {
    pub(crate) fn run(mut self) -> LoopEnd {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = self.consumer.subscribe(&topics) {
            // Without a subscription there is nothing to run: stop whatever
            // the error handler says.
            self.shared.report(Error::kafka(Operation::Subscribe, e));
            self.shared.shutdown.shutdown();
        }
        // Interned topic names: one `Arc<str>` per topic, not per message.
        let mut topic_names: Vec<Arc<str>> = Vec::new();
        while !self.shared.shutdown.is_shutting_down() {
            let message = match self.consumer.poll(POLL_INTERVAL) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    self.shared.report(Error::kafka(Operation::Poll, e));
                    continue;
                }
                Some(Ok(m)) => {
                    let topic = intern(&mut topic_names, m.topic());
                    owned_message(&m, topic, &self.shared.group)
                }
            };
            self.process(message);
        }
        self.finish()
    }

    fn process(&mut self, message: Message) {
        let (Some(partition), Some(offset)) = (message.partition(), message.offset()) else {
            return;
        };
        let tp = TopicPartition::new(message.topic_arc().clone(), partition);
        let next = offset + 1;
        if !self.shared.ledger().assigned.contains(&tp) {
            // Fetched before a revocation: the partition's new owner reads it.
            return;
        }
        if self.commit_mode == CommitMode::AtMostOnce {
            // Commit first: after a crash the message is not read again.
            if !store(&self.consumer, &self.shared, &tp, next) {
                return;
            }
            if !commit_sync(&self.consumer, &self.shared, vec![(tp.clone(), next)]) {
                // Handling it now could process it twice after a restart;
                // at-most-once means it is dropped instead.
                self.shared.ledger().skipped += 1;
                return;
            }
        }
        let Some(outcome) = self.call_handler(message) else {
            self.shared.ledger().abandoned += 1;
            return;
        };
        let store_it = match outcome {
            Ok(Ack::Success) => {
                self.shared.ledger().succeeded += 1;
                true
            }
            Ok(Ack::Skip) => {
                self.shared.ledger().skipped += 1;
                true
            }
            Err(source) => {
                self.shared.ledger().failed += 1;
                let err = Error::Handler {
                    topic: tp.topic.clone(),
                    partition,
                    offset,
                    source,
                };
                match self.shared.report(err) {
                    Decision::Continue => {
                        self.shared.ledger().failed_skipped += 1;
                        true
                    }
                    Decision::Stop => false,
                }
            }
        };
        if !store_it || self.commit_mode == CommitMode::AtMostOnce {
            return;
        }
        if store(&self.consumer, &self.shared, &tp, next) && self.commit_mode == CommitMode::Manual
        {
            commit_sync(&self.consumer, &self.shared, vec![(tp, next)]);
        }
    }

    /// Runs the handler stack to completion; `None` when a shutdown's grace
    /// period ran out first (the message then counts as not processed).
    fn call_handler(&mut self, message: Message) -> Option<Result<Ack, BoxError>> {
        let shutdown = self.shared.shutdown.clone();
        let grace = handler_grace(self.shutdown_timeout);
        let service = &mut self.service;
        self.runtime.block_on(async move {
            let work = async {
                service.ready().await?;
                AssertUnwindSafe(service.call(message))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panic_error(panic)))
            };
            let abandon = async {
                shutdown.requested().await;
                let since = shutdown.since().unwrap_or_else(Instant::now);
                tokio::time::sleep_until((since + grace).into()).await;
            };
            tokio::select! {
                biased;
                outcome = work => Some(outcome),
                () = abandon => None,
            }
        })
    }

    /// Commits what was processed, leaves the group and closes, within the
    /// shutdown deadline.
    fn finish(self) -> LoopEnd {
        let since = self.shared.shutdown.since().unwrap_or_else(Instant::now);
        let deadline = since + self.shutdown_timeout;
        let pending = self.shared.ledger().uncommitted(None);
        commit_sync(&self.consumer, &self.shared, pending);
        // rdkafka's Drop leaves the group and waits, without a bound, until
        // the consumer is closed (forever when the brokers are unreachable).
        // Run it on a thread of its own and wait only until the deadline.
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let consumer = self.consumer;
        let spawned = std::thread::Builder::new()
            .name("xkafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = closed_tx.send(());
            });
        let closed_cleanly = spawned.is_ok()
            && closed_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok();
        if !closed_cleanly {
            tracing::warn!(group = %self.shared.group, "consumer did not close before the shutdown deadline");
        }
        LoopEnd { closed_cleanly }
    }
}

/// The share of the shutdown timeout an in-flight handler may use; the rest
/// is kept for the final commit and leaving the group.
fn handler_grace(shutdown_timeout: Duration) -> Duration {
    shutdown_timeout.saturating_sub((shutdown_timeout / 4).min(Duration::from_secs(2)))
}

fn intern(names: &mut Vec<Arc<str>>, topic: &str) -> Arc<str> {
    if let Some(name) = names.iter().find(|n| &***n == topic) {
        return name.clone();
    }
    let name: Arc<str> = topic.into();
    names.push(name.clone());
    name
}

#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub(crate) struct Panicked(String);

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> BoxError {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    Box::new(Panicked(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_leaves_room_to_commit() {
        assert_eq!(
            handler_grace(Duration::from_secs(4)),
            Duration::from_secs(3)
        );
        assert_eq!(
            handler_grace(Duration::from_secs(20)),
            Duration::from_secs(18)
        );
        assert_eq!(handler_grace(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn panic_payloads_become_messages() {
        assert_eq!(
            panic_error(Box::new("boom")).to_string(),
            "handler panicked: boom"
        );
        assert_eq!(
            panic_error(Box::new(String::from("bang"))).to_string(),
            "handler panicked: bang"
        );
    }

    #[test]
    fn interning_reuses_names() {
        let mut names = Vec::new();
        let a = intern(&mut names, "a");
        let b = intern(&mut names, "a");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(names.len(), 1);
    }
}
