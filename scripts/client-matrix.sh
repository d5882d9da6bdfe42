#!/usr/bin/env bash
# The client matrix (issue 12), run by hand, not in CI: it needs npm. Installs the
# JavaScript clients (two majors of the openai SDK, LangChain's ChatOpenAI, the Vercel
# AI SDK) into CLIENTS_DIR, starts the README's demo (configs/demo.json) on a free port
# and runs scripts/client-matrix.mjs against it. Prints the matrix as a Markdown table.
#   scripts/client-matrix.sh            (CLIENTS_DIR defaults to /tmp/coegate-clients)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${CLIENTS_DIR:-/tmp/coegate-clients}
mkdir -p "$dir"
if [ ! -d "$dir/node_modules/openai7" ]; then
    (cd "$dir" && npm init -y >/dev/null &&
     npm install --no-audit --no-fund openai7@npm:openai@7 openai6@npm:openai@6 @langchain/openai@1 \
         @langchain/core@1 ai@7 @ai-sdk/openai@4 zod@4 >/dev/null)
fi
scripts/build.sh >/dev/null 2>&1 || { echo "the build failed: run scripts/build.sh" >&2; exit 1; }
if [ ! -f configs/demo-router.gguf ]; then
    build/coegate router train --data configs/demo-queries.jsonl --out configs/demo-router.gguf --buckets 65536 \
        --dim 32 >/dev/null
fi
log=$(mktemp)
build/coegate serve --config configs/demo.json --port 0 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
    url=$(grep -o 'listening on http://[0-9.:]*' "$log" | sed 's/listening on //' || true)
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { cat "$log"; exit 1; }
echo "coegate $(build/coegate --version 2>/dev/null || true) at $url; node $(node --version)"
NODE_PATH="$dir/node_modules" node "$root/scripts/client-matrix.mjs" "$url/v1"
