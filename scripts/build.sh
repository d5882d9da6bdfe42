#!/usr/bin/env bash
# Configures and builds coegate in BUILD_DIR (default: build). Extra arguments go to
# meson setup. CUDA parts are compiled when nvcc is found (on PATH or in /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
    export PATH=/usr/local/cuda/bin:$PATH
fi
echo "configuring $build_dir" >&2
if [ -f "$build_dir/build.ninja" ]; then
    meson setup --reconfigure "$build_dir" >/dev/null
    # meson 1.0 ignores compiler options (c_args) given to setup --reconfigure.
    [ $# -eq 0 ] || meson configure "$build_dir" "$@" >/dev/null
else
    meson setup "$build_dir" "$@" >/dev/null
fi
# Progress: ninja's own status line on a terminal; elsewhere (logs, CI) a line at
# every tenth of the steps, and the compiler's messages whenever there are some.
if [ -t 2 ]; then
    ninja -C "$build_dir" >&2
else
    ninja -C "$build_dir" | awk -F'[][/]' -v dir="$build_dir" '
        /^\[[0-9]+\/[0-9]+\] / {
            step = int($2 * 10 / $3)
            if (step > shown) { printf "building %s: %d of %d steps\n", dir, $2, $3 > "/dev/stderr"; shown = step }
            next
        }
        /^ninja: (Entering|no work)/ { next }
        { print > "/dev/stderr" }' || exit 1
fi
echo "built $build_dir/coegate"
