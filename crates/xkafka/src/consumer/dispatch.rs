//! Lanes: how messages reach handlers under `Concurrency(N)` and an
//! ordering mode, off the poll thread.
//!
//! A lane is a tokio task that handles its messages one after another. Which
//! lane a message goes to decides the ordering: one lane per partition keeps
//! partition order; one lane per (partition, key slot) keeps key order while
//! the keys of one partition run in parallel; unordered lanes take any
//! message. A semaphore of N permits bounds how many handlers run at once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as Atomic};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::context::Shared;
use super::offsets::TopicPartition;
use crate::error::{Decision, Error};
use crate::{Ack, BoxError, Message};

/// Which messages may be handled in parallel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// Messages of one partition are handled one after another, in offset
    /// order; different partitions run in parallel (up to the concurrency).
    #[default]
    PerPartition,
    /// Messages with the same key are handled in offset order; different
    /// keys of the same partition run in parallel. Keyless messages keep
    /// their partition's order among themselves.
    PerKey,
    /// Any message may run in parallel with any other (Go xkafka's
    /// behaviour), for handlers that do not care about order.
    Unordered,
}

/// Open for one assignment of one partition; closed when it is revoked (or
/// the consumer stops), after which its queued messages are dropped unread.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    /// Handlers of this partition running right now.
    running: AtomicUsize,
}

impl Gate {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Gate {
            open: AtomicBool::new(true),
            running: AtomicUsize::new(0),
        })
    }

    pub(crate) fn close(&self) {
        self.open.store(false, Atomic::Release);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Atomic::Acquire)
    }

    pub(crate) fn running(&self) -> usize {
        self.running.load(Atomic::Acquire)
    }
}

/// A message on its way to a lane.
pub(crate) struct Work {
    pub(crate) message: Message,
    pub(crate) tp: TopicPartition,
    pub(crate) offset: i64,
    pub(crate) gate: Arc<Gate>,
    pub(crate) epoch: u64,
}

/// How a message ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    Done(Ack),
    /// Failed; the error handler already decided.
    Failed(Decision),
}

/// What lanes tell the poll thread.
pub(crate) enum Report {
    /// A message finished.
    Completed(Completion),
    /// At-most-once: a lane is about to handle a message and waits for its
    /// offset to be committed first (the sender is dropped if that fails).
    Claim(Claim),
}

pub(crate) struct Claim {
    pub(crate) tp: TopicPartition,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) committed: oneshot::Sender<()>,
}

/// How a lane waits for the commit it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CommitWait {
    /// Never (automatic commits).
    None,
    /// After each message, before the next one (manual commit).
    After,
    /// Before each message (at-most-once).
    Before,
}

/// A lane's report that a message finished.
pub(crate) struct Completion {
    pub(crate) tp: TopicPartition,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) settled: Settled,
    /// Set when the lane waits for the offset to be committed before its
    /// next message (manual commit).
    pub(crate) committed: Option<oneshot::Sender<()>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Partition(TopicPartition),
    Slot(TopicPartition, u64),
    Keyless(TopicPartition),
    Global(u64),
}

impl LaneKey {
    fn partition(&self) -> Option<&TopicPartition> {
        match self {
            LaneKey::Partition(tp) | LaneKey::Slot(tp, _) | LaneKey::Keyless(tp) => Some(tp),
            LaneKey::Global(_) => None,
        }
    }
}

struct Lane {
    tx: mpsc::UnboundedSender<Work>,
    task: AbortHandle,
}

pub(crate) struct Dispatcher {
    order: Order,
    concurrency: usize,
    runtime: tokio::runtime::Handle,
    service: BoxCloneService<Message, Ack, BoxError>,
    permits: Arc<Semaphore>,
    lanes: HashMap<LaneKey, Lane>,
    completions: std_mpsc::Sender<Report>,
    shared: Arc<Shared>,
    commit_wait: CommitWait,
    next_global: u64,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        order: Order,
        concurrency: usize,
        runtime: tokio::runtime::Handle,
        service: BoxCloneService<Message, Ack, BoxError>,
        completions: std_mpsc::Sender<Report>,
        shared: Arc<Shared>,
        commit_wait: CommitWait,
    ) -> Self {
        let concurrency = concurrency.max(1);
        Dispatcher {
            order,
            concurrency,
            runtime,
            service,
            permits: Arc::new(Semaphore::new(concurrency)),
            lanes: HashMap::new(),
            completions,
            shared,
            commit_wait,
            next_global: 0,
        }
    }

    fn lane_key(&mut self, work: &Work) -> LaneKey {
        match self.order {
            Order::PerPartition => LaneKey::Partition(work.tp.clone()),
            Order::PerKey => match work.message.key() {
                // Same key, same slot: key order holds; N slots per partition
                // are enough to keep N handlers busy.
                Some(key) => {
                    let mut h = DefaultHasher::new();
                    key.hash(&mut h);
                    LaneKey::Slot(work.tp.clone(), h.finish() % self.concurrency as u64)
                }
                None => LaneKey::Keyless(work.tp.clone()),
            },
            Order::Unordered => {
                self.next_global = (self.next_global + 1) % self.concurrency as u64;
                LaneKey::Global(self.next_global)
            }
        }
    }

    pub(crate) fn dispatch(&mut self, work: Work) {
        let key = self.lane_key(&work);
        let lane = self.lanes.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let task = self.runtime.spawn(run_lane(
                rx,
                self.service.clone(),
                self.permits.clone(),
                self.completions.clone(),
                self.shared.clone(),
                self.commit_wait,
            ));
            Lane {
                tx,
                task: task.abort_handle(),
            }
        });
        // A lane only ends when its sender is dropped or it is aborted at
        // the shutdown deadline; then the message is simply not handled.
        let _ = lane.tx.send(work);
    }

    /// Forgets the lanes of a revoked partition; they end once their
    /// running handler (if any) finished.
    pub(crate) fn close_partition(&mut self, tp: &TopicPartition) {
        self.lanes.retain(|key, _| key.partition() != Some(tp));
    }

    /// Stops every lane now, dropping running handlers (shutdown deadline).
    pub(crate) fn abort_all(&mut self) {
        for (_, lane) in self.lanes.drain() {
            lane.task.abort();
        }
    }
}

async fn run_lane(
    mut rx: mpsc::UnboundedReceiver<Work>,
    mut service: BoxCloneService<Message, Ack, BoxError>,
    permits: Arc<Semaphore>,
    completions: std_mpsc::Sender<Report>,
    shared: Arc<Shared>,
    commit_wait: CommitWait,
) {
    while let Some(work) = rx.recv().await {
        let Work {
            message,
            tp,
            offset,
            gate,
            epoch,
        } = work;
        let Ok(_permit) = permits.acquire().await else {
            return;
        };
        // Revoked or stopping: the message stays unread (the partition's next
        // owner, or our next run, reads it).
        if !gate.is_open() || shared.shutdown.is_shutting_down() {
            continue;
        }
        if commit_wait == CommitWait::Before {
            let (committed, claimed) = oneshot::channel();
            let claim = Claim {
                tp: tp.clone(),
                epoch,
                offset,
                committed,
            };
            if completions.send(Report::Claim(claim)).is_err() {
                return;
            }
            if claimed.await.is_err() {
                // Not committed: handling it could process it twice after a
                // restart, so at-most-once drops it (counted as skipped).
                let done = Completion {
                    tp,
                    epoch,
                    offset,
                    settled: Settled::Done(Ack::Skip),
                    committed: None,
                };
                if completions.send(Report::Completed(done)).is_err() {
                    return;
                }
                continue;
            }
        }
        gate.running.fetch_add(1, Atomic::AcqRel);
        let outcome = async {
            service.ready().await?;
            AssertUnwindSafe(service.call(message))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panic_error(panic)))
        }
        .await;
        let settled = match outcome {
            Ok(ack) => Settled::Done(ack),
            Err(source) => Settled::Failed(shared.report(Error::Handler {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                source,
            })),
        };
        let (committed, wait) = if commit_wait == CommitWait::After {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // Report before lowering `running`, so that a drain that sees zero
        // running handlers also sees every completion.
        let sent = completions.send(Report::Completed(Completion {
            tp,
            epoch,
            offset,
            settled,
            committed,
        }));
        gate.running.fetch_sub(1, Atomic::AcqRel);
        if sent.is_err() {
            return;
        }
        if let Some(wait) = wait {
            // Manual commit: the next message of this lane waits until this
            // one's offset is committed (or the consumer is stopping).
            let _ = wait.await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("handler panicked: {0}")]
pub(crate) struct Panicked(String);

pub(crate) fn panic_error(panic: Box<dyn std::any::Any + Send>) -> BoxError {
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
}
