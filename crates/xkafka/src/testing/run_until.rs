//! [`run_until`]: a real consumer run until a condition holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consumer::{BatchConsumer, StatusHandle};
use crate::{Consumer, Error, ShutdownHandle, Summary};

use super::kit_error::KitError;

/// When [`run_until`] stops the consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Until {
    /// Once this many messages were handled (succeeded, skipped or failed).
    Handled(u64),
    /// Once the committed offset of each `(topic, partition)` reached the
    /// given offset (the next one to read).
    Committed(Vec<(String, i32, i64)>),
}

/// A consumer [`run_until`] can drive: [`Consumer`] or [`BatchConsumer`].
///
/// Sealed: only xkafka's consumers implement it, so its methods can change
/// without breaking anyone.
pub trait Runnable: sealed::Sealed + Send + 'static {
    /// Its status handle.
    fn status(&self) -> StatusHandle;
    /// Its shutdown handle.
    fn stopper(&self) -> ShutdownHandle;
    /// Runs it until `shutdown`.
    fn run_with(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Pin<Box<dyn Future<Output = Result<Summary, Error>> + Send>>;
}

mod sealed {
    /// Implemented by xkafka's consumers only (see [`super::Runnable`]).
    pub trait Sealed {}
    impl Sealed for crate::Consumer {}
    impl Sealed for crate::BatchConsumer {}
}

impl Runnable for Consumer {
    fn status(&self) -> StatusHandle {
        self.status_handle()
    }
    fn stopper(&self) -> ShutdownHandle {
        self.shutdown_handle()
    }
    fn run_with(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Pin<Box<dyn Future<Output = Result<Summary, Error>> + Send>> {
        Box::pin(self.run(shutdown))
    }
}

impl Runnable for BatchConsumer {
    fn status(&self) -> StatusHandle {
        self.status_handle()
    }
    fn stopper(&self) -> ShutdownHandle {
        self.shutdown_handle()
    }
    fn run_with(
        self,
        shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Pin<Box<dyn Future<Output = Result<Summary, Error>> + Send>> {
        Box::pin(self.run(shutdown))
    }
}

/// Runs `consumer` until `until` holds, then shuts it down (bounded, as
/// always) and returns its [`Summary`]. Past `timeout` it is shut down too
/// and the error says what had happened by then. An error the consumer
/// stopped on is returned as [`KitError::Kafka`].
pub async fn run_until<C: Runnable>(
    consumer: C,
    until: Until,
    timeout: Duration,
) -> Result<Summary, KitError> {
    let status = consumer.status();
    let stop = consumer.stopper();
    let deadline = Instant::now() + timeout;
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (watch, flag, goal) = (status.clone(), reached.clone(), until.clone());
    let watcher = async move {
        loop {
            if holds(&goal, &watch) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            // The status is refreshed every 100 ms: poll a little faster.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let summary = consumer.run_with(Box::pin(watcher)).await;
    drop(stop);
    let summary = summary?;
    if reached.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(summary);
    }
    Err(KitError::Timeout {
        waited_for: match &until {
            Until::Handled(n) => format!("{n} messages handled"),
            Until::Committed(offsets) => format!("committed offsets {offsets:?}"),
        },
        got: format!(
            "{} handled ({} succeeded, {} skipped, {} failed); committed {:?}",
            summary.succeeded + summary.skipped + summary.failed,
            summary.succeeded,
            summary.skipped,
            summary.failed,
            summary.committed
        ),
        timeout,
    })
}

fn holds(until: &Until, status: &StatusHandle) -> bool {
    let snapshot = status.snapshot();
    match until {
        Until::Handled(n) => {
            let c = snapshot.counters;
            c.succeeded + c.skipped + c.failed >= *n
        }
        Until::Committed(targets) => targets.iter().all(|(topic, partition, offset)| {
            snapshot.partitions.iter().any(|p| {
                p.topic == *topic && p.partition == *partition && p.committed >= Some(*offset)
            })
        }),
    }
}
