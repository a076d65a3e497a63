"""The interop tests' independent peer: Confluent's Python client and its
Schema Registry serializers (confluent-kafka[avro,schemaregistry], installed by
scripts/registry.sh python), against the same registry and broker.

  peer.py produce FORMAT REGISTRY BROKERS TOPIC SCHEMA RECORD_JSON...
      serializes each record with the FORMAT serializer (avro | json),
      produces it to partition 0, and prints the framed bytes in hex
  peer.py consume FORMAT REGISTRY BROKERS TOPIC COUNT [SCHEMA]
      reads COUNT records from the start of partition 0, deserializes each
      with the FORMAT deserializer, prints one JSON line per record:
      {"hex": <framed bytes>, "value": <decoded record>}
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def serializer(fmt, registry, schema):
    if fmt == "avro":
        return AvroSerializer(registry, schema)
    if fmt == "json":
        return JSONSerializer(schema, registry)
    raise SystemExit(f"unknown format {fmt}")


def deserializer(fmt, registry, schema):
    if fmt == "avro":
        return AvroDeserializer(registry, schema)
    if fmt == "json":
        return JSONDeserializer(schema, schema_registry_client=registry)
    raise SystemExit(f"unknown format {fmt}")


def main():
    mode, fmt, url, brokers, topic = sys.argv[1:6]
    registry = SchemaRegistryClient({"url": url})
    if mode == "produce":
        schema, records = sys.argv[6], sys.argv[7:]
        ser = serializer(fmt, registry, schema)
        producer = Producer({"bootstrap.servers": brokers})
        ctx = SerializationContext(topic, MessageField.VALUE)
        for record in records:
            framed = ser(json.loads(record), ctx)
            producer.produce(topic, value=framed, partition=0)
            print(framed.hex())
        if producer.flush(30) != 0:
            raise SystemExit("records not delivered within 30 s")
    elif mode == "consume":
        count = int(sys.argv[6])
        schema = sys.argv[7] if len(sys.argv) > 7 else None
        de = deserializer(fmt, registry, schema)
        consumer = Consumer({
            "bootstrap.servers": brokers,
            "group.id": f"py-peer-{time.time_ns()}",
            "enable.auto.commit": False,
        })
        consumer.assign([TopicPartition(topic, 0, 0)])
        ctx = SerializationContext(topic, MessageField.VALUE)
        deadline = time.monotonic() + 60
        seen = 0
        while seen < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {seen} of {count} records within 60 s")
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                raise SystemExit(f"consume error: {msg.error()}")
            value = de(msg.value(), ctx)
            print(json.dumps({"hex": msg.value().hex(), "value": value}, sort_keys=True))
            seen += 1
        consumer.close()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
