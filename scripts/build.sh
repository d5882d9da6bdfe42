#!/usr/bin/env bash
# Configures and builds coegate in BUILD_DIR (default: build). Extra arguments go to
# meson setup. CUDA parts are compiled when nvcc is found (on PATH or in /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
    export PATH=/usr/local/cuda/bin:$PATH
fi
if [ -f "$build_dir/build.ninja" ]; then
    meson setup --reconfigure "$build_dir" >/dev/null
    # meson 1.0 ignores compiler options (c_args) given to setup --reconfigure.
    [ $# -eq 0 ] || meson configure "$build_dir" "$@" >/dev/null
else
    meson setup "$build_dir" "$@" >/dev/null
fi
ninja -C "$build_dir" >/dev/null
echo "built $build_dir/coegate"
