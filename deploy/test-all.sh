#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# (system packages for the Kafka client build, the Python peers that imitate
# WeChat and Excel, a real Kafka broker from Maven Central), then `cargo test`.
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/crm/target), CRM_KAFKA_PORT,
# CRM_EVENTSTORE_URL (runs the EventStoreDB/KurrentDB conformance suite against
# a real server when set; otherwise that suite says it was not run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache="$HOME/.cache/crm"
mkdir -p "$cache"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"

say() { echo "==> $*"; }

# 1. System packages the build needs (rdkafka builds librdkafka with gcc, make, pkg-config, zlib).
bash deploy/system-packages.sh python3-venv

# 2. Python peers (wechatpy, openpyxl, jsonschema): test clients only, never the product.
venv="$cache/pyenv"
if [ ! -x "$venv/bin/python" ]; then
    say "creating the Python peers venv in $venv"
    python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha"
want="$(sha256sum tests/peers/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing tests/peers/requirements.txt"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/peers/requirements.txt
    echo "$want" >"$stamp"
fi
export CRM_PEERS_PYTHON="$venv/bin/python"

# 3. A real single-node Kafka broker on loopback (jars cached in ~/.cache/crm/kafka).
export CRM_KAFKA_PORT="${CRM_KAFKA_PORT:-19092}"
export CRM_KAFKA_DATA="${CRM_KAFKA_DATA:-$cache/kafka-test-data-$CRM_KAFKA_PORT}"
rm -rf "$CRM_KAFKA_DATA"
bash deploy/kafka/kafka.sh start
trap 'bash deploy/kafka/kafka.sh stop || true; rm -rf "$CRM_KAFKA_DATA"' EXIT
export CRM_KAFKA_BOOTSTRAP="127.0.0.1:$CRM_KAFKA_PORT"

# 4. The tests: every crate, every integration test, the end-to-end binary tests.
say "cargo test --workspace"
cargo test --workspace --all-targets
