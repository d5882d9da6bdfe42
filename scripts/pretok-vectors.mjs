// Writes tests/reference/pretok-vectors.jsonl: how llama.cpp's pre-tokenizer
// expressions (llama-vocab.cpp, ECMAScript regexes as llama.cpp runs them) split sample
// texts, computed by JavaScript's regex engine (the same ECMAScript flavour, Unicode
// property escapes). Run by hand: node scripts/pretok-vectors.mjs > tests/reference/pretok-vectors.jsonl
// The unit test tests/unit/test_engine.c (test_pretokenizer_vectors) checks coegate's
// hand-written matchers against these pieces.
const contraction = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const upper = "(?:(?=\\p{L})[^a-z])", lower = "(?:(?=\\p{L})[^A-Z])";
const spaces = "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const gpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const llama3 = `${contraction}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|${spaces}`;
const qwen2 = `${contraction}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|${spaces}`;
const bloom = " ?[^(\\s|.,!?…。，、।۔،)]+";
const pres = {
  gpt2: [gpt2],
  llama3: [llama3],
  qwen2: [qwen2],
  starcoder: ["\\p{N}", gpt2],
  falcon: ["[\\p{P}\\$\\+<=>\\^~\\|`]+", gpt2, "[0-9][0-9][0-9]"],
  default: ["[\\p{P}\\$\\+<=>\\^~\\|]+", gpt2, "\\p{N}+", "[0-9][0-9][0-9]"],
  deepseek_coder: ["[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}"],
  bloom: [bloom],
  viking: [bloom, "\\p{N}"],
  tekken: [`[^\\r\\n\\p{L}\\p{N}]?${upper}*${lower}+|[^\\r\\n\\p{L}\\p{N}]?${upper}+${lower}*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|${spaces}`],
  gpt4o: [`[^\\r\\n\\p{L}\\p{N}]?${upper}*${lower}+${contraction}?|[^\\r\\n\\p{L}\\p{N}]?${upper}+${lower}*${contraction}?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|${spaces}`],
  deepseek3: ["\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
              `[!"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_\`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|${spaces}`],
  seed_coder: [`${contraction}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|${spaces}`],
  bailing: [`'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+`],
};
const texts = [
  "Hello World! I'm here, they'RE there; we've 'll go.",
  "HelloWorld ABCdef ÉCOLE naïve café McDonald's iPhone XMLHttpRequest",
  "12345 1.5 3,000,000 ٣٤٥ ¼ 2024-11-30",
  "foo!!\n\nbar\r\n  baz   \t\n  x   y  ",
  "path/to//file.txt\n/usr/bin/ --flag=1 (a|b) [x] {y}",
  "中文字符 ひらがな カタカナ 한국어 テスト123",
  "مرحبا، بالعالم. नमस्ते। दुनिया… e\u0301t\u00e9 a\u0308",
  "$100 + ∑ €5 ≤ 7 © ™ 👍🏽 ok #tag @user ~tilde `tick`",
  "   leading and trailing   ",
  "\n\n\n",
  "a'b c'D 'S '",
];
for (const [name, exprs] of Object.entries(pres)) {
  for (const text of texts) {
    let pieces = [text];
    for (const e of exprs) {
      const re = new RegExp(e, "gu");
      const out = [];
      for (const p of pieces) {
        let at = 0;
        for (const m of p.matchAll(re)) {
          if (m[0].length === 0) continue;
          if (m.index > at) out.push(p.slice(at, m.index));
          out.push(m[0]);
          at = m.index + m[0].length;
        }
        if (at < p.length) out.push(p.slice(at));
      }
      pieces = out;
    }
    console.log(JSON.stringify({pre: name, text, pieces}));
  }
}
