// Interop - the Java side of crates/xkafka/tests/interop_java.rs: Apache Kafka's own Java client
// (kafka-clients, the broker's version) writes, reads, joins a group and reads offsets, so that
// the Rust tests can compare byte for byte what each client sees. Run as a single source file:
//
//   java -cp "$PREFIX/kafka-4.3.1/libs/*" Interop.java MODE ARGS...
//
//   produce BOOTSTRAP TOPIC CODEC...    for each codec (none gzip snappy lz4 zstd) one producer
//                                       writes the record set below; prints one REC line per
//                                       acknowledged record
//   read BOOTSTRAP TOPIC SECONDS        reads every partition from the beginning to its end offset
//                                       (no group); prints one REC line per record
//   offsets BOOTSTRAP GROUP TOPIC       per partition: "OFFSET partition committed end" (committed
//                                       -1 when none), from the AdminClient
//   member BOOTSTRAP TOPIC GROUP        a group member (classic protocol, range assignor) until a
//                                       line "stop" or EOF on stdin; prints ASSIGNED/REVOKED lines
//                                       and one REC line per record; commits after each poll
//
// A REC line is canonical, so both languages print the same text for the same record:
//   REC partition offset timestamp key value headers
// key and value: "null", or "x" followed by lowercase hex (so "x" is empty); headers: "-" when
// there are none, else name:value pairs joined by ",", both in the same x-hex form, in order.
//
// Exit codes: 0 done, 1 failed (the reason on stderr), 2 bad arguments.

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Collectors;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class Interop {
    public static void main(String[] args) {
        try {
            run(args);
        } catch (Exception e) {
            // The source launcher mangles the stack trace of an exception escaping main.
            e.printStackTrace();
            System.exit(1);
        }
    }

    static void run(String[] args) throws Exception {
        if (args.length < 1) usage();
        switch (args[0]) {
            case "produce" -> {
                if (args.length < 4) usage();
                for (int i = 3; i < args.length; i++) produce(args[1], args[2], args[i]);
            }
            case "read" -> {
                if (args.length != 4) usage();
                read(args[1], args[2], Long.parseLong(args[3]));
            }
            case "offsets" -> {
                if (args.length != 4) usage();
                offsets(args[1], args[2], args[3]);
            }
            case "member" -> {
                if (args.length != 4) usage();
                member(args[1], args[2], args[3]);
            }
            default -> usage();
        }
        System.out.flush();
    }

    static void usage() {
        System.err.println("usage: Interop produce BOOTSTRAP TOPIC CODEC... | read BOOTSTRAP TOPIC SECONDS"
            + " | offsets BOOTSTRAP GROUP TOPIC | member BOOTSTRAP TOPIC GROUP");
        System.exit(2);
    }

    // ---------------------------------------------------------------------------------------------
    // the canonical form

    static String hex(byte[] bytes) {
        if (bytes == null) return "null";
        StringBuilder s = new StringBuilder("x");
        for (byte b : bytes) s.append(String.format("%02x", b & 0xff));
        return s.toString();
    }

    static String headers(Iterable<Header> headers) {
        List<String> parts = new ArrayList<>();
        for (Header h : headers) {
            parts.add(hex(h.key().getBytes(StandardCharsets.UTF_8)) + ":" + hex(h.value()));
        }
        return parts.isEmpty() ? "-" : String.join(",", parts);
    }

    static String rec(int partition, long offset, long timestamp, byte[] key, byte[] value,
                      Iterable<Header> hs) {
        return "REC " + partition + " " + offset + " " + timestamp + " " + hex(key) + " " + hex(value)
            + " " + headers(hs);
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    // ---------------------------------------------------------------------------------------------
    // produce

    /** Everything a record can carry, some of it in batches big enough to compress. */
    static List<ProducerRecord<byte[], byte[]>> records(String topic, String codec, int partitions) {
        long t0 = 1_700_000_000_000L; // explicit timestamps, in the past
        List<ProducerRecord<byte[], byte[]>> out = new ArrayList<>();
        byte[] binary = new byte[256];
        for (int i = 0; i < 256; i++) binary[i] = (byte) i;
        List<Header> dup = List.of(
            new RecordHeader("dup", utf8("first")),
            new RecordHeader("bin", new byte[] {0, (byte) 0xff, (byte) 0x80, 0x7f}),
            new RecordHeader("dup", utf8("second")),
            new RecordHeader("null-value", (byte[]) null),
            new RecordHeader("empty", new byte[0]),
            new RecordHeader("dup", utf8("third")));
        out.add(new ProducerRecord<>(topic, 0, t0 + 1, utf8(codec + "-keyed"), utf8("plain value")));
        out.add(new ProducerRecord<>(topic, 1 % partitions, t0 + 2, null, utf8(codec + " null key")));
        out.add(new ProducerRecord<>(topic, 2 % partitions, t0 + 3, utf8(codec + "-empty-value"), new byte[0]));
        out.add(new ProducerRecord<>(topic, 0, t0 + 4, utf8(codec + "-tombstone"), (byte[]) null));
        out.add(new ProducerRecord<>(topic, 1 % partitions, t0 + 5, new byte[0], utf8(codec + " empty key")));
        out.add(new ProducerRecord<>(topic, 2 % partitions, t0 + 6, (byte[]) null, (byte[]) null));
        out.add(new ProducerRecord<>(topic, 0, t0 + 7, binary, binary, dup));
        // No explicit partition nor timestamp: the Java client's partitioner and clock choose;
        // the metadata it gets back says what was chosen.
        out.add(new ProducerRecord<>(topic, utf8(codec + "-partitioned-by-java"), utf8("chosen")));
        // A batch worth compressing: repetitive, several records in one request per partition.
        for (int i = 0; i < 60; i++) {
            String v = (codec + " bulk " + i + " ").repeat(40);
            List<Header> hs = List.of(new RecordHeader("seq", utf8(Integer.toString(i))));
            out.add(new ProducerRecord<>(topic, i % partitions, t0 + 100 + i, utf8("bulk-" + (i % 7)), utf8(v), hs));
        }
        return out;
    }

    static void produce(String bootstrap, String topic, String codec) throws Exception {
        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        p.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
        p.put(ProducerConfig.ACKS_CONFIG, "all");
        // Records accumulate into batches until flush(): every codec really compresses something.
        p.put(ProducerConfig.LINGER_MS_CONFIG, "1000");
        // A missing topic is an error at once, not after max.block.ms (60 s).
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "15000");
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            int partitions = producer.partitionsFor(topic).size();
            List<ProducerRecord<byte[], byte[]>> records = records(topic, codec, partitions);
            List<Future<RecordMetadata>> acks = new ArrayList<>();
            for (ProducerRecord<byte[], byte[]> r : records) acks.add(producer.send(r));
            producer.flush();
            for (int i = 0; i < records.size(); i++) {
                RecordMetadata m = acks.get(i).get(30, TimeUnit.SECONDS);
                ProducerRecord<byte[], byte[]> r = records.get(i);
                System.out.println(rec(m.partition(), m.offset(), m.timestamp(), r.key(), r.value(), r.headers()));
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // read

    static KafkaConsumer<byte[], byte[]> consumer(String bootstrap, String group) {
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        if (group != null) {
            p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "classic");
            // librdkafka's default list is range,roundrobin: range is what both sides share.
            p.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG,
                "org.apache.kafka.clients.consumer.RangeAssignor");
            p.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "6000");
            p.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "500");
        }
        return new KafkaConsumer<>(p);
    }

    static void read(String bootstrap, String topic, long seconds) {
        try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap, null)) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo info : c.partitionsFor(topic, Duration.ofSeconds(15))) {
                tps.add(new TopicPartition(topic, info.partition()));
            }
            c.assign(tps);
            c.seekToBeginning(tps);
            Map<TopicPartition, Long> end = c.endOffsets(tps, Duration.ofSeconds(15));
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
            while (tps.stream().anyMatch(tp -> c.position(tp) < end.get(tp))) {
                if (System.nanoTime() > deadline) {
                    System.err.println("not at the end offsets " + end + " within " + seconds + " s");
                    System.exit(1);
                }
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                    System.out.println(rec(r.partition(), r.offset(), r.timestamp(), r.key(), r.value(), r.headers()));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // offsets

    static void offsets(String bootstrap, String group, String topic) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(p)) {
            int partitions = admin.describeTopics(List.of(topic)).allTopicNames()
                .get(15, TimeUnit.SECONDS).get(topic).partitions().size();
            Map<TopicPartition, OffsetAndMetadata> committed = admin.listConsumerGroupOffsets(group)
                .partitionsToOffsetAndMetadata().get(15, TimeUnit.SECONDS);
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
            for (int i = 0; i < partitions; i++) latest.put(new TopicPartition(topic, i), OffsetSpec.latest());
            var ends = admin.listOffsets(latest).all().get(15, TimeUnit.SECONDS);
            for (int i = 0; i < partitions; i++) {
                TopicPartition tp = new TopicPartition(topic, i);
                OffsetAndMetadata om = committed.get(tp);
                System.out.println("OFFSET " + i + " " + (om == null ? -1 : om.offset()) + " " + ends.get(tp).offset());
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // member

    static String parts(Collection<TopicPartition> tps) {
        return tps.stream().map(TopicPartition::partition).sorted().map(String::valueOf)
            .collect(Collectors.joining(","));
    }

    static void member(String bootstrap, String topic, String group) throws Exception {
        AtomicBoolean stop = new AtomicBoolean(false);
        Thread stdin = new Thread(() -> {
            try {
                var in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in));
                String line;
                while ((line = in.readLine()) != null && !line.trim().equals("stop")) { }
            } catch (java.io.IOException ignored) { }
            stop.set(true);
        });
        stdin.setDaemon(true);
        stdin.start();
        try (KafkaConsumer<byte[], byte[]> c = consumer(bootstrap, group)) {
            c.subscribe(List.of(topic), new ConsumerRebalanceListener() {
                @Override public void onPartitionsRevoked(Collection<TopicPartition> tps) {
                    // Eager: commit what was consumed before the partitions go.
                    c.commitSync();
                    System.out.println("REVOKED " + parts(tps));
                    System.out.flush();
                }
                @Override public void onPartitionsAssigned(Collection<TopicPartition> tps) {
                    System.out.println("ASSIGNED " + parts(c.assignment()));
                    System.out.flush();
                }
            });
            while (!stop.get()) {
                var records = c.poll(Duration.ofMillis(100));
                for (ConsumerRecord<byte[], byte[]> r : records) {
                    System.out.println(rec(r.partition(), r.offset(), r.timestamp(), r.key(), r.value(), r.headers()));
                }
                System.out.flush();
                if (!records.isEmpty()) c.commitSync();
            }
        }
        System.out.println("CLOSED");
    }
}
