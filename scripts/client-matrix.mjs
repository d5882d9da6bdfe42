// The client matrix: the JavaScript clients people point at an OpenAI-compatible
// server, each call they make by default, against a running coegate (the README's
// demo). Run by scripts/client-matrix.sh, which installs the clients with npm and
// starts the gateway; prints a Markdown table and exits non-zero if any cell failed.
//   node scripts/client-matrix.mjs BASE_URL   (NODE_PATH: the clients' node_modules)
import {createRequire} from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), "x"));
const load = async (name) => import(require.resolve(name));
const versionOf = (name) =>
    JSON.parse(fs.readFileSync(path.join(process.env.NODE_PATH || "node_modules", name, "package.json"))).version;
const base = process.argv[2] || "http://127.0.0.1:8080/v1";
const apiKey = "unused"; // the demo asks for none; the SDKs insist on one
const prompt = "What is 12 times 7? Answer briefly.";

const results = [];
async function cell(client, call, fn) {
    const t0 = Date.now();
    try {
        const detail = await fn();
        results.push({client, call, ok: true, detail: String(detail).replace(/\s+/g, " ").slice(0, 60), ms: Date.now() - t0});
    } catch (e) {
        results.push({client, call, ok: false, detail: String(e && e.message || e).replace(/\s+/g, " ").slice(0, 160),
                      ms: Date.now() - t0});
    }
}
function must(cond, what) {
    if (!cond)
        throw new Error(what);
}

// The official SDK, two majors.
for (const [alias, label] of [["openai7", "openai (Node) 7"], ["openai6", "openai (Node) 6"]]) {
    const OpenAI = (await load(alias)).default;
    const version = versionOf(alias);
    const client = new OpenAI({baseURL: base, apiKey});
    const name = `${label} (${version})`;
    await cell(name, "chat.completions.create", async () => {
        const r = await client.chat.completions.create({model: "auto", messages: [{role: "user", content: prompt}],
                                                         max_completion_tokens: 16});
        must(r.choices[0].message.role === "assistant" && typeof r.choices[0].message.content === "string", "no message");
        must(r.usage && r.usage.completion_tokens > 0, "no usage");
        return r.choices[0].message.content;
    });
    await cell(name, "chat.completions.create stream", async () => {
        const s = await client.chat.completions.create({model: "math", messages: [{role: "user", content: prompt}],
                                                         max_tokens: 16, stream: true,
                                                         stream_options: {include_usage: true}});
        let text = "", usage = null, first = null;
        for await (const chunk of s) {
            if (first === null && chunk.choices.length)
                first = chunk.choices[0].delta.role;
            text += chunk.choices[0]?.delta?.content || "";
            usage = chunk.usage || usage;
        }
        must(first === "assistant", "first chunk without role");
        must(usage && usage.completion_tokens > 0, "no usage chunk");
        return text;
    });
    await cell(name, "responses.create", async () => {
        const r = await client.responses.create({model: "writing", input: prompt, max_output_tokens: 16});
        must(typeof r.output_text === "string" && r.output_text.length > 0, "no output_text");
        must(r.usage && r.usage.output_tokens > 0, "no usage");
        return r.output_text;
    });
    await cell(name, "responses.create stream", async () => {
        const s = await client.responses.create({model: "code", input: prompt, max_output_tokens: 16, stream: true});
        let text = "", last = null;
        for await (const ev of s) {
            if (ev.type === "response.output_text.delta")
                text += ev.delta;
            last = ev.type;
        }
        must(last === "response.completed" || last === "response.incomplete", `ended with ${last}`);
        return text;
    });
    await cell(name, "models.list", async () => {
        const ids = [];
        for await (const m of client.models.list())
            ids.push(m.id);
        must(ids.includes("auto"), "no route 'auto'");
        return ids.join(",");
    });
}

// LangChain JS.
{
    const {ChatOpenAI} = await load("@langchain/openai");
    const version = versionOf("@langchain/openai");
    const name = `LangChain ChatOpenAI (${version})`;
    const llm = new ChatOpenAI({model: "auto", apiKey, configuration: {baseURL: base}, maxTokens: 16});
    await cell(name, "invoke", async () => {
        const m = await llm.invoke(prompt);
        must(typeof m.content === "string", "no content");
        return m.content;
    });
    await cell(name, "stream", async () => {
        let text = "";
        for await (const chunk of await llm.stream(prompt))
            text += chunk.content;
        return text;
    });
}

// The Vercel AI SDK: its default OpenAI model speaks the Responses API.
{
    const {generateText, streamText, generateObject} = await load("ai");
    const {createOpenAI} = await load("@ai-sdk/openai");
    const {z} = await load("zod");
    const version = versionOf("ai");
    const name = `Vercel AI SDK (ai ${version})`;
    const openai = createOpenAI({baseURL: base, apiKey});
    await cell(name, "generateText", async () => {
        const r = await generateText({model: openai("auto"), prompt, maxOutputTokens: 16});
        must(typeof r.text === "string", "no text");
        return r.text;
    });
    await cell(name, "streamText", async () => {
        const r = streamText({model: openai("math"), prompt, maxOutputTokens: 16});
        let text = "";
        for await (const t of r.textStream)
            text += t;
        return text;
    });
    await cell(name, "generateText (chat completions)", async () => {
        const r = await generateText({model: openai.chat("writing"), prompt, maxOutputTokens: 16});
        return r.text;
    });
    await cell(name, "generateObject (local expert)", async () => {
        const r = await generateObject({model: openai("math"), prompt: "Describe the number 84.",
                                        schema: z.object({value: z.number().int(), even: z.boolean(),
                                                          kind: z.enum(["small", "large"])}),
                                        maxOutputTokens: 120});
        must(typeof r.object.even === "boolean", "not the object");
        return JSON.stringify(r.object);
    });
}

console.log("| client | call | result | ms | answer (or error) |");
console.log("|---|---|---|---:|---|");
for (const r of results)
    console.log(`| ${r.client} | ${r.call} | ${r.ok ? "ok" : "FAILED"} | ${r.ms} | ${r.detail.replace(/\|/g, "\\|")} |`);
process.exit(results.every((r) => r.ok) ? 0 : 1);
