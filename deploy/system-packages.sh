#!/usr/bin/env bash
# Installs the Debian packages the build needs when they are missing: the Kafka
# client (rdkafka) builds its bundled librdkafka with gcc, make, pkg-config and zlib.
set -euo pipefail
need=()
for pkg in pkg-config zlib1g-dev make gcc g++ "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
((${#need[@]})) || exit 0
echo "==> installing system packages: ${need[*]}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get install -y -q "${need[@]}" || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "${need[@]}"; }
