#!/usr/bin/env bash
# Router benchmark: training time on mmlu-pro train, then single-query latency and
# batched throughput on the CPU. Needs ../shared/routing-data.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${COEGATE_SHARED:-../shared}/routing-data
build=${BUILD_DIR:-build}
[ -d "$data" ] || { echo "skipped: $data not found"; exit 0; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s.%N)
"$build/coegate" router train --data "$data/mmlu-pro.train.jsonl" --out "$out/router.gguf" \
    --fine-label source --char-ngrams 3-4 --refit 2>/dev/null
end=$(date +%s.%N)
echo "| training on mmlu-pro train (8376 rows, one member with refit) | $(awk "BEGIN {printf \"%.1f\", $end - $start}") s | |"
"$build/bench/router-bench" "$out/router.gguf"
