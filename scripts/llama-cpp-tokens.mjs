// Records how llama.cpp tokenizes the dev texts with the experts' vocabulary, for the
// conformance test tests/conformance/test_experts_shared.c (which tokenizes the same
// texts with coegate and compares). Run by hand; it needs npm (not part of the build):
//   mkdir -p /tmp/llamajs && cd /tmp/llamajs && npm init -y &&
//     npm install --omit=optional --ignore-scripts node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1
//   NODE_PATH=/tmp/llamajs/node_modules node scripts/llama-cpp-tokens.mjs models/generalist.gguf \
//     ../shared/corpora/{math,code,writing}.dev.jsonl > models/reference/llama-cpp-tokens.jsonl
// node-llama-cpp's prebuilt linux-x64 binary is llama.cpp's own tokenizer. Each text is
// tokenized as a plain prompt without BOS, special-token text not parsed. Per row:
// {"id", "n": token count, "fnv": FNV-1a 64 of the ids as little-endian int32, hex}.
import {createRequire} from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), "x"));
const {getLlama} = await import(require.resolve("node-llama-cpp"));
const [modelPath, ...files] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath, vocabOnly: true});

function fnv1a64(ids) {
    let h = 0xcbf29ce484222325n;
    const bytes = new Uint8Array(new Int32Array(ids).buffer);
    for (const b of bytes)
        h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
    return h.toString(16).padStart(16, "0");
}

for (const f of files)
    for (const line of fs.readFileSync(f, "utf8").split("\n")) {
        if (!line.trim())
            continue;
        const row = JSON.parse(line);
        const ids = Array.from(model.tokenize(row.text, false));
        process.stdout.write(JSON.stringify({id: row.id, n: ids.length, fnv: fnv1a64(ids)}) + "\n");
    }
