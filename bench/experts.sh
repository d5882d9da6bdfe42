#!/usr/bin/env bash
# Decode speed of the real domain experts of models/ (and the generalist): for each,
# bench/engine_bench.c's measures in one run (memory bandwidth, prompt processing,
# decode of 1 and of 4 concurrent sequences, each against the bandwidth bound), then
# one summary table. Ratios compare figures of the same run; the machines are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
threads=${ENGINE_BENCH_THREADS:-0}
summary="| model | decode, 1 sequence | decode, 4 sequences | 4 vs 1 |\n|---|---|---|---|\n"
for name in math code writing generalist; do
    out=$("$build/bench/engine-bench" "models/$name.gguf" "$threads")
    echo "### $name"
    echo "$out"
    echo
    one=$(echo "$out" | awk -F'|' '/decode, 1 sequence/ {gsub(/ tokens\/s| /, "", $3); print $3}')
    four=$(echo "$out" | awk -F'|' '/decode, 4 concurrent/ {gsub(/ tokens\/s| /, "", $3); print $3}')
    ratio=$(awk -v a="$four" -v b="$one" 'BEGIN {printf "%.2fx", a / b}')
    summary+="| $name | $one tokens/s | $four tokens/s | $ratio |\n"
done
echo "## Real experts (models/), decode"
echo
printf "%b" "$summary"
