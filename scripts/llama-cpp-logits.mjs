// Writes tests/reference/llama-cpp-logits.jsonl: llama.cpp's logits (top 8 per position)
// on small forged models of each weight type and RoPE variant the engine added without
// conformance data, for the unit test test_llama_cpp_logits. Run by hand; it needs npm
// (not part of the build) for llama.cpp's prebuilt CPU binary:
//   mkdir -p /tmp/llamajs && cd /tmp/llamajs && npm init -y &&
//     npm install --omit=optional --ignore-scripts node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1
//   COEGATE=build/coegate NODE_PATH=/tmp/llamajs/node_modules node scripts/llama-cpp-logits.mjs \
//     > tests/reference/llama-cpp-logits.jsonl
// On a CPU with AMX, llama.cpp's prebuilt binary may round activations otherwise: run
// it on one without (this file was made on one with AVX-512 VNNI and no AMX).
import {createRequire} from "node:module";
import {execFileSync} from "node:child_process";
import os from "node:os";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), "x"));
const {getLlama} = await import(require.resolve("node-llama-cpp"));
const coegate = process.env.COEGATE || "build/coegate";
const shape = ["--embd", "256", "--ff", "256", "--heads", "4", "--kv-heads", "4"];
// deepseek2: the bottlenecks, rotary and head sizes in V2-Lite's proportions, smaller
const mla = ["--embd", "256", "--ff", "256", "--heads", "4", "--q-lora", "64", "--kv-lora", "64", "--rope-dim", "32",
             "--head-dim", "64", "--v-head-dim", "32"];
// DeepSeek-V3's routing: sigmoid scores with a selection bias, groups, renormalized and scaled weights
const v3 = ["--gating", "sigmoid", "--groups", "4", "--groups-used", "2", "--weights-norm", "1", "--weights-scale", "2.5",
            "--layers", "3"];
const specs = [
  ["--arch", "llama", "--type", "q2_k", "--experts", "4", "--seed", "21", ...shape],
  ["--arch", "llama", "--type", "q3_k", "--experts", "4", "--seed", "22", ...shape],
  ["--arch", "llama", "--type", "q4_1", "--experts", "4", "--seed", "23", ...shape],
  ["--arch", "llama", "--type", "q5_0", "--experts", "4", "--seed", "24", ...shape],
  ["--arch", "llama", "--type", "q5_1", "--experts", "4", "--seed", "25", ...shape],
  ["--arch", "llama", "--type", "iq4_nl", "--experts", "4", "--seed", "26", ...shape],
  ["--arch", "llama", "--type", "iq4_xs", "--experts", "4", "--seed", "27", ...shape],
  ["--arch", "qwen2moe", "--type", "q3_k", "--experts", "4", "--seed", "28", ...shape],
  ["--arch", "llama", "--experts", "0", "--seed", "29", "--rope-scaling", "yarn", "--rope-factor", "4", ...shape],
  ["--arch", "llama", "--experts", "0", "--seed", "30", "--rope-scaling", "linear", "--rope-factor", "4", ...shape],
  ["--arch", "llama", "--experts", "0", "--seed", "31", "--rope-freqs", "2.5", ...shape],
  ["--arch", "olmoe", "--type", "q2_k", "--experts", "4", "--seed", "32", ...shape],
  ["--arch", "granitemoe", "--type", "q4_k", "--experts", "4", "--seed", "33", ...shape],
  ["--arch", "deepseek2", "--experts", "8", "--seed", "34", ...mla],
  ["--arch", "deepseek2", "--type", "q8_0", "--experts", "8", "--seed", "34", ...mla],
  ["--arch", "deepseek2", "--experts", "8", "--seed", "35", ...mla, "--layout", "kv_b", "--q-lora", "0"],
  ["--arch", "deepseek2", "--type", "f16", "--experts", "8", "--seed", "35", ...mla, "--layout", "kv_b",
   "--q-lora", "0"],
  ["--arch", "deepseek2", "--experts", "8", "--seed", "37", ...v3, ...mla, "--rope-scaling", "yarn",
   "--rope-factor", "40", "--yarn-log-mul", "0.0707"],
  ["--arch", "deepseek2", "--type", "q4_k", "--experts", "8", "--seed", "36", ...v3, ...mla],
  ["--arch", "phimoe", "--type", "q8_0", "--experts", "4", "--seed", "40", ...shape, "--kv-heads", "2"],
  ["--arch", "phimoe", "--experts", "4", "--seed", "41", ...shape, "--kv-heads", "2", "--rope-orig", "128"],
  // expert groups, which llama.cpp applies to every architecture that has the keys
  ["--arch", "qwen2moe", "--experts", "8", "--groups", "4", "--groups-used", "2", "--seed", "50", ...shape],
];
const tokens = [1, 300, 301, 450, 17, 600, 42, 77, 512, 9];
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
for (const spec of specs) {
  const file = path.join(os.tmpdir(), "coegate-oracle.gguf");
  execFileSync(coegate, ["forge", "-o", file, ...spec]);
  const model = await llama.loadModel({modelPath: file});
  const ctx = await model.createContext({contextSize: 256, threads: 1, batchSize: 64, flashAttention: false,
                                        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"});
  const out = await ctx.getSequence().controlledEvaluate(tokens.map((t) => [t, {generateNext: {logits: true}}]));
  const top8 = out.map((o) => [...o.next.logits.entries()].slice(0, 8).map(([id, l]) => [id, Number(l.toPrecision(7))]));
  console.log(JSON.stringify({forge: spec, tokens, top8}));
  await ctx.dispose();
  await model.dispose();
}
