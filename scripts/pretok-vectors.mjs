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
// DeepSeek LLM's letter class, as llama.cpp spells it out (code point ranges)
const dsLetters = [[0x41, 0x5A], [0x61, 0x7A], [0xB5, 0xB5], [0xC0, 0xD6], [0xD8, 0xF6], [0xF8, 0x1BA], [0x1BC, 0x1BF],
  [0x1C4, 0x293], [0x295, 0x2AF], [0x370, 0x373], [0x376, 0x377], [0x37B, 0x37D], [0x37F, 0x37F], [0x386, 0x386],
  [0x388, 0x38A], [0x38C, 0x38C], [0x38E, 0x3A1], [0x3A3, 0x3F5], [0x3F7, 0x481], [0x48A, 0x52F], [0x531, 0x556],
  [0x10A0, 0x10C5], [0x13A0, 0x13F5], [0x13F8, 0x13FD], [0x1C90, 0x1CBA], [0x1CBD, 0x1CBF], [0x1D00, 0x1D2B],
  [0x1D6B, 0x1D77], [0x1D79, 0x1D9A], [0x1E00, 0x1F15], [0x1F18, 0x1F1D], [0x1F20, 0x1F45], [0x1F48, 0x1F4D],
  [0x1F50, 0x1F57], [0x1F59, 0x1F59], [0x1F5B, 0x1F5B], [0x1F5D, 0x1F5D], [0x1F5F, 0x1F7D], [0x1F80, 0x1FB4],
  [0x1FB6, 0x1FBC], [0x1FBE, 0x1FBE], [0x1FC2, 0x1FC4], [0x1FC6, 0x1FCC], [0x1FD0, 0x1FD3], [0x1FD6, 0x1FDB],
  [0x1FE0, 0x1FEC], [0x1FF2, 0x1FF4], [0x1FF6, 0x1FFC], [0x2102, 0x2102], [0x2107, 0x2107], [0x210A, 0x2113],
  [0x2115, 0x2115], [0x2119, 0x211D], [0x2124, 0x2124], [0x2126, 0x2126], [0x2128, 0x2128], [0x212A, 0x212D],
  [0x212F, 0x2134], [0x2139, 0x2139], [0x213C, 0x213F], [0x2145, 0x2149], [0x214E, 0x214E], [0x2183, 0x2184],
  [0x2C00, 0x2C7B], [0x2C7E, 0x2CE4], [0x2CEB, 0x2CEE], [0x2CF2, 0x2CF3], [0xA640, 0xA66D], [0xA680, 0xA69B],
  [0xA722, 0xA76F], [0xA771, 0xA787], [0xA78B, 0xA78E], [0xAB70, 0xABBF], [0xFB00, 0xFB06], [0xFB13, 0xFB17],
  [0xFF21, 0xFF3A], [0xFF41, 0xFF5A], [0x10400, 0x1044F], [0x104B0, 0x104D3], [0x104D8, 0x104FB], [0x10C80, 0x10CB2],
  [0x10CC0, 0x10CF2], [0x118A0, 0x118DF], [0x1E900, 0x1E943]]
  .map(([a, b]) => `\\u{${a.toString(16)}}-\\u{${b.toString(16)}}`).join("");
const tinyWords = (digits) =>
  `[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+${contraction}?|` +
  `[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*${contraction}?|` +
  `${digits}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|${spaces}`;
const caseless = (e) => e.replace(/\\p\{L[ultmo]\}/g, "\\p{L}");
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
  qwen35: [`${contraction}|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|${spaces}`],
  deepseek_llm: ["[\\r\\n]", `\\s?[${dsLetters}]+`, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+", "\\p{N}+"],
  lines: ["[^\\n]+|[\\n]+"],
  laguna: ["[^\\n]+|[\\n]+", qwen2],
  ufakzeka: [`[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|${spaces}`],
  whitespace: ["\\S+"],
  minicpm5: ["\\p{N}{1,3}", `${contraction}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|${spaces}`],
  spark: ["\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
          `[!"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_\`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+|[\\r\\n]|\\s+(?!\\S)|\\s+`,
          "\\p{N}"],
  jais2: [`${contraction}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|` +
          [512, 256, 128, 64, 32, 16, 8, 4].map((k) => `\\s{${k}}(?!\\S)|`).join("") + "\\s{1,2}(?!\\S)|\\s{1}"],
  exaone_moe: [`${contraction}|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+`],
  // llama.cpp reads every \\p{L...} of these as any letter (its collapsed expressions)
  tiny_aya: ["\\d{1,3}(?=(?:\\d{3})*\\b)", caseless(tinyWords("\\p{N}{1,3}"))],
  youtu: ["[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\\u3040-ゟ゠-ヿ]+", caseless(tinyWords("\\p{N}"))],
  granite_emb: [`[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+${contraction}?|` +
                `[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*${contraction}?|` +
                `\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|${spaces}`],
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
  "x" + " ".repeat(9) + "y" + " ".repeat(5) + "z\t\t\t\tw" + " ".repeat(4),
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
