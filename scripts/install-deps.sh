#!/usr/bin/env bash
# Installs the Debian packages coegate needs to build, test and run, when missing.
# Extra package names can be given as arguments (the benchmarks add wrk).
set -euo pipefail

packages=(gcc meson ninja-build pkg-config libmicrohttpd-dev libcjson-dev libcmocka-dev
          libopenblas-dev libcurl4-openssl-dev python3 "$@")

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    as_root=(sudo)
fi
echo "install-deps: installing ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
