#!/usr/bin/env bash
# Sets everything up and runs the gateway on the demo configuration (configs/demo.json):
# the real math, code and writing experts and the generalist of models/ behind the
# learned category router, which is trained from configs/demo-queries.jsonl when it is
# missing (or the queries are newer); then serves on http://127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
if [ ! -f configs/demo-router.gguf ] || [ configs/demo-queries.jsonl -nt configs/demo-router.gguf ]; then
    build/coegate router train --data configs/demo-queries.jsonl --out configs/demo-router.gguf \
        --buckets 65536 --dim 32
fi
exec build/coegate serve --config configs/demo.json "$@"
