//! What the failover tests share: a `Concurrency(8)` per-key consumer that
//! records every message it handled, and the verdict of a run — the
//! acknowledged ids against what the consumer handled and against the log
//! read back (lost, duplicated, out of order per key).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use xkafka::{Ack, BoxError, Consumer, Decision, Error, Message, Order, ShutdownHandle, Summary};

use crate::cluster::{self, Acked, Logged};

/// One message the consumer handled.
#[derive(Debug, Clone)]
pub struct Handled {
    /// When the handler ran.
    pub at: Instant,
    /// Its partition.
    pub partition: i32,
    /// Its key.
    pub key: String,
    /// Its id.
    pub id: u64,
}

/// A consumer running on a task of its own.
pub struct Consuming {
    /// Everything handled, in handling order.
    pub handled: Arc<Mutex<Vec<Handled>>>,
    /// Everything the error handler received.
    pub errors: Arc<Mutex<Vec<String>>>,
    stop: ShutdownHandle,
    task: tokio::task::JoinHandle<Result<Summary, Error>>,
}

impl Consuming {
    /// Starts group `group` on `topic`: `Concurrency(8)`, `Order::PerKey`,
    /// with `extra` properties. Client errors are let through (librdkafka
    /// recovers); a handler failure (none expected) stops the consumer.
    pub fn start(
        brokers: &str,
        topic: &str,
        group: &str,
        extra: &[(&str, &str)],
    ) -> Result<Self, BoxError> {
        let handled: Arc<Mutex<Vec<Handled>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let (sink, log) = (handled.clone(), errors.clone());
        let consumer = Consumer::builder(group)
            .brokers([brokers])
            .topics([topic])
            .config("auto.offset.reset", "earliest")
            .configs(extra.iter().copied())
            .concurrency(8)
            .order(Order::PerKey)
            .shutdown_timeout(Duration::from_secs(10))
            .error_handler(move |err: &Error| {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(err.to_string());
                if err.message_location().is_some() {
                    Decision::Stop
                } else {
                    Decision::Continue
                }
            })
            .handler(move |m: Message| {
                let sink = sink.clone();
                async move {
                    let id = m.value_str().and_then(|v| v.parse().ok());
                    let Some(id) = id else {
                        return Err(BoxError::from("not an id"));
                    };
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Handled {
                            at: Instant::now(),
                            partition: m.partition().unwrap_or(-1),
                            key: m.key_str().unwrap_or_default().to_owned(),
                            id,
                        });
                    Ok(Ack::Success)
                }
            })
            .build()?;
        let stop = consumer.shutdown_handle();
        let task = tokio::spawn(consumer.run(std::future::pending::<()>()));
        Ok(Consuming {
            handled,
            errors,
            stop,
            task,
        })
    }

    /// How many messages were handled so far.
    pub fn count(&self) -> usize {
        self.handled.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The first message handled that matches `pred`, if any.
    pub fn first(&self, pred: impl Fn(&Handled) -> bool) -> Option<Handled> {
        self.handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|h| pred(h))
            .cloned()
    }

    /// Waits (polling) until `done(self)` holds; an error after `timeout` or
    /// when the consumer stopped by itself.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Result<Duration, BoxError> {
        let started = Instant::now();
        while !done(self) {
            if self.task.is_finished() {
                return Err(format!("the consumer stopped by itself waiting for {what}").into());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "no {what} within {timeout:?} ({} handled; errors {:?})",
                    self.count(),
                    self.errors.lock().unwrap_or_else(|p| p.into_inner()).last()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(started.elapsed())
    }

    /// Waits until every acknowledged id was handled, then shuts down.
    pub async fn finish(self, acked: &Acked, timeout: Duration) -> Result<Finished, BoxError> {
        let caught_up = self
            .wait("catch-up with every acknowledged id", timeout, |c| {
                let handled = c.handled.lock().unwrap_or_else(|p| p.into_inner());
                let seen: HashSet<u64> = handled.iter().map(|h| h.id).collect();
                acked.ids.iter().all(|id| seen.contains(id))
            })
            .await;
        self.stop.shutdown();
        let summary = self.task.await??;
        caught_up?;
        let handled = self
            .handled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Finished {
            handled,
            errors,
            summary,
        })
    }
}

/// What a consumer did, once it stopped.
#[derive(Debug)]
pub struct Finished {
    /// Everything handled, in handling order.
    pub handled: Vec<Handled>,
    /// Everything the error handler received.
    pub errors: Vec<String>,
    /// Its run's summary.
    pub summary: Summary,
}

/// A run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Ids handed to `publish_async`.
    pub published: u64,
    /// Ids the broker acknowledged.
    pub acked: usize,
    /// Ids whose delivery was reported failed.
    pub failed: u64,
    /// Acknowledged ids the consumer never handled.
    pub lost: usize,
    /// Acknowledged ids absent from the log.
    pub lost_in_log: usize,
    /// Records of the log beyond one per id.
    pub log_duplicates: usize,
    /// Handler runs beyond one per id (redeliveries).
    pub handled_duplicates: usize,
    /// Keys whose ids are not increasing in log order.
    pub log_order_violations: usize,
    /// Keys whose ids were first handled out of increasing order.
    pub handling_order_violations: usize,
    /// Ids reported failed that are in the log all the same.
    pub failed_but_written: usize,
    /// Messages the error handler received.
    pub consumer_errors: usize,
    /// Example lost ids.
    pub lost_examples: Vec<u64>,
}

/// Compares what was acknowledged with what was handled and what the log
/// holds.
pub fn verdict(acked: &Acked, failed_ids: &[u64], finished: &Finished, log: &[Logged]) -> Verdict {
    let handled: HashSet<u64> = finished.handled.iter().map(|h| h.id).collect();
    let mut lost: Vec<u64> = acked
        .ids
        .iter()
        .filter(|id| !handled.contains(id))
        .copied()
        .collect();
    lost.sort_unstable();
    let in_log: HashSet<u64> = log.iter().map(|l| l.id).collect();
    let lost_in_log = acked.ids.iter().filter(|id| !in_log.contains(id)).count();
    // Per key, ids in log order (one key, one partition) and in first-handling
    // order must both increase: the feeder publishes them in that order.
    let increasing_violations = |seq: &mut dyn Iterator<Item = (&str, u64)>| {
        let mut last: HashMap<&str, u64> = HashMap::new();
        let mut bad: HashSet<&str> = HashSet::new();
        for (key, id) in seq {
            if let Some(prev) = last.insert(key, id) {
                if id <= prev {
                    bad.insert(key);
                }
            }
        }
        bad.len()
    };
    let log_order_violations =
        increasing_violations(&mut log.iter().map(|l| (l.key.as_str(), l.id)));
    let mut first_seen = HashSet::new();
    let handling_order_violations = increasing_violations(
        &mut finished
            .handled
            .iter()
            .filter(|h| first_seen.insert(h.id))
            .map(|h| (h.key.as_str(), h.id)),
    );
    Verdict {
        published: acked.published,
        acked: acked.ids.len(),
        failed: acked.failed,
        lost: lost.len(),
        lost_in_log,
        log_duplicates: log.len() - in_log.len(),
        handled_duplicates: finished.handled.len() - handled.len(),
        log_order_violations,
        handling_order_violations,
        failed_but_written: failed_ids.iter().filter(|id| in_log.contains(id)).count(),
        consumer_errors: finished.errors.len(),
        lost_examples: lost.into_iter().take(10).collect(),
    }
}

/// [`cluster::read_all`] on a blocking thread.
pub async fn read_log(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Result<Vec<Logged>, BoxError> {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || cluster::read_all(&b, &t, partitions)).await?
}
