#!/usr/bin/env bash
# test.sh - the whole test suite, on a fresh machine: installs Apache Kafka (scripts/broker.sh:
# its jars from Maven) and starts a single node and a 3-broker cluster, checks formatting and
# lints, runs every test (unit, doc, integration and reliability against the real brokers) and the
# demo on both the embedded cluster and the real broker, then stops the brokers. `.ci/run` calls
# exactly this.
#
# Broker tests fail (never skip) when a broker is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

step() { printf '\n=== %s\n' "$*"; }
started=$(date +%s)

step "system libraries for --all-features (OpenSSL for ssl/sasl, Cyrus SASL for gssapi)"
# librdkafka is built against the system's libssl and libsasl2 when those features are on.
# Idempotent: nothing happens when pkg-config finds both; apt-get runs only as root (else: what to install).
sys_pkgs="libssl-dev libsasl2-dev pkg-config"
if ! pkg-config --exists openssl libsasl2 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # a list of package names
    apt-get install -y --no-install-recommends $sys_pkgs \
      || { apt-get update && apt-get install -y --no-install-recommends $sys_pkgs; }
  else
    echo "missing system libraries: install $sys_pkgs (or run as root with apt-get)" >&2
    exit 1
  fi
fi

# The network fault harness (xkafka-reliability's netns tests) lays its rules with nft inside
# network namespaces it makes; iproute2's `ip` makes them.
if ! command -v nft >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y --no-install-recommends nftables iproute2 \
    || { apt-get update && apt-get install -y --no-install-recommends nftables iproute2; }
fi

step "formatting"
cargo fmt --all -- --check
python3 scripts/modgraph.py  # the module import graph of crates/xkafka and the bench: fails on a new cycle

step "Apache Kafka: install (cached), then a fresh single node and a fresh 3-broker cluster"
scripts/broker.sh install
scripts/broker.sh reset
scripts/broker.sh cluster reset
trap 'scripts/broker.sh stop; scripts/broker.sh cluster stop; scripts/registry.sh stop' EXIT
scripts/broker.sh start
scripts/broker.sh cluster start

step "Apicurio Registry (the schema tests' registry): install (cached), then a fresh in-memory one"
scripts/registry.sh install
scripts/registry.sh python
scripts/registry.sh asyncapi
scripts/registry.sh stop
scripts/registry.sh start
eval "$(scripts/registry.sh env)"
export XKAFKA_TEST_BROKERS=127.0.0.1:9092
export XKAFKA_SASL_BROKERS=127.0.0.1:9094
export XKAFKA_TLS_BROKERS=127.0.0.1:9095
export XKAFKA_TLS_CA=$PWD/target/xkafka-broker/single/tls/ca.pem
export XKAFKA_CLUSTER_BROKERS=127.0.0.1:11092,127.0.0.1:12092,127.0.0.1:13092

step "clippy (-D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "API docs (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps -q

step "tests (unit, integration, doc)"
cargo test --workspace --all-features --no-fail-fast

step "demo (embedded cluster)"
cargo run -q -p xkafka --example demo

step "demo (real broker)"
cargo run -q -p xkafka --example demo -- --brokers "$XKAFKA_TEST_BROKERS"

step "the network fault harness left no namespace and no stopped broker or worker"
left=$(ip netns list 2>/dev/null | grep '^xkfn-' || true)
stopped=$(ps -eo stat=,pid=,comm= | awk '$1 ~ /^T/ && ($3 == "java" || $3 == "xkafka-chaos")')
[ -z "$left$stopped" ] || { echo "left behind: ${left} ${stopped}" >&2; exit 1; }

step "all green in $(( $(date +%s) - started )) s"
