//! A batch librdkafka cannot decode (here: a compression codec that does not
//! exist, written straight into the embedded cluster, which stores batches
//! as produced) is an error naming its partition and offset, not a silent
//! stall with "Local: Not implemented" and no location.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use xkafka::{Ack, Decision, Error, Message};

const TOPIC: &str = "undecodable";

/// CRC-32C (Castagnoli), as record batches carry it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A v2 record batch of one record whose attributes name compression codec
/// 5, which no Kafka client knows.
fn batch_with_unknown_codec() -> Vec<u8> {
    let mut after_crc = Vec::new();
    after_crc.extend_from_slice(&5i16.to_be_bytes()); // attributes: codec 5
    after_crc.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    after_crc.extend_from_slice(&0i64.to_be_bytes()); // first timestamp
    after_crc.extend_from_slice(&0i64.to_be_bytes()); // max timestamp
    after_crc.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    after_crc.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    after_crc.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    after_crc.extend_from_slice(&1i32.to_be_bytes()); // record count
    after_crc.extend_from_slice(b"not a compressed record at all");
    let mut tail = Vec::new();
    tail.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    tail.push(2); // magic
    tail.extend_from_slice(&crc32c(&after_crc).to_be_bytes());
    tail.extend_from_slice(&after_crc);
    let mut batch = Vec::new();
    batch.extend_from_slice(&0i64.to_be_bytes()); // base offset (the broker's)
    batch.extend_from_slice(&(tail.len() as i32).to_be_bytes());
    batch.extend_from_slice(&tail);
    batch
}

/// Writes `records` to partition 0 of `topic` with a Produce v3 request.
fn produce_raw(bootstrap: &str, topic: &str, records: &[u8]) {
    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // api key: Produce
    body.extend_from_slice(&3i16.to_be_bytes()); // api version
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(b"test"); // client id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    body.extend_from_slice(&1i16.to_be_bytes()); // acks
    body.extend_from_slice(&5_000i32.to_be_bytes()); // timeout
    body.extend_from_slice(&1i32.to_be_bytes()); // one topic
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes()); // one partition
    body.extend_from_slice(&0i32.to_be_bytes()); // partition 0
    body.extend_from_slice(&(records.len() as i32).to_be_bytes());
    body.extend_from_slice(records);
    let address = bootstrap.split(',').next().unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&body).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    // correlation id, topics (1), name, partitions (1), partition, error code
    let error_at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([response[error_at], response[error_at + 1]]);
    assert_eq!(error, 0, "the embedded cluster refused the batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_batch_is_an_error_naming_its_partition_and_offset() {
    // Offsets 0..3 are ordinary messages, 3 the undecodable batch.
    let cluster = embedded_with(TOPIC, 1, 3).await;
    produce_raw(
        cluster.bootstrap_servers(),
        TOPIC,
        &batch_with_unknown_codec(),
    );

    let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
    let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
    let (h, e) = (handled.clone(), errors.clone());
    let consumer = xkafka::Consumer::builder("undecodable-g")
        .brokers([cluster.bootstrap_servers()])
        .topics([TOPIC])
        .config("auto.offset.reset", "earliest")
        .shutdown_timeout(Duration::from_secs(3))
        .error_handler(move |err| {
            let copy = match err {
                Error::Consume {
                    partition,
                    offset,
                    reason,
                    code,
                } => Error::Consume {
                    partition: partition.clone(),
                    offset: *offset,
                    reason: reason.clone(),
                    code: *code,
                },
                other => Error::Publish(other.to_string().into()),
            };
            e.lock().unwrap().push(copy);
            Decision::Continue
        })
        .handler(move |m: Message| {
            h.lock().unwrap().push(m.offset().unwrap());
            async { Ack::Success }
        })
        .build()
        .unwrap();
    let probe = errors.clone();
    consumer
        .run(until(
            move || !probe.lock().unwrap().is_empty(),
            Duration::from_secs(60),
        ))
        .await
        .unwrap();
    let errors = errors.lock().unwrap();
    let first = errors.first().expect("the undecodable batch was reported");
    eprintln!("reported: {first}");
    match first {
        Error::Consume {
            partition,
            offset,
            reason,
            ..
        } => {
            assert_eq!(
                partition.as_ref().map(|tp| (&*tp.topic, tp.partition)),
                Some((TOPIC, 0)),
                "{first}"
            );
            assert_eq!(*offset, 3, "{first}");
            assert!(reason.contains("codec 0x5"), "{reason}");
            assert_eq!(
                first.kafka_code(),
                Some(xkafka::raw::rdkafka::error::RDKafkaErrorCode::NotImplemented)
            );
        }
        other => panic!("expected the batch's location, got: {other}"),
    }
    assert_eq!(
        first.to_string(),
        format!(
            "consuming {TOPIC}[0]@3 failed: {}",
            match first {
                Error::Consume { reason, .. } => &**reason,
                _ => unreachable!(),
            }
        )
    );
    assert_eq!(*handled.lock().unwrap(), vec![0, 1, 2]);
}
