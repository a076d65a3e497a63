#!/usr/bin/env bash
# bench.sh - xkafka against the raw rdkafka client, on the same brokers, in one run.
#
#   scripts/bench.sh --quick     # about 14 minutes on 2 cores (the eos step: about 1), 5 rounds after a warm-up round (more for the noisiest comparisons)
#   scripts/bench.sh             # the full mode: bigger runs, 9 rounds
#
# Starts an Apache Kafka node of its own (scripts/broker.sh with port 9192 and data under
# target/xkafka-broker-bench, so the test suite's node on 9092 is left alone), measures on it and on
# librdkafka's in-process mock cluster (the exactly-once consume-transform-produce step, "eos", on
# Kafka only), prints the table and one
# `RATIO <name> <ours/baseline> ours=... baseline=...` line per comparison, writes
# target/bench/results.json and the SVG charts, stops the broker.
# Extra arguments go to the tool (e.g. --only consume, --rounds 3, --no-mock).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

export XKAFKA_BROKER_PORT=${XKAFKA_BENCH_PORT:-9192}
export XKAFKA_BROKER_DATA=$PWD/target/xkafka-broker-bench
scripts/broker.sh install
scripts/broker.sh reset
scripts/broker.sh start
trap 'scripts/broker.sh stop' EXIT

cargo build --release -q -p xkafka-bench
target_dir=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)
"$target_dir/release/xkafka-bench" --brokers "127.0.0.1:$XKAFKA_BROKER_PORT" \
  --broker-name "Apache Kafka $version, one node (KRaft)" "$@"
