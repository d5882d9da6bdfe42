#!/usr/bin/env bash
# Sets everything up and runs the whole test suite: unit, integration, conformance
# and gpu (those two skip with a message where ../shared or a GPU is absent), built
# with -Werror; then the unit and integration suites again under AddressSanitizer
# with UndefinedBehaviorSanitizer, and under ThreadSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh chromium   # the web console is tested in headless Chromium
BUILD_DIR=build scripts/build.sh -Dwerror=true

status=0
meson test -C build --print-errorlogs || status=1
python3 scripts/test-summary.py tests build/meson-logs/testlog.json || status=1

if [ "${COEGATE_SKIP_SANITIZERS:-0}" != 1 ]; then
    # GCC's "undefined" leaves out float-to-int overflow, which a damaged model can cause.
    BUILD_DIR=build-sanitize scripts/build.sh -Dwerror=true -Dbuildtype=debug -Db_sanitize=address,undefined \
        -Db_lundef=false -Dcuda=disabled -Dc_args=-fsanitize=float-cast-overflow \
        -Dc_link_args=-fsanitize=float-cast-overflow
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        meson test -C build-sanitize --suite unit --suite integration --print-errorlogs || status=1
    python3 scripts/test-summary.py asan build-sanitize/meson-logs/testlog.json || status=1

    BUILD_DIR=build-tsan scripts/build.sh -Dwerror=true -Dbuildtype=debug -Db_sanitize=thread \
        -Db_lundef=false -Dcuda=disabled
    TSAN_OPTIONS=halt_on_error=1 meson test -C build-tsan --suite unit --suite integration --print-errorlogs || status=1
    python3 scripts/test-summary.py tsan build-tsan/meson-logs/testlog.json || status=1
fi
# The closing line: every pass together.
python3 scripts/test-summary.py total build*/meson-logs/testlog.json || status=1
exit $status
