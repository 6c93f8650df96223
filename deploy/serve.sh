#!/usr/bin/env bash
# The README's first command: installs the system packages the build needs (if
# missing), then runs `cargo run --release -- serve` on the embedded defaults
# (bus, event store and views in ./data, http://127.0.0.1:8080). Extra arguments
# go to `serve`, e.g. `bash deploy/serve.sh --listen 0.0.0.0:8080`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash deploy/system-packages.sh
exec cargo run --release -- serve "$@"
