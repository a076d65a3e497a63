//! The fetch queue: where librdkafka puts the records of the partitions
//! this consumer is assigned, taken by the poll loop a batch at a time.
//!
//! rdkafka's `poll` hands over one record per call, and every call pays for
//! a queue lock, three clock reads, an event and an `Arc` — about as much
//! as the record's copy. `rd_kafka_consume_batch_queue` takes up to a poll
//! round's worth for one of each. It cannot read the consumer queue itself:
//! a rebalance found there would be answered by librdkafka's own default
//! (assign nothing) instead of our callback. So each assigned partition's
//! queue is forwarded to a queue of our own, and only records (and their
//! errors) go there; rebalances, commit results and client errors stay on
//! the consumer queue, which `poll` serves as before.
//!
//! A wait on the fetch queue must still end when an event arrives on the
//! consumer queue: librdkafka calls [`wake`] when that queue stops being
//! empty, and `wake` interrupts the wait (`rd_kafka_queue_yield`).
//!
//! Thread ownership: the poll thread takes batches; the rebalance callback
//! (on the poll thread too, inside `poll`) routes partitions here; `wake`
//! runs on librdkafka's threads and only touches the queue through
//! librdkafka's own locking.

use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use rdkafka::TopicPartitionList;

use crate::convert::Fetched;

/// Our queue and the consumer queue whose events interrupt a wait on it.
pub(crate) struct FetchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    consumer_queue: NonNull<rd::rd_kafka_queue_t>,
}

// SAFETY: librdkafka's queue handles are thread-safe (every operation
// takes the queue's lock); the handles are only destroyed in `drop`.
#[allow(unsafe_code)]
unsafe impl Send for FetchQueue {}
// SAFETY: as above: `&self` methods only call librdkafka's locked queue
// operations.
#[allow(unsafe_code)]
unsafe impl Sync for FetchQueue {}

/// Called by librdkafka (on its own threads, with the consumer queue's lock
/// held) when an event lands on the empty consumer queue: ends a wait on
/// the fetch queue, so the poll loop serves the event at once.
#[allow(unsafe_code)]
unsafe extern "C" fn wake(_rk: *mut rd::rd_kafka_t, queue: *mut std::ffi::c_void) {
    // SAFETY: `queue` is our queue handle, registered in `new` and
    // unregistered in `drop` before the handle is destroyed; unregistering
    // takes the same lock this call runs under, so it never runs after.
    unsafe { rd::rd_kafka_queue_yield(queue.cast()) }
}

impl FetchQueue {
    /// A fetch queue for `consumer`; `None` if librdkafka gives no queue.
    #[allow(unsafe_code)]
    pub(crate) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<Self> {
        let rk = consumer.client().native_ptr();
        // SAFETY: a live client; both calls return owned handles (or null).
        let (queue, consumer_queue) = unsafe {
            (
                NonNull::new(rd::rd_kafka_queue_new(rk))?,
                rd::rd_kafka_queue_get_consumer(rk),
            )
        };
        let Some(consumer_queue) = NonNull::new(consumer_queue) else {
            // SAFETY: ours, not shared with anyone yet.
            unsafe { rd::rd_kafka_queue_destroy(queue.as_ptr()) };
            return None;
        };
        // SAFETY: both handles are live; `wake` only yields `queue`, which
        // outlives the registration (see `drop`).
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(
                consumer_queue.as_ptr(),
                Some(wake),
                queue.as_ptr().cast(),
            );
        }
        Some(FetchQueue {
            queue,
            consumer_queue,
        })
    }

    /// Sends the records of the partitions in `tpl` here from now on. Called
    /// before they are assigned: librdkafka keeps a forwarding the
    /// application set when it starts fetching, and clears it when it stops
    /// (so every assignment routes again).
    #[allow(unsafe_code)]
    pub(crate) fn route<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        tpl: &TopicPartitionList,
    ) {
        let rk = consumer.client().native_ptr();
        for element in tpl.elements() {
            let Ok(topic) = CString::new(element.topic()) else {
                continue;
            };
            // SAFETY: a live client and a NUL-terminated name; the handle
            // returned (created if librdkafka did not know the partition
            // yet) is ours to destroy, and forwarding keeps its own
            // reference to our queue.
            unsafe {
                let partition_queue =
                    rd::rd_kafka_queue_get_partition(rk, topic.as_ptr(), element.partition());
                if partition_queue.is_null() {
                    // Not routed: its records come through `poll`.
                    continue;
                }
                rd::rd_kafka_queue_forward(partition_queue, self.queue.as_ptr());
                rd::rd_kafka_queue_destroy(partition_queue);
            }
        }
    }

    /// Whether an event waits on the consumer queue (then nobody should
    /// wait on the fetch queue).
    #[allow(unsafe_code)]
    pub(crate) fn events_waiting(&self) -> bool {
        // SAFETY: a live handle.
        unsafe { rd::rd_kafka_queue_length(self.consumer_queue.as_ptr()) > 0 }
    }

    /// Takes up to `into`'s capacity of records, waiting up to `wait` for
    /// the first (less if an event arrives on the consumer queue) but not
    /// for more: librdkafka's batch call waits until the batch is full, so
    /// the wait asks for one record and the rest is taken without waiting.
    pub(crate) fn take(&self, wait: Duration, into: &mut Taken) {
        into.clear();
        if !wait.is_zero() {
            self.take_some(wait, into, 1);
            if into.records.is_empty() {
                return;
            }
        }
        self.take_some(Duration::ZERO, into, into.records.capacity());
    }

    /// Appends up to `limit` records in all (bounded by the capacity).
    #[allow(unsafe_code)]
    fn take_some(&self, wait: Duration, into: &mut Taken, limit: usize) {
        let have = into.records.len();
        let room = limit.min(into.records.capacity()).saturating_sub(have);
        if room == 0 {
            return;
        }
        let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: a live queue; librdkafka writes at most `room` message
        // pointers into the vector's spare capacity and returns how many.
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout,
                into.records.as_mut_ptr().add(have),
                room,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            // SAFETY: librdkafka initialised the `n <= room` entries after
            // the first `have`.
            unsafe { into.records.set_len(have + n.min(room)) };
        }
    }
}

impl Drop for FetchQueue {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the handles are live and ours. `wake` is unregistered
        // first (under the consumer queue's lock: no call of it is running
        // or will run), then our queue is destroyed: records still on it
        // are dropped (never handled, so their offsets were never stored),
        // and so is whatever a partition still forwards to it.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(
                self.consumer_queue.as_ptr(),
                None,
                std::ptr::null_mut(),
            );
            rd::rd_kafka_queue_destroy(self.consumer_queue.as_ptr());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

/// The records of one [`FetchQueue::take`], destroyed as they are read
/// (so their fetch buffers go as early as `poll`'s records do) or when
/// dropped.
pub(crate) struct Taken {
    records: Vec<*mut rd::rd_kafka_message_t>,
    /// Records before this one were read and destroyed.
    next: usize,
}

impl Taken {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Taken {
            records: Vec::with_capacity(capacity),
            next: 0,
        }
    }

    /// Reads the next record with `f`, then destroys it.
    #[allow(unsafe_code)]
    pub(crate) fn next_with<R>(&mut self, f: impl FnOnce(Fetched<'_>) -> R) -> Option<R> {
        let ptr = *self.records.get(self.next)?;
        self.next += 1;
        // SAFETY: taken from librdkafka, not destroyed yet (each is read
        // once, then destroyed here); `Fetched` does not outlive `f`.
        let out = f(unsafe { Fetched::from_ptr(ptr) });
        // SAFETY: as above; never read again.
        unsafe { rd::rd_kafka_message_destroy(ptr) };
        Some(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.next >= self.records.len()
    }

    /// Destroys the records not read.
    #[allow(unsafe_code)]
    pub(crate) fn clear(&mut self) {
        for &ptr in &self.records[self.next.min(self.records.len())..] {
            // SAFETY: taken from librdkafka and not destroyed yet.
            unsafe { rd::rd_kafka_message_destroy(ptr) };
        }
        self.records.clear();
        self.next = 0;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
    use rdkafka::{ClientConfig, Offset};

    use super::*;

    fn cluster_with(topic: &str, partitions: i32, records: usize) -> crate::mock::EmbeddedCluster {
        let cluster = crate::mock::EmbeddedCluster::start(1).unwrap();
        cluster.create_topic(topic, partitions).unwrap();
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        for i in 0..records {
            let payload = i.to_string();
            let partition = (i % partitions as usize) as i32;
            producer
                .send(
                    BaseRecord::<(), _>::to(topic)
                        .payload(&payload)
                        .partition(partition),
                )
                .map_err(|(e, _)| e)
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        cluster
    }

    fn consumer(cluster: &crate::mock::EmbeddedCluster, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    }

    fn assignment(topic: &str, partitions: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        tpl
    }

    /// Records of routed partitions come from the fetch queue, in order per
    /// partition and each once, a batch at a time; `poll` hands over none.
    #[test]
    fn routed_partitions_deliver_through_the_fetch_queue_only() {
        const RECORDS: usize = 3_000;
        let cluster = cluster_with("routed", 3, RECORDS);
        let consumer = consumer(&cluster, "routed");
        let queue = FetchQueue::new(&consumer).unwrap();
        let tpl = assignment("routed", 3);
        queue.route(&consumer, &tpl);
        consumer.assign(&tpl).unwrap();
        let mut taken = Taken::with_capacity(512);
        let mut seen: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        let mut most = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.values().map(Vec::len).sum::<usize>() < RECORDS && Instant::now() < deadline {
            assert!(
                consumer.poll(Duration::ZERO).is_none(),
                "a record of a routed partition came through poll"
            );
            queue.take(Duration::from_millis(100), &mut taken);
            most = most.max(taken.records.len());
            while let Some((partition, offset, payload)) = taken.next_with(|r| {
                assert_eq!(r.error(), None);
                assert_eq!(r.topic_bytes(), Some(&b"routed"[..]));
                let payload: usize = std::str::from_utf8(r.payload().unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                (r.partition(), r.offset(), payload)
            }) {
                assert_eq!(payload % 3, partition as usize, "the record's partition");
                seen.entry(partition).or_default().push(offset);
            }
        }
        for p in 0..3 {
            let offsets = &seen[&p];
            assert_eq!(
                offsets,
                &(0..(RECORDS / 3) as i64).collect::<Vec<_>>(),
                "partition {p}: every record once, in order"
            );
        }
        assert!(
            most > 1,
            "records came in batches (at most {most} per take)"
        );
    }

    /// A wait on the fetch queue ends when an event lands on the consumer
    /// queue (here the group's first assignment), not at its timeout.
    #[test]
    fn an_event_on_the_consumer_queue_ends_a_wait() {
        const WAIT: Duration = Duration::from_secs(30);
        let cluster = cluster_with("woken", 1, 1);
        let consumer = consumer(&cluster, "woken");
        // Nothing is routed: the wait can only end by its timeout or `wake`.
        let queue = FetchQueue::new(&consumer).unwrap();
        // Joining the group needs no poll; its assignment is an event.
        consumer.subscribe(&["woken"]).unwrap();
        let mut taken = Taken::with_capacity(8);
        let started = Instant::now();
        queue.take(WAIT, &mut taken);
        let waited = started.elapsed();
        assert_eq!(taken.records.len(), 0);
        assert!(
            waited < WAIT * 2 / 3,
            "the assignment did not end the wait: {waited:?}"
        );
        assert!(queue.events_waiting(), "the event is still there for poll");
        assert!(
            consumer.poll(Duration::ZERO).is_none(),
            "the event is served, not a record"
        );
    }
}
