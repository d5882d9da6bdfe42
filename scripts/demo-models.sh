#!/usr/bin/env bash
# Forges the demo's two local experts into DIR (default configs/) unless they are
# there: random-weight MoE models, small enough to answer at once on any CPU.
# usage: scripts/demo-models.sh [DIR] [COEGATE]
set -euo pipefail
dir=${1:-configs}
coegate=${2:-build/coegate}
[ -f "$dir/demo-coder.gguf" ] || "$coegate" forge -o "$dir/demo-coder.gguf" --arch qwen2moe --type q8_0 \
    --layers 4 --embd 256 --heads 8 --kv-heads 2 --experts 8 --experts-used 2 --ff 256 --vocab 4096 --seed 11
[ -f "$dir/demo-writer.gguf" ] || "$coegate" forge -o "$dir/demo-writer.gguf" --arch llama --type q4_k \
    --layers 4 --embd 256 --heads 8 --kv-heads 2 --experts 4 --experts-used 2 --ff 512 --vocab 4096 --seed 12
