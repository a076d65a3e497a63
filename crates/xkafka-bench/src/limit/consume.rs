//! The consuming limit: librdkafka's batch path in a tight loop.

use std::ffi::CString;
use std::time::{Duration, Instant};

use bytes::Bytes;
use xkafka::raw::rdkafka::bindings as rd;
use xkafka::raw::rdkafka::consumer::{BaseConsumer, Consumer as _};
use xkafka::raw::rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::clock::Clock;
use crate::vocab::{unique, BoxResult, RUN_TIMEOUT};

/// Records asked of librdkafka per call.
pub(crate) const BATCH: usize = 512;

/// What the loop does with the records it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hand {
    /// Copy key and value into owned buffers, one record at a time.
    Copy,
    /// Read nothing: the ceiling (count and destroy).
    NoCopy,
    /// Copy, and hand the copies over this many at a time (`consume_batch`).
    Batches(usize),
}

/// A queue of our own; destroyed on drop.
struct Queue(*mut rd::rd_kafka_queue_t);

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: a handle `rd_kafka_queue_new` returned, destroyed once;
        // librdkafka drops the records still on it.
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}

/// The offsets to store: one element per partition, element `p` for
/// partition `p`; destroyed on drop.
struct Offsets(*mut rd::rd_kafka_topic_partition_list_t);

impl Drop for Offsets {
    fn drop(&mut self) {
        // SAFETY: a list `rd_kafka_topic_partition_list_new` returned,
        // destroyed once.
        unsafe { rd::rd_kafka_topic_partition_list_destroy(self.0) }
    }
}

/// The records of one call, destroyed when read or dropped.
struct Records(Vec<*mut rd::rd_kafka_message_t>);

impl Drop for Records {
    fn drop(&mut self) {
        for &m in &self.0 {
            // SAFETY: taken from librdkafka and not destroyed yet (the loop
            // clears the vector after destroying what it read).
            unsafe { rd::rd_kafka_message_destroy(m) }
        }
    }
}

/// The same consumer settings as ours (its defaults where librdkafka's
/// differ: the fetch queue backoff, CRC checks, read_committed) and as the
/// safe-API loop.
fn config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("limit"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("fetch.queue.backoff.ms", "10")
        .set("check.crcs", "true")
        .set("isolation.level", "read_committed");
    config
}

/// Reads `messages` records of `topic` from the start (every partition
/// assigned, no group join); messages per second.
pub(crate) fn consume(brokers: &str, topic: &str, messages: u64, hand: Hand) -> BoxResult<f64> {
    let consumer: BaseConsumer = config(brokers).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    if partitions == 0 {
        return Err(format!("{topic} has no partitions").into());
    }
    let rk = consumer.client().native_ptr();
    let name = CString::new(topic)?;
    // SAFETY: a live client; the handle returned is ours (see `Queue`).
    let queue = Queue(unsafe { rd::rd_kafka_queue_new(rk) });
    if queue.0.is_null() {
        return Err("librdkafka gave no queue".into());
    }
    // SAFETY: a new list of `partitions` elements; `add` copies the name.
    let offsets = Offsets(unsafe { rd::rd_kafka_topic_partition_list_new(partitions) });
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        // SAFETY: a live client, a NUL-terminated name and live queues. The
        // partition's handle is ours to destroy once forwarded (forwarding
        // keeps its own reference to our queue). Element `p` of `offsets`
        // is partition `p`: added in order, never removed.
        unsafe {
            let partition_queue = rd::rd_kafka_queue_get_partition(rk, name.as_ptr(), p);
            if partition_queue.is_null() {
                return Err(format!("no queue for {topic} [{p}]").into());
            }
            rd::rd_kafka_queue_forward(partition_queue, queue.0);
            rd::rd_kafka_queue_destroy(partition_queue);
            rd::rd_kafka_topic_partition_list_add(offsets.0, name.as_ptr(), p);
        }
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let clock = Clock::steady(messages);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut records = Records(Vec::with_capacity(BATCH));
    let handing = match hand {
        Hand::Batches(n) => n,
        _ => 0,
    };
    let mut batch: Vec<(Option<Bytes>, Option<Bytes>)> = Vec::with_capacity(handing);
    // The next offset of each partition, -1 until a record is read.
    let mut next = vec![-1_i64; partitions as usize];
    let mut errors = 0_u64;
    while !clock.done() {
        if Instant::now() > deadline {
            break;
        }
        // What is there without waiting; if nothing, wait for one.
        let mut taken = take(&queue, &mut records, 0, BATCH);
        if taken == 0 {
            taken = take(&queue, &mut records, 100, 1);
        }
        if taken == 0 {
            if !batch.is_empty() {
                std::hint::black_box(&batch);
                clock.tick(batch.len() as u64);
                batch.clear();
                store(rk, &offsets, &next)?;
            }
            continue;
        }
        let mut read = 0_u64;
        for &m in &records.0 {
            // SAFETY: a record librdkafka handed over, not destroyed yet;
            // its key and payload are `key_len` and `len` bytes when not
            // null, and live until the record is destroyed just below.
            unsafe {
                let r = &*m;
                if r.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    errors += 1;
                } else {
                    read += 1;
                    if hand != Hand::NoCopy {
                        let key = (!r.key.is_null()).then(|| {
                            Bytes::copy_from_slice(std::slice::from_raw_parts(
                                r.key.cast::<u8>(),
                                r.key_len,
                            ))
                        });
                        let value = (!r.payload.is_null()).then(|| {
                            Bytes::copy_from_slice(std::slice::from_raw_parts(
                                r.payload.cast::<u8>(),
                                r.len,
                            ))
                        });
                        if handing > 0 {
                            batch.push((key, value));
                        } else {
                            std::hint::black_box((key, value));
                        }
                    }
                    if let Some(n) = next.get_mut(r.partition as usize) {
                        *n = r.offset + 1;
                    }
                }
                rd::rd_kafka_message_destroy(m);
            }
        }
        records.0.clear();
        if handing == 0 {
            store(rk, &offsets, &next)?;
            clock.tick(read);
        } else if batch.len() >= handing {
            std::hint::black_box(&batch);
            clock.tick(batch.len() as u64);
            batch.clear();
            store(rk, &offsets, &next)?;
        }
    }
    if errors > 0 {
        eprintln!("limit consumer: {errors} error records");
    }
    Ok(clock.rate()?)
}

/// Takes up to `most` records into `into` (empty), waiting up to
/// `wait_ms` for them; how many.
fn take(queue: &Queue, into: &mut Records, wait_ms: i32, most: usize) -> usize {
    let room = most.min(into.0.capacity());
    // SAFETY: a live queue; librdkafka writes at most `room` pointers into
    // the vector's spare capacity and returns how many (or -1).
    let n =
        unsafe { rd::rd_kafka_consume_batch_queue(queue.0, wait_ms, into.0.as_mut_ptr(), room) };
    let n = usize::try_from(n).unwrap_or(0).min(room);
    // SAFETY: librdkafka initialised the first `n` entries.
    unsafe { into.0.set_len(n) };
    n
}

/// Stores the offsets read so far. A partition not read yet keeps
/// `RD_KAFKA_OFFSET_INVALID` (the list's initial value), which librdkafka
/// stores as "nothing to commit".
fn store(rk: *mut rd::rd_kafka_t, offsets: &Offsets, next: &[i64]) -> BoxResult<()> {
    // SAFETY: `offsets` holds `next.len()` elements, element `p` for
    // partition `p` (see `consume`); a live client.
    let err = unsafe {
        let list = &*offsets.0;
        for (p, &n) in next.iter().enumerate() {
            if n >= 0 {
                (*list.elems.add(p)).offset = n;
            }
        }
        rd::rd_kafka_offsets_store(rk, offsets.0)
    };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return Err(format!("rd_kafka_offsets_store: {err:?}").into());
    }
    Ok(())
}
