#!/usr/bin/env bash
# test.sh - the whole test suite, on a fresh machine: installs and starts the Kafka broker
# (scripts/broker.sh), checks formatting and lints, runs every test (unit, doc, integration against
# the real broker) and the demo, then stops the broker. `.ci/run` calls exactly this.
#
# Broker tests fail (never skip) when the broker is missing.
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

step "formatting"
cargo fmt --all -- --check

step "broker: install (cached) and start"
scripts/broker.sh install
scripts/broker.sh reset
scripts/broker.sh start
trap 'scripts/broker.sh stop' EXIT
export XKAFKA_TEST_BROKERS=127.0.0.1:${XKAFKA_BROKER_PORT:-9092}
export XKAFKA_REQUIRE_BROKER=1

step "clippy (-D warnings)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "tests (unit, integration, doc)"
cargo test --workspace --all-features --no-fail-fast

step "demo (embedded cluster)"
cargo run -q -p xkafka --example demo

step "demo (real broker)"
cargo run -q -p xkafka --example demo -- --brokers "$XKAFKA_TEST_BROKERS"

step "all green in $(( $(date +%s) - started )) s"
