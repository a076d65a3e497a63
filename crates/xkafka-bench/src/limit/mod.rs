//! The limit: the fastest loop librdkafka allows for the work a comparison
//! measures, with no framework and no safe wrapper around it — the figure
//! ours is held against (`RATIO <name>_vs_limit`). The rdkafka crate's safe
//! API loops (`baseline`) stay beside it as what a user writes by hand.
//!
//! - consuming ([`consume`]): every partition's queue forwarded to one queue,
//!   `rd_kafka_consume_batch_queue` in a tight loop (batches of
//!   [`consume::BATCH`]), per record key and value copied into owned buffers
//!   (ours hands the handler owned `Bytes` too) and the record destroyed; one
//!   `rd_kafka_offsets_store` and one deadline check per batch. The no-copy
//!   variant is the ceiling; the batch variant hands over 1,000 at a time.
//! - publishing ([`produce`]): `rd_kafka_produce` with `RD_KAFKA_MSG_F_COPY`
//!   on a cached topic handle, delivery reports as events on the main queue,
//!   served by a thread of their own that reads each event's message array.
//!
//! The only `unsafe` code of the workspace outside the library lives here;
//! each block says why it holds.

#![allow(unsafe_code)]

pub(crate) mod consume;
pub(crate) mod produce;
