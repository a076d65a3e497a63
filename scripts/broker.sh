#!/usr/bin/env bash
# broker.sh - a real Kafka-protocol broker on 127.0.0.1 for xkafka's tests, demo and benchmarks.
#
# The broker is Tansu (Apache-2.0, a Kafka-protocol broker written in Rust, built with cargo install):
# Apache Kafka and Redpanda cannot be downloaded on our build machines.
#
#   scripts/broker.sh install   # idempotent; builds tansu once into $XKAFKA_BROKER_PREFIX (~8 min on 2 cores)
#   scripts/broker.sh start     # start on 127.0.0.1:$XKAFKA_BROKER_PORT and wait until it accepts connections
#   scripts/broker.sh stop      # stop it (by pid file)
#   scripts/broker.sh restart   # stop + start, keeping the data (used by broker-fault tests)
#   scripts/broker.sh reset     # stop and delete the data
#   scripts/broker.sh status    # pid, memory
#   scripts/broker.sh env       # the environment line tests read
#
# Settings (environment):
#   XKAFKA_BROKER_PREFIX  where tansu is installed      (default /opt/xkafka-broker)
#   XKAFKA_BROKER_DATA    where its data and log live   (default <repo>/target/xkafka-broker)
#   XKAFKA_BROKER_PORT    listener port                 (default 9092)
#   XKAFKA_BROKER_STORAGE storage engine URL            (default sqlite://tansu.db; memory://tansu/ is
#                         faster but under-reports the latest offset)
#
# Tansu's limits that matter to us: topics are not auto-created (tests create them), no transactions,
# one broker, and the sqlite engine cannot serve snappy-compressed batches. Fetches serve at most 5 MiB
# per record (a larger one is stored but never delivered, and stalls its partition). A JoinGroup waits up
# to the rebalance timeout (the clients' max.poll.interval.ms) for members that were killed, instead of
# dropping them at their session timeout.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${XKAFKA_BROKER_PREFIX:-/opt/xkafka-broker}
DATA=${XKAFKA_BROKER_DATA:-$REPO/target/xkafka-broker}
HOST=127.0.0.1
PORT=${XKAFKA_BROKER_PORT:-9092}
STORAGE=${XKAFKA_BROKER_STORAGE:-sqlite://tansu.db}
TANSU_VERSION=0.6.0
TANSU_FEATURES=libsql,dynostore # libsql: the sqlite:// engine; dynostore: memory://. Without them tansu has no engine.
TANSU="$PREFIX/bin/tansu"
PIDFILE="$DATA/tansu.pid"
LOG="$DATA/broker.log"

log() { printf '[broker] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

install() {
  local stamp="$PREFIX/.installed"
  if [ -x "$TANSU" ] && [ "$(cat "$stamp" 2>/dev/null)" = "tansu $TANSU_VERSION $TANSU_FEATURES" ]; then
    log "tansu $TANSU_VERSION already installed in $PREFIX"
    return
  fi
  command -v cargo >/dev/null || die "cargo not found"
  mkdir -p "$PREFIX" || die "cannot create $PREFIX (set XKAFKA_BROKER_PREFIX to a writable folder)"
  log "building tansu $TANSU_VERSION into $PREFIX (once per machine, about 8 minutes on 2 cores)"
  # Its own target dir, so that it never shares locks or artifacts with the project's build.
  CARGO_TARGET_DIR="$PREFIX/build" cargo install tansu --version "$TANSU_VERSION" --locked \
    --features "$TANSU_FEATURES" --root "$PREFIX" --force
  rm -rf "$PREFIX/build"
  echo "tansu $TANSU_VERSION $TANSU_FEATURES" > "$stamp"
}

is_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

start() {
  [ -x "$TANSU" ] || die "tansu is not installed: run '$0 install' first"
  if is_running; then log "already running, pid $(cat "$PIDFILE")"; return 0; fi
  port_open && die "$HOST:$PORT is already in use by another process"
  mkdir -p "$DATA"
  log "starting tansu on $HOST:$PORT, storage $STORAGE, log $LOG"
  # setsid: the broker outlives this shell; stop it with '$0 stop'.
  (cd "$DATA" && RUST_LOG=${RUST_LOG:-warn} exec setsid "$TANSU" broker \
    --listener-url "tcp://$HOST:$PORT" \
    --advertised-listener-url "tcp://$HOST:$PORT" \
    --storage-engine "$STORAGE" >>"$LOG" 2>&1 </dev/null) &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 100); do
    if port_open; then log "ready: pid $(cat "$PIDFILE"), bootstrap.servers=$HOST:$PORT"; return 0; fi
    is_running || { tail -20 "$LOG" >&2; die "broker exited during start"; }
    sleep 0.1
  done
  die "broker not accepting connections after 10 s (see $LOG)"
}

stop() {
  if ! is_running; then rm -f "$PIDFILE"; log "not running"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "pid $pid ignored SIGTERM, sending SIGKILL"; kill -9 "$pid"; fi
  rm -f "$PIDFILE"
  log "stopped pid $pid"
}

status() {
  if is_running; then
    local pid; pid=$(cat "$PIDFILE")
    log "running: pid $pid, RSS $(awk '/VmRSS/{print $2" "$3}' "/proc/$pid/status"), storage $STORAGE, data $DATA"
  else
    log "not running"; return 1
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  reset) stop; rm -rf "$DATA"; log "removed $DATA" ;;
  status) status ;;
  env) echo "export XKAFKA_TEST_BROKERS=$HOST:$PORT" ;;
  *) sed -n '2,26p' "$0"; exit 2 ;;
esac
