// KafkaCtl - the few admin questions scripts/broker.sh and the failover tests ask a running
// cluster, answered by the Java AdminClient of the broker's own version (kafka-clients, on the
// classpath broker.sh installs). Compiled once by `broker.sh install`.
//
//   ready BOOTSTRAP BROKERS SECONDS   exit 0 once a metadata request answers with >= BROKERS brokers
//   leader BOOTSTRAP TOPIC PARTITION  the node id leading TOPIC[PARTITION] (-1: none)
//   coordinator BOOTSTRAP GROUP       the node id of GROUP's coordinator
//   offsets BOOTSTRAP GROUP           the group's committed offsets, one "topic partition offset" a line
//
// Exit codes: 0 answered, 1 no answer in time, 2 bad arguments.

import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterOptions;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;

public final class KafkaCtl {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            usage();
        }
        switch (args[0]) {
            case "ready" -> {
                if (args.length != 4) usage();
                System.exit(ready(args[1], Integer.parseInt(args[2]), Long.parseLong(args[3])));
            }
            case "leader" -> {
                if (args.length != 4) usage();
                try (Admin admin = admin(args[1])) {
                    TopicDescription d = admin.describeTopics(List.of(args[2]))
                        .allTopicNames().get(15, TimeUnit.SECONDS).get(args[2]);
                    int p = Integer.parseInt(args[3]);
                    var leader = d.partitions().get(p).leader();
                    System.out.println(leader == null || leader.isEmpty() ? -1 : leader.id());
                }
            }
            case "coordinator" -> {
                if (args.length != 3) usage();
                try (Admin admin = admin(args[1])) {
                    var d = admin.describeConsumerGroups(List.of(args[2]))
                        .all().get(15, TimeUnit.SECONDS).get(args[2]);
                    System.out.println(d.coordinator().id());
                }
            }
            case "offsets" -> {
                if (args.length != 3) usage();
                try (Admin admin = admin(args[1])) {
                    Map<TopicPartition, OffsetAndMetadata> offsets = admin
                        .listConsumerGroupOffsets(args[2])
                        .partitionsToOffsetAndMetadata().get(15, TimeUnit.SECONDS);
                    offsets.forEach((tp, om) -> System.out.println(
                        tp.topic() + " " + tp.partition() + " " + (om == null ? -1 : om.offset())));
                }
            }
            default -> usage();
        }
    }

    static Admin admin(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        return Admin.create(p);
    }

    // Ready means the broker answers a metadata request and every expected broker is registered:
    // an open port alone says nothing (the socket server listens before the broker has caught up
    // with the metadata log).
    static int ready(String bootstrap, int brokers, long seconds) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        String last = "no answer";
        try (Admin admin = admin(bootstrap)) {
            while (System.nanoTime() < deadline) {
                try {
                    var nodes = admin.describeCluster(new DescribeClusterOptions().timeoutMs(2000))
                        .nodes().get(3, TimeUnit.SECONDS);
                    if (nodes.size() >= brokers) {
                        admin.listTopics().names().get(3, TimeUnit.SECONDS);
                        System.out.println("ready: " + nodes.size() + " broker(s) at " + bootstrap);
                        return 0;
                    }
                    last = nodes.size() + " of " + brokers + " brokers registered";
                } catch (Exception e) {
                    last = e.getCause() != null ? e.getCause().toString() : e.toString();
                }
                Thread.sleep(200);
            }
        }
        System.err.println("not ready after " + seconds + " s at " + bootstrap + ": " + last);
        return 1;
    }

    static void usage() {
        System.err.println("usage: KafkaCtl ready BOOTSTRAP BROKERS SECONDS | leader BOOTSTRAP TOPIC PARTITION"
            + " | coordinator BOOTSTRAP GROUP | offsets BOOTSTRAP GROUP");
        System.exit(2);
    }
}
