#!/usr/bin/env bash
# registry.sh - Apicurio Registry on 127.0.0.1 for xkafka-schema's tests: the Confluent-compatible
# Schema Registry API (/apis/ccompat/v7) our serdes and the interop peers talk to.
#
#   scripts/registry.sh install    idempotent: io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all
#                                  from the Maven repository (pinned dependency plugin), unpacked into
#                                  $XKAFKA_REGISTRY_PREFIX; ~160 MB the first time
#   scripts/registry.sh start      in-memory storage; returns once GET /apis/ccompat/v7/subjects answers
#   scripts/registry.sh stop       SIGTERM by pid file (SIGKILL after 20 s)
#   scripts/registry.sh status | env
#   scripts/registry.sh python     idempotent: a venv in <repo>/target/xkafka-schema-py with
#                                  Python confluent-kafka's Schema Registry serializers (pinned),
#                                  the interop tests' independent client
#   scripts/registry.sh asyncapi   idempotent: @asyncapi/parser and its Avro schema parser (npm,
#                                  pinned) in <repo>/target/xkafka-asyncapi-node, the validator
#                                  of the generated AsyncAPI documents
#
# Settings (environment):
#   XKAFKA_REGISTRY_PREFIX  where it is installed      (default /opt/xkafka-registry)
#   XKAFKA_REGISTRY_DATA    pid file and log           (default <repo>/target/xkafka-registry)
#   XKAFKA_REGISTRY_PORT    the HTTP port              (default 8081)
#   JAVA_HOME               a JDK 21 or newer; else the newest one found in /usr/lib/jvm
#                           (Apicurio 3 is built for Java 21: Java 17 fails with
#                           UnsupportedClassVersionError)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=3.3.3
ARTIFACT=io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all
# The same pinned plugin broker.sh uses.
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
PREFIX=${XKAFKA_REGISTRY_PREFIX:-/opt/xkafka-registry}
INSTALL="$PREFIX/apicurio-registry-$VERSION"
DATA=${XKAFKA_REGISTRY_DATA:-$REPO/target/xkafka-registry}
HOST=127.0.0.1
PORT=${XKAFKA_REGISTRY_PORT:-8081}
URL="http://$HOST:$PORT/apis/ccompat/v7"
# The interop peer: Confluent's Python client with its Avro/Protobuf/JSON Schema serializers.
PY_PEER="confluent-kafka[avro,json,schemaregistry]==2.16.2"
PY_VENV=${XKAFKA_SCHEMA_PY:-$REPO/target/xkafka-schema-py}
# The AsyncAPI validator: the reference parser, run by node.
NODE_PKGS="@asyncapi/parser@3.6.6 @asyncapi/avro-schema-parser@3.1.0"
NODE_DIR=${XKAFKA_ASYNCAPI_NODE:-$REPO/target/xkafka-asyncapi-node}

log() { printf '[registry] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# java_major JAVA: the feature release of that java binary (17, 21, 25), or nothing.
java_major() {
  "$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | cut -d. -f1
}

# find_java: a java of release 21 or newer: JAVA_HOME's when it is one, else the newest JDK in
# /usr/lib/jvm. Java 17, Debian's default, cannot run Apicurio 3.
find_java() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    local m; m=$(java_major "$JAVA_HOME/bin/java")
    if [ "${m:-0}" -ge 21 ] 2>/dev/null; then echo "$JAVA_HOME/bin/java"; return; fi
    log "JAVA_HOME=$JAVA_HOME is Java ${m:-?}; Apicurio Registry $VERSION needs 21 or newer: looking in /usr/lib/jvm"
  fi
  local best="" best_major=0 j m
  for j in /usr/lib/jvm/*/bin/java; do
    [ -x "$j" ] || continue
    m=$(java_major "$j")
    if [ "${m:-0}" -gt "$best_major" ] 2>/dev/null; then best=$j; best_major=$m; fi
  done
  [ "$best_major" -ge 21 ] || die "Apicurio Registry $VERSION needs Java 21 or newer: none in JAVA_HOME or /usr/lib/jvm (newest found: ${best:-none}, Java $best_major); install one (e.g. a Temurin 21+ JDK) or set JAVA_HOME"
  echo "$best"
}

install() {
  if [ -f "$INSTALL/.installed" ] && [ -f "$INSTALL/quarkus-run.jar" ]; then
    log "Apicurio Registry $VERSION already installed in $INSTALL"
    return
  fi
  command -v mvn >/dev/null || die "mvn not found (Maven 3.6 or newer)"
  mkdir -p "$PREFIX" || die "cannot create $PREFIX (set XKAFKA_REGISTRY_PREFIX to a writable folder)"
  local tmp="$INSTALL.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/dist"
  log "downloading $ARTIFACT with Maven"
  # unpack: Maven downloads the archive into its local repository and unpacks it here.
  if ! mvn -B -q "$DEPENDENCY_PLUGIN:unpack" -Dartifact="$ARTIFACT" \
      -DoutputDirectory="$tmp/dist" >"$tmp/maven.log" 2>&1; then
    tail -30 "$tmp/maven.log" >&2
    rm -rf "$tmp"
    die "could not download $ARTIFACT from the Maven repository (Maven's output above)"
  fi
  # The archive's root may be one folder or the files themselves: take the folder holding the jar.
  local jar; jar=$(find "$tmp/dist" -maxdepth 3 -name quarkus-run.jar | head -1)
  [ -n "$jar" ] || { rm -rf "$tmp"; die "$ARTIFACT unpacked but has no quarkus-run.jar"; }
  rm -rf "$INSTALL"
  mv "$(dirname "$jar")" "$INSTALL"
  rm -rf "$tmp"
  date -u +%FT%TZ > "$INSTALL/.installed"
  log "installed Apicurio Registry $VERSION in $INSTALL ($(du -sh "$INSTALL" | cut -f1))"
}

python_peer() {
  if [ "$(cat "$PY_VENV/.installed" 2>/dev/null)" = "$PY_PEER" ]; then
    log "$PY_PEER already installed in $PY_VENV"; return
  fi
  command -v python3 >/dev/null || die "python3 not found (3.9 or newer)"
  rm -rf "$PY_VENV"
  python3 -m venv "$PY_VENV" || die "could not create a venv in $PY_VENV (python3-venv missing?)"
  "$PY_VENV/bin/pip" install -q --disable-pip-version-check "$PY_PEER" >"$PY_VENV.log" 2>&1 \
    || { tail -20 "$PY_VENV.log" >&2; die "could not install $PY_PEER from the Python package index"; }
  echo "$PY_PEER" > "$PY_VENV/.installed"
  log "installed $PY_PEER in $PY_VENV"
}

asyncapi_parser() {
  if [ "$(cat "$NODE_DIR/.installed" 2>/dev/null)" = "$NODE_PKGS" ]; then
    log "$NODE_PKGS already installed in $NODE_DIR"; return
  fi
  command -v npm >/dev/null || die "npm not found (Node.js 18 or newer)"
  rm -rf "$NODE_DIR"; mkdir -p "$NODE_DIR"
  # shellcheck disable=SC2086 # a list of packages
  (cd "$NODE_DIR" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent $NODE_PKGS) \
    >"$NODE_DIR.log" 2>&1 || { tail -20 "$NODE_DIR.log" >&2; die "could not install $NODE_PKGS from the npm registry"; }
  echo "$NODE_PKGS" > "$NODE_DIR/.installed"
  log "installed $NODE_PKGS in $NODE_DIR"
}

pid_of() { cat "$DATA/registry.pid" 2>/dev/null || true; }
is_running() { local pid; pid=$(pid_of); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
answers() { curl -fsS -m 2 "$URL/subjects" >/dev/null 2>&1; }

start() {
  [ -f "$INSTALL/.installed" ] || die "Apicurio Registry $VERSION is not installed: run '$0 install'"
  command -v curl >/dev/null || die "curl not found (the readiness check uses it)"
  mkdir -p "$DATA"
  if is_running; then
    answers || die "registry pid $(pid_of) runs but $URL does not answer (log: $DATA/registry.log)"
    log "already running, pid $(pid_of): $URL"; return 0
  fi
  port_open "$PORT" && die "$HOST:$PORT is already in use by another process (set XKAFKA_REGISTRY_PORT)"
  local java; java=$(find_java)
  # In-memory storage (the app's default: every start is empty), the port and host, and no
  # authentication: a test registry.
  # `cd` on its own line: `cd && java &` would background the list in a subshell, and the pid
  # file would name that subshell, not the JVM (stop then left the JVM running).
  (cd "$INSTALL" || exit 1
    setsid "$java" -Xms64m -Xmx512m -XX:+UseSerialGC \
    -Dquarkus.http.port="$PORT" -Dquarkus.http.host="$HOST" \
    -Dquarkus.log.level=WARN \
    -jar quarkus-run.jar >>"$DATA/registry.log" 2>&1 </dev/null &
    echo $! > "$DATA/registry.pid")
  log "started pid $(pid_of) with $java, log $DATA/registry.log"
  local started; started=$(date +%s)
  for _ in $(seq 1 1200); do
    if answers; then log "ready in $(( $(date +%s) - started )) s: $URL"; return 0; fi
    is_running || { tail -30 "$DATA/registry.log" >&2; die "the registry exited during start"; }
    sleep 0.1
  done
  tail -30 "$DATA/registry.log" >&2
  die "no answer from $URL within 120 s"
}

stop() {
  local pid; pid=$(pid_of)
  if ! is_running; then rm -f "$DATA/registry.pid"; log "not running"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "pid $pid ignored SIGTERM for 20 s, sending SIGKILL"; kill -9 "$pid"; fi
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$DATA/registry.pid"
  log "pid $pid gone"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if is_running; then log "running: pid $(pid_of), $URL"; else log "not running"; exit 1; fi ;;
  env) echo "export XKAFKA_SCHEMA_REGISTRY=$URL XKAFKA_SCHEMA_PYTHON=$PY_VENV/bin/python" \
    "XKAFKA_ASYNCAPI_NODE=$NODE_DIR" ;;
  python) python_peer ;;
  asyncapi) asyncapi_parser ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
