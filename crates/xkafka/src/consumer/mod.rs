//! The streaming and batch consumers: [`Consumer`] (one message per handler
//! call) and [`BatchConsumer`] (batches), both built by [`ConsumerBuilder`],
//! whose [`Kind`] parameter ([`Streaming`] or [`Batching`]) says which
//! handler it takes. The common types are re-exported at the crate root.
//!
//! # Map
//!
//! **Who owns what.** Three kinds of thread touch a consumer:
//!
//! * **the poll thread** (one per consumer, started by `run` in `run.rs`,
//!   its loop in `poll_loop.rs`) owns the librdkafka client, the fetch queue
//!   and the [`pipeline`](self) — offset trackers, held and dispatched
//!   messages, the transaction. Nothing else touches them: librdkafka's
//!   callbacks (`context.rs`: rebalances, commit results, logs) run inside
//!   its `poll`, and the pipeline lives in the client's context.
//! * **the lanes** (tokio tasks, `dispatch/lane.rs`) run the handler stack;
//!   each returns a completion to the poll thread over a channel and never
//!   touches offsets.
//! * **the caller's task** awaits `run` and reads [`StatusHandle`]s.
//!
//! What all of them share is `shared.rs` (the group, the ledger of outcomes,
//! the error handler's decisions, the shutdown signal; locks and atomics
//! only) and the status board (`status.rs`).
//!
//! **How a record flows.** librdkafka fetches → `fetch_queue.rs` (our own
//! queue per assignment, taken a batch at a time) → `poll_loop.rs` → the
//! pipeline's dispatch (backpressure: a full partition is paused, the loop
//! never blocks; a message not yet due is held) → `dispatch/` (lane choice by
//! [`Order`]; `dispatch/inline.rs` runs it on the poll thread while its lane
//! is idle) → a lane calls the handler (`dispatch/lane.rs`) → its completion
//! comes back to the pipeline's settle step (`tracker.rs`: the contiguous low
//! watermark) → offsets stored and committed (`commit.rs`; with a
//! transactional producer, committed in the transaction, `transaction.rs`).
//! Rebalances (`context.rs`, `rebalance.rs`) drain and commit a revoked
//! partition through the pipeline's revoke step first; start offsets
//! (`start_offsets.rs`) are resolved before the first fetch.
//!
//! **Files.** The public pieces: `builder.rs` (settings and validation),
//! `kind.rs`, `run.rs` (the consumers), `commit_mode.rs`, `summary.rs`,
//! `status.rs`, `offsets.rs`, `rebalance.rs`. The rest is the machinery
//! above.

mod builder;
mod commit;
mod commit_mode;
mod context;
mod dispatch;
mod fetch_queue;
mod kind;
mod offsets;
mod pipeline;
mod poll_loop;
mod rebalance;
mod refused;
mod run;
mod shared;
mod start_offsets;
mod status;
mod summary;
#[cfg(test)]
mod tests;
mod tracker;
mod transaction;

pub use builder::ConsumerBuilder;
pub use commit_mode::CommitMode;
pub use dispatch::Order;
pub use kind::{Batching, Kind, Streaming};
pub use offsets::TopicPartition;
pub use rebalance::Rebalance;
pub(crate) use rebalance::{Binding, Listener};
pub use run::{BatchConsumer, Consumer};
pub use status::{
    ConsumerStatus, Counters, GroupState, PartitionStatus, PauseReason, StatusHandle, Unfinished,
};
pub use summary::Summary;
