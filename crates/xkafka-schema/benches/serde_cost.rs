//! What the registry serdes cost per message, against `Json<T>`: each
//! handler runs as the consumer runs it (a tower service called once per
//! message), decoding the same order. The Avro path includes the layer's
//! header parse and id lookup on a warm cache (no HTTP) and the reader
//! schema lookup. A measured loop, not a timed test: it prints ns/message.
//!
//! `cargo bench -p xkafka-schema --bench serde_cost`
//!
//! Measured 2026-12-08 on the 2-core shared machine (load 11-23, so noisy),
//! an order of 4 fields (JSON 84 bytes, Avro framed 41 bytes), 3 runs:
//! `Message` 80-232 ns, `Json<T>` 641-1110 ns, `Avro<T>` with the
//! registry layer on a warm cache 1646-3087 ns per message (2.3x-4.8x
//! `Json<T>`).

use std::hint::black_box;
use std::time::Instant;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};
use tower::{Layer, Service, ServiceExt};
use xkafka_core::extract::Json;
use xkafka_core::{Ack, Handler, Message};
use xkafka_schema::{Avro, AvroEncoder, RegistryClient, SchemaKind, SchemaRegistryLayer};

#[derive(AvroSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[avro(namespace = "shop")]
struct Order {
    id: i64,
    customer: String,
    total_cents: i64,
    note: String,
}

const N: u32 = 200_000;

async fn per_message<S>(mut service: S, message: &Message) -> f64
where
    S: Service<Message, Response = Ack>,
    S::Error: std::fmt::Debug,
{
    // Warm-up: caches filled, allocator settled.
    for _ in 0..N / 10 {
        service
            .ready()
            .await
            .unwrap()
            .call(message.clone())
            .await
            .unwrap();
    }
    let started = Instant::now();
    for _ in 0..N {
        let out = service
            .ready()
            .await
            .unwrap()
            .call(message.clone())
            .await
            .unwrap();
        black_box(out);
    }
    started.elapsed().as_nanos() as f64 / f64::from(N)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let order = Order {
            id: 123_456,
            customer: "customer-42".into(),
            total_cents: 9_990,
            note: "leave at the door".into(),
        };
        let json = Message::builder("orders")
            .partition(0)
            .offset(1)
            .value(serde_json::to_vec(&order).unwrap())
            .build();
        // No registry: the schema is preloaded, as a warm cache holds it.
        let client = RegistryClient::builder("http://127.0.0.1:1")
            .build()
            .unwrap();
        let encoder = AvroEncoder::<Order>::new(client.clone());
        client.preload(7, SchemaKind::Avro, encoder.schema_text());
        let framed = encoder.encode_with_id(7, &order).unwrap();
        let avro = Message::builder("orders")
            .partition(0)
            .offset(1)
            .value(framed.clone())
            .build();

        let json_handler = |Json(o): Json<Order>| async move {
            black_box(o);
            Ack::Success
        };
        let avro_handler = |Avro(o): Avro<Order>| async move {
            black_box(o);
            Ack::Success
        };
        let raw_handler = |m: Message| async move {
            black_box(m);
            Ack::Success
        };
        let raw = per_message(raw_handler.into_service(), &json).await;
        let j = per_message(json_handler.into_service(), &json).await;
        let a = per_message(
            SchemaRegistryLayer::new(client).layer(avro_handler.into_service()),
            &avro,
        )
        .await;
        println!(
            "payload: JSON {} bytes, Avro framed {} bytes",
            json.value().unwrap().len(),
            framed.len()
        );
        println!("Message (no decode)          {raw:8.0} ns/message");
        println!("Json<T>                      {j:8.0} ns/message");
        println!(
            "Avro<T> + registry (warm)    {a:8.0} ns/message  ({:.2}x Json<T>)",
            a / j
        );
    });
}
