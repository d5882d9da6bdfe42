#!/usr/bin/env bash
# The gpu suite and the GPU benchmarks on a machine with an NVIDIA GPU, as one run.
#
# Here, on a machine with nvcc (no GPU needed):
#   scripts/gpu-check.sh pack [CONFORMANCE_MODEL.gguf ...]
# builds build-gpu (CUDA on, OpenBLAS linked in statically) and writes .gpu/ (ignored
# by git): bundle.tar.gz with the gpu suite's programs, the benchmarks, `forge`, the
# shared libraries they use beyond glibc, the C++ runtime and CUDA's, the shared
# routing data's test queries, and the conformance models named
# (from ../shared/conformance/models; the working tree travels too, so mind the
# device tool's 64 MiB: the first call without models, then a few models a call).
#
# There, in the checkout the device tool copied (carry ".gpu"):
#   scripts/gpu-check.sh run [tests|bench|all]
# runs the three programs of the gpu suite (kernels against their CPU references,
# the router's classifier, the engine against the CPU engine on forged models of every
# architecture and type and on the bundled conformance models), then (bench, all) the
# router's batches and the engine's decode and prompt figures on the Mixtral-shaped
# benchmark model and on a model of a large MoE's layer shape (32 layers, embedding
# 4096, 8 experts top-2, feed-forward 14336, Q4_K; GPU_LARGE_LAYERS to change), forged
# there. Logs go to $OUT when it is set (the device tool's folder that comes back).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}

pack() {
    shift || true
    if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
        export PATH=/usr/local/cuda/bin:$PATH
    fi
    command -v nvcc >/dev/null || { echo "gpu-check: pack needs nvcc" >&2; exit 1; }
    BUILD_DIR=build-gpu scripts/build.sh -Dcuda=enabled -Dstatic_blas=true -Dbuildtype=release >/dev/null
    rm -rf .gpu && mkdir -p .gpu/stage/bin .gpu/stage/lib .gpu/stage/shared/routing-data
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    grep -qx '/build-gpu/' .git/info/exclude 2>/dev/null || echo '/build-gpu/' >> .git/info/exclude
    for b in tests/test_cuda_kernels tests/test_router_cuda tests/test_engine_cuda bench/engine-bench \
             bench/router-bench bench/forge; do
        strip -o ".gpu/stage/bin/$(basename "$b")" "build-gpu/$b"
    done
    # The shared libraries they use that a CUDA machine may lack (glibc, the C++ runtime
    # and CUDA's own are there): cmocka, and for the gateway's routing in the router test
    # cJSON and libcurl with what it uses.
    for b in .gpu/stage/bin/*; do
        ldd "$b" | awk '$3 ~ /^\// {print $3}'
    done | sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt)\.so' |
        while read -r lib; do cp -L "$lib" .gpu/stage/lib/; done
    local shared=${COEGATE_SHARED:-../shared}
    if [ -d "$shared/routing-data" ]; then
        cp "$shared"/routing-data/*.test.jsonl .gpu/stage/shared/routing-data/
    fi
    if [ $# -gt 0 ]; then
        mkdir -p .gpu/stage/shared/conformance/models
        for m in "$@"; do cp "$shared/conformance/models/$(basename "$m")" .gpu/stage/shared/conformance/models/; done
    fi
    tar -C .gpu/stage -czf .gpu/bundle.tar.gz .
    rm -rf .gpu/stage
    local tree
    tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
    echo "gpu-check: .gpu/bundle.tar.gz $(du -b .gpu/bundle.tar.gz | cut -f1) bytes; the checkout's files $tree bytes;" \
         "together at most 67108864 travel" >&2
}

run() {
    local what=${2:-all} out=${OUT:-/tmp/gpu-check-out} dir=/tmp/gpu-check
    mkdir -p "$out" && rm -rf "$dir" && mkdir -p "$dir"
    tar -C "$dir" -xzf .gpu/bundle.tar.gz
    export LD_LIBRARY_PATH="$dir/lib:${LD_LIBRARY_PATH:-}" COEGATE_ROOT=$PWD COEGATE_SHARED="$dir/shared"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$out/device.txt" || true
    local status=0
    if [ "$what" != bench ]; then
        for t in test_cuda_kernels test_router_cuda test_engine_cuda; do
            echo "== $t"
            "$dir/bin/$t" 2>&1 | tee "$out/$t.log" || status=1
        done
    fi
    if [ "$what" != tests ]; then
        echo "== router"
        "$dir/bin/router-bench" configs/demo-router.gguf 2>&1 | tee "$out/router-bench.md" || status=1
        local models=$dir/models layers=${GPU_LARGE_LAYERS:-32}
        mkdir -p "$models"
        "$dir/bin/forge" -o "$models/bench.gguf" --arch llama --type q8_0 --layers 16 --embd 2048 --heads 16 \
            --kv-heads 4 --ff 512 --experts 32 --experts-used 4 --vocab 8192 >/dev/null
        "$dir/bin/forge" -o "$models/large.gguf" --arch llama --type q4_k --layers "$layers" --embd 4096 \
            --heads 32 --kv-heads 8 --ff 14336 --experts 8 --experts-used 2 --vocab 32000 >/dev/null
        for m in bench large; do
            echo "== engine, $m"
            "$dir/bin/engine-bench" "$models/$m.gguf" 0 cuda 2>&1 | tee "$out/engine-$m.md" || status=1
        done
        rm -rf "$models"
    fi
    return $status
}

case "$mode" in
    pack) pack "$@" ;;
    run) run "$@" ;;
    *) echo "usage: scripts/gpu-check.sh pack [CONFORMANCE_MODEL.gguf ...] | run [tests|bench|all]" >&2; exit 2 ;;
esac
