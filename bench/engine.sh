#!/usr/bin/env bash
# Local engine benchmark: forges (once, cached in the build folder) a model of
# realistic shape -- 16 layers, embedding 2048, 32 experts top-4, Q8_0, ~1.9 GB --
# then measures bandwidth, prompt processing and decode (bench/engine_bench.c).
# ENGINE_BENCH_ARGS replaces the forge options, e.g. for a smaller model.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
args=${ENGINE_BENCH_ARGS:---arch llama --type q8_0 --layers 16 --embd 2048 --heads 16 --kv-heads 4 --ff 512 --experts 32 --experts-used 4 --vocab 8192}
model="$build/bench-model-$(echo "$args" | md5sum | cut -c1-12).gguf"
if [ ! -f "$model" ]; then
    echo "forging $model ($args)" >&2
    # shellcheck disable=SC2086
    "$build/coegate" forge -o "$model" $args >&2
fi
"$build/bench/engine-bench" "$model" "${ENGINE_BENCH_THREADS:-0}"
