#!/usr/bin/env bash
# Sets everything up and runs the gateway on the demo configuration (configs/demo.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec build/coegate serve --config configs/demo.json "$@"
