#!/usr/bin/env bash
# broker.sh - Apache Kafka on 127.0.0.1 for xkafka's tests, demo and benchmarks: one node (the
# default) and a 3-broker cluster, both KRaft (no ZooKeeper), from the Maven artifacts named in
# scripts/kafka/pom.xml.
#
#   scripts/broker.sh install          idempotent: the broker's jars (Maven, pinned plugin) and the
#                                      admin tool into $XKAFKA_BROKER_PREFIX; ~40 s the first time
#   scripts/broker.sh start            the single node; returns once a metadata request answers
#   scripts/broker.sh stop | kill      SIGTERM (controlled shutdown) | SIGKILL, by pid file
#   scripts/broker.sh restart          stop + start, keeping the data
#   scripts/broker.sh reset            stop and delete the data (the next start formats afresh)
#   scripts/broker.sh status | env     pid and memory | the environment line tests read
#
#   scripts/broker.sh cluster start    the 3-broker cluster (replication factor 3, min.insync.replicas 2)
#   scripts/broker.sh cluster stop | reset | status | env
#   scripts/broker.sh cluster kill N   SIGKILL broker N (1..3) while the others run
#   scripts/broker.sh cluster stop N   SIGTERM broker N; waits until it has exited
#   scripts/broker.sh cluster start N  start broker N again on its data; returns once it is back in the cluster
#   scripts/broker.sh cluster restart N
#
#   scripts/broker.sh ctl ARGS...      the admin tool (scripts/kafka/KafkaCtl.java): ready, leader, coordinator, offsets
#
# Ports (all on 127.0.0.1):
#   single node   $XKAFKA_BROKER_PORT (default 9092) PLAINTEXT, +1 controller, +2 SASL_PLAINTEXT
#                 (SCRAM-SHA-256/512 and PLAIN, user "xkafka-app"), +3 SSL (TLS; a certificate for
#                 127.0.0.1 signed by a CA made at the first start: <data>/single/tls/ca.pem) —
#                 the security tests' listeners. The benchmark runs its own node on 9192.
#   cluster       broker N: 1N092 PLAINTEXT, 1N093 controller  (11092, 12092, 13092) — below
#                 Linux's ephemeral range (32768-60999): a port in it (39092 was) can be held by
#                 a client's outgoing connection when a killed broker restarts, and the restart
#                 then fails with "Address already in use".
#
# Settings (environment):
#   XKAFKA_BROKER_PREFIX  where the jars are installed   (default /opt/xkafka-broker)
#   XKAFKA_BROKER_DATA    where data and logs live       (default <repo>/target/xkafka-broker)
#   XKAFKA_BROKER_PORT    the single node's first port   (default 9092)
#   XKAFKA_BROKER_HEAP    JVM heap of the single node    (default -Xms256m -Xmx1g)
#   XKAFKA_CLUSTER_HEAP   JVM heap of each cluster node  (default -Xms256m -Xmx768m)
#   JAVA_HOME             the JDK (17 or newer) to run;  default: java on PATH
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POM="$REPO/scripts/kafka/pom.xml"
CTL_SRC="$REPO/scripts/kafka/KafkaCtl.java"
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
# The pinned plugin that assembles the classpath (copy-dependencies).
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
PREFIX=${XKAFKA_BROKER_PREFIX:-/opt/xkafka-broker}
INSTALL="$PREFIX/kafka-$KAFKA_VERSION"
DATA=${XKAFKA_BROKER_DATA:-$REPO/target/xkafka-broker}
HOST=127.0.0.1
PORT=${XKAFKA_BROKER_PORT:-9092}
CONTROLLER_PORT=$((PORT + 1))
SASL_PORT=$((PORT + 2))
TLS_PORT=$((PORT + 3))
# The TLS material of the single node: a throwaway CA and a broker certificate, test-only.
TLS_PASSWORD=xk-tls-store-pw
SASL_USER=xkafka-app
SASL_PASSWORD=xk-scram-pw-2c9e71a4
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java

log() { printf '[broker] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -n "$KAFKA_VERSION" ] || die "no <kafka.version> in $POM"

# ---------------------------------------------------------------------------------------------
# install

# What an install is made of: a change to the pom or the tool re-installs.
install_stamp() { cat "$POM" "$CTL_SRC" | sha256sum | cut -d' ' -f1; }

install() {
  local stamp; stamp=$(install_stamp)
  if [ "$(cat "$INSTALL/.installed" 2>/dev/null)" = "$stamp" ]; then
    log "Apache Kafka $KAFKA_VERSION already installed in $INSTALL"
    return
  fi
  command -v "$JAVA" >/dev/null || die "java not found (Java 17 or newer; set JAVA_HOME)"
  command -v mvn >/dev/null || die "mvn not found (Maven 3.6 or newer)"
  local major
  major=$("$JAVA" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${major%%.*}" -ge 17 ] 2>/dev/null || die "Kafka $KAFKA_VERSION needs Java 17 or newer; $JAVA is $major"
  mkdir -p "$PREFIX" || die "cannot create $PREFIX (set XKAFKA_BROKER_PREFIX to a writable folder)"
  local tmp="$INSTALL.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/libs" "$tmp/classes"
  log "downloading Apache Kafka $KAFKA_VERSION (kafka_2.13 and its runtime dependencies) with Maven"
  if ! mvn -B -q -f "$POM" "$DEPENDENCY_PLUGIN:copy-dependencies" \
      -DoutputDirectory="$tmp/libs" -DincludeScope=runtime >"$tmp/maven.log" 2>&1; then
    tail -30 "$tmp/maven.log" >&2
    rm -rf "$tmp"
    die "could not download Apache Kafka $KAFKA_VERSION from the Maven repository (Maven's output above)"
  fi
  [ -f "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing"
  "${JAVA_HOME:+$JAVA_HOME/bin/}javac" -nowarn -cp "$tmp/libs/*" -d "$tmp/classes" "$CTL_SRC" \
    || die "could not compile $CTL_SRC"
  rm -rf "$INSTALL"
  mv "$tmp" "$INSTALL"
  echo "$stamp" > "$INSTALL/.installed"
  log "installed Apache Kafka $KAFKA_VERSION in $INSTALL ($(du -sh "$INSTALL/libs" | cut -f1) of jars)"
}

require_install() {
  [ "$(cat "$INSTALL/.installed" 2>/dev/null)" = "$(install_stamp)" ] \
    || die "Apache Kafka $KAFKA_VERSION is not installed (or is out of date): run '$0 install'"
}

ctl() { require_install; "$JAVA" -cp "$INSTALL/classes:$INSTALL/libs/*" KafkaCtl "$@"; }

# ---------------------------------------------------------------------------------------------
# configuration

# Settings both layouts share, each one for a reason.
common_props() {
  cat <<EOF
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
# The first member of a new group is assigned at once instead of after 3 s: every test starts a group.
group.initial.rebalance.delay.ms=0
# Tests shorten session.timeout.ms (crash and storm harnesses: 3 s) so that a killed member's
# partitions move on quickly; the broker's default minimum (6 s) would refuse those members.
group.min.session.timeout.ms=1000
# KIP-848 groups (group.protocol=consumer): the broker owns the session timeout and heartbeat
# interval. Kafka's defaults (45 s, 5 s) make a killed member hold its partitions for 45 s; these
# keep the KIP-848 tests as quick as the classic ones.
group.consumer.min.session.timeout.ms=3000
group.consumer.session.timeout.ms=10000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
# Every test creates its topics: a mistyped name must fail, not appear empty.
auto.create.topics.enable=false
# The internal topics are created at the first group or transaction; 50 partitions each (the
# default) make that first use take seconds on two cores. Few partitions are plenty here.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
# The bad-input tests publish records up to 4 MiB (Kafka's default limit is 1 MiB).
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
# Topics of deleted test runs go at once.
delete.topic.enable=true
log.segment.delete.delay.ms=1000
# No time-based retention: tests write records with explicit timestamps years in the past (the
# interop and bad-input tests), which a 7-day retention would delete at its next check (every
# 5 minutes), while the test reads them. Test data goes with `reset`.
log.retention.ms=-1
EOF
}

single_props() {
  local dir=$1
  cat <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT,SSL://$HOST:$TLS_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT,SSL://$HOST:$TLS_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL
log.dirs=$dir/log
# One broker: the internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# The security tests' listener: SCRAM users are created at format time (--add-scram), PLAIN users
# are listed here.
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
# The TLS listener: the broker's key and certificate chain (see make_tls).
ssl.keystore.type=PKCS12
ssl.keystore.location=$dir/tls/broker.p12
ssl.keystore.password=$TLS_PASSWORD
ssl.key.password=$TLS_PASSWORD
EOF
  common_props
}

cluster_props() {
  local id=$1 dir=$2
  cat <<EOF
process.roles=broker,controller
node.id=$id
# Static quorum: every node is a voter and knows the others from the start.
controller.quorum.voters=1@$HOST:11093,2@$HOST:12093,3@$HOST:13093
listeners=PLAINTEXT://$HOST:1${id}092,CONTROLLER://$HOST:1${id}093
advertised.listeners=PLAINTEXT://$HOST:1${id}092,CONTROLLER://$HOST:1${id}093
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/log
# What a production cluster runs: three copies, an acknowledged write is on at least two.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# Never elect a replica that missed acknowledged writes (Kafka's default, stated because the
# failover tests depend on it).
unclean.leader.election.enable=false
EOF
  common_props
}

log4j_props() {
  cat <<'EOF'
# Broker logs on stdout (broker.sh sends them to broker.log): warnings, plus the lines that say
# when the broker started, stopped and which partitions it leads.
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
logger.broker.name=kafka.server.BrokerServer
logger.broker.level=INFO
EOF
}

# ---------------------------------------------------------------------------------------------
# processes

# node_dir NAME: the data folder of "single" or "node-N".
node_dir() { if [ "$1" = single ]; then echo "$DATA/single"; else echo "$DATA/cluster/$1"; fi; }
pid_of() { cat "$(node_dir "$1")/broker.pid" 2>/dev/null || true; }
is_running() { local pid; pid=$(pid_of "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# format_node NAME CLUSTER_ID [EXTRA FORMAT ARGS]: writes the config and formats the log folder
# the first time (an unformatted node dies with "No readable meta.properties").
prepare_node() {
  local name=$1 cid=$2; shift 2
  local dir; dir=$(node_dir "$name")
  mkdir -p "$dir"
  if [ "$name" = single ]; then single_props "$dir"; else cluster_props "${name#node-}" "$dir"; fi > "$dir/server.properties"
  log4j_props > "$dir/log4j2.properties"
  if [ ! -f "$dir/log/meta.properties" ]; then
    "$JAVA" -cp "$INSTALL/libs/*" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
      kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" "$@" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "could not format $dir"; }
  fi
}

# launch NAME HEAP PORT: starts the JVM in the background (setsid: it outlives this shell).
launch() {
  local name=$1 heap=$2 port=$3
  local dir; dir=$(node_dir "$name")
  if is_running "$name"; then log "$name already running, pid $(pid_of "$name")"; return 0; fi
  port_open "$port" && die "$HOST:$port is already in use by another process"
  # shellcheck disable=SC2086 # heap holds several JVM options
  setsid "$JAVA" $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$INSTALL/libs/*" kafka.Kafka "$dir/server.properties" >>"$dir/broker.log" 2>&1 </dev/null &
  echo $! > "$dir/broker.pid"
  log "$name: started pid $!, $HOST:$port, log $dir/broker.log"
}

# await NAME BOOTSTRAP BROKERS: until a metadata request to BOOTSTRAP lists BROKERS brokers.
await() {
  local name=$1 bootstrap=$2 brokers=$3 started; started=$(date +%s)
  if ! ctl ready "$bootstrap" "$brokers" 90 >/dev/null 2>"$(node_dir "$name")/ready.err"; then
    is_running "$name" || { tail -30 "$(node_dir "$name")/broker.log" >&2; die "$name exited during start"; }
    cat "$(node_dir "$name")/ready.err" >&2
    die "$name: no metadata answer from $bootstrap with $brokers broker(s) within 90 s"
  fi
  log "$name ready in $(( $(date +%s) - started )) s: bootstrap.servers=$bootstrap"
}

# halt NAME SIGNAL: stops the process by its pid file (never by name) and waits until it is gone.
halt() {
  local name=$1 signal=$2 pid; pid=$(pid_of "$name")
  if ! is_running "$name"; then rm -f "$(node_dir "$name")/broker.pid"; log "$name not running"; return 0; fi
  kill "-$signal" "$pid"
  # A controlled shutdown moves leadership away first: allow it 30 s, then SIGKILL.
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIG$signal for 30 s, sending SIGKILL"; kill -9 "$pid"; signal=KILL
  fi
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$(node_dir "$name")/broker.pid"
  log "$name: pid $pid gone (SIG$signal)"
}

describe() {
  local name=$1
  if is_running "$name"; then
    local pid; pid=$(pid_of "$name")
    log "$name running: pid $pid, RSS $(awk '/VmRSS/{print $2" "$3}' "/proc/$pid/status"), data $(node_dir "$name")"
  else
    log "$name not running"; return 1
  fi
}

# ---------------------------------------------------------------------------------------------
# the single node

single_start() {
  require_install
  local dir; dir=$(node_dir single)
  mkdir -p "$dir"
  [ -f "$dir/cluster-id" ] || ctl_uuid > "$dir/cluster-id"
  make_tls "$dir/tls"
  prepare_node single "$(cat "$dir/cluster-id")" --standalone \
    --add-scram "SCRAM-SHA-256=[name=$SASL_USER,password=$SASL_PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=$SASL_USER,password=$SASL_PASSWORD]"
  launch single "${XKAFKA_BROKER_HEAP:--Xms256m -Xmx1g}" "$PORT"
  await single "$HOST:$PORT" 1
}

# make_tls DIR: a CA and a broker certificate for 127.0.0.1 signed by it (keytool, from the JDK),
# once per data folder. Clients trust DIR/ca.pem.
make_tls() {
  local dir=$1 kt="${JAVA_HOME:+$JAVA_HOME/bin/}keytool" pw=$TLS_PASSWORD
  [ -f "$dir/broker.p12" ] && [ -f "$dir/ca.pem" ] && return 0
  command -v "$kt" >/dev/null || die "keytool not found (it comes with the JDK; set JAVA_HOME)"
  rm -rf "$dir"; mkdir -p "$dir"
  {
    "$kt" -genkeypair -alias ca -keyalg RSA -keysize 2048 -dname "CN=xkafka test CA" -ext bc:c \
      -validity 3650 -keystore "$dir/ca.p12" -storetype PKCS12 -storepass "$pw" -keypass "$pw"
    "$kt" -exportcert -rfc -alias ca -keystore "$dir/ca.p12" -storepass "$pw" -file "$dir/ca.pem"
    "$kt" -genkeypair -alias broker -keyalg RSA -keysize 2048 -dname "CN=127.0.0.1" \
      -validity 3650 -keystore "$dir/broker.p12" -storetype PKCS12 -storepass "$pw" -keypass "$pw"
    "$kt" -certreq -alias broker -keystore "$dir/broker.p12" -storepass "$pw" -file "$dir/broker.csr"
    "$kt" -gencert -rfc -alias ca -keystore "$dir/ca.p12" -storepass "$pw" -infile "$dir/broker.csr" \
      -outfile "$dir/broker.pem" -validity 3650 -ext "SAN=IP:127.0.0.1,DNS:localhost"
    "$kt" -importcert -noprompt -alias ca -keystore "$dir/broker.p12" -storepass "$pw" -file "$dir/ca.pem"
    "$kt" -importcert -alias broker -keystore "$dir/broker.p12" -storepass "$pw" -file "$dir/broker.pem"
  } >"$dir/keytool.log" 2>&1 || { cat "$dir/keytool.log" >&2; die "could not make the TLS certificates in $dir"; }
}

ctl_uuid() { "$JAVA" -cp "$INSTALL/libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1; }

# ---------------------------------------------------------------------------------------------
# the 3-broker cluster

CLUSTER_BOOTSTRAP="$HOST:11092,$HOST:12092,$HOST:13092"

check_id() { case "${1:-}" in 1|2|3) ;; *) die "broker id must be 1, 2 or 3 (got '${1:-}')" ;; esac; }

cluster_node_start() {
  local id=$1
  local cid; cid=$(cat "$DATA/cluster/cluster-id")
  prepare_node "node-$id" "$cid"
  launch "node-$id" "${XKAFKA_CLUSTER_HEAP:--Xms256m -Xmx768m}" "1${id}092"
}

cluster() {
  local cmd=${1:-} id=${2:-}
  case "$cmd" in
    start)
      require_install
      mkdir -p "$DATA/cluster"
      [ -f "$DATA/cluster/cluster-id" ] || ctl_uuid > "$DATA/cluster/cluster-id"
      if [ -n "$id" ]; then
        check_id "$id"
        cluster_node_start "$id"
        # Back means registered and unfenced again: it answers metadata listing every broker
        # that runs (all three, unless another one is down on purpose).
        local up=0
        for n in 1 2 3; do if is_running "node-$n"; then up=$((up + 1)); fi; done
        await "node-$id" "$HOST:1${id}092" "$up"
      else
        # All three at once: a node waits for a quorum of voters before it can register anyway.
        for n in 1 2 3; do cluster_node_start "$n"; done
        await node-1 "$CLUSTER_BOOTSTRAP" 3
      fi ;;
    stop)
      if [ -n "$id" ]; then check_id "$id"; halt "node-$id" TERM
      else
        # All at once: stopped one by one, the last node's controlled shutdown waits for a
        # controller quorum that is already gone (30 s, then SIGKILL).
        for n in 1 2 3; do halt "node-$n" TERM & done
        wait
      fi ;;
    kill) check_id "$id"; halt "node-$id" KILL ;;
    restart) check_id "$id"; halt "node-$id" TERM; cluster start "$id" ;;
    reset) for n in 1 2 3; do halt "node-$n" KILL; done; rm -rf "$DATA/cluster"; log "removed $DATA/cluster" ;;
    status) local rc=0; for n in 1 2 3; do describe "node-$n" || rc=1; done; return $rc ;;
    env) echo "export XKAFKA_CLUSTER_BROKERS=$CLUSTER_BOOTSTRAP" ;;
    *) sed -n '2,35p' "$0"; exit 2 ;;
  esac
}

case "${1:-}" in
  install) install ;;
  start) single_start ;;
  stop) halt single TERM ;;
  kill) halt single KILL ;;
  restart) halt single TERM; single_start ;;
  reset) halt single KILL; rm -rf "$(node_dir single)"; log "removed $(node_dir single)" ;;
  status) describe single ;;
  env) echo "export XKAFKA_TEST_BROKERS=$HOST:$PORT XKAFKA_SASL_BROKERS=$HOST:$SASL_PORT" \
    "XKAFKA_TLS_BROKERS=$HOST:$TLS_PORT XKAFKA_TLS_CA=$(node_dir single)/tls/ca.pem" ;;
  cluster) shift; cluster "$@" ;;
  ctl) shift; ctl "$@" ;;
  *) sed -n '2,35p' "$0"; exit 2 ;;
esac
