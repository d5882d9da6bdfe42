#!/usr/bin/env python3
"""Writes tests/reference/llama-cpp-vocabs.jsonl: compact copies of the byte-level BPE
vocabularies in llama.cpp's models/ folder that ../shared lacks, with llama.cpp's test
vectors for them, for the unit test test_llama_cpp_vocabs. Run by hand:

    python3 scripts/llama-cpp-vocab-reference.py LLAMA_CPP/models > tests/reference/llama-cpp-vocabs.jsonl

Each vocabulary keeps only the tokens and merges its test texts can use: the tokens
llama.cpp's expected output holds, the 256 byte tokens, and every merge whose result
is part of an expected token (with its two halves). Byte-level BPE never merges into a
token that is not part of the final ones, and it takes the best-ranked merge among
those possible, which is among the kept ones and keeps its order: on these texts the
small vocabulary tokenizes as the whole one. Ids are renumbered in the original order
(the expected ids with them); each line records the original ids too.
"""
import json
import pathlib
import struct
import sys

SEP = "\n__ggml_vocab_test__\n"
NAMES = ["command-r", "deepseek-llm", "falcon", "llama-bpe", "mpt", "qwen2", "qwen35", "refact", "starcoder"]


def read_kvs(path):
    data = path.read_bytes()
    at = 0

    def take(fmt):
        nonlocal at
        v = struct.unpack_from("<" + fmt, data, at)
        at += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal at
        n = take("Q")
        s = data[at:at + n].decode("utf-8", "surrogateescape")
        at += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    assert data[:4] == b"GGUF"
    at = 8
    take("Q")
    n_kv = take("Q")
    kvs = {}
    for _ in range(n_kv):
        key = string()
        kvs[key] = value(take("I"))
    return kvs


def main():
    models = pathlib.Path(sys.argv[1])
    for name in NAMES:
        path = models / f"ggml-vocab-{name}.gguf"
        kv = read_kvs(path)
        assert kv["tokenizer.ggml.model"] == "gpt2", name
        tokens, types, merges = kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"], kv["tokenizer.ggml.merges"]
        texts = path.with_name(path.name + ".inp").read_text(encoding="utf-8").split(SEP)
        outs = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
        if texts and texts[-1] == "":
            texts.pop()
        cases = [(t, [int(x) for x in outs[i].split()]) for i, t in enumerate(texts)]
        finals = {tokens[i] for _, ids in cases for i in ids}
        parts = {f[a:b] for f in finals for a in range(len(f)) for b in range(a + 1, len(f) + 1)}
        index = {t: i for i, t in enumerate(tokens)}
        kept_merges = []
        keep = set(index[t] for t in finals)
        for m in merges:
            a, b = m.split(" ", 1)
            if a + b in parts and a + b in index:
                kept_merges.append(m)
                keep.update(index[x] for x in (a, b, a + b) if x in index)
        # the 256 byte tokens (GPT-2's alphabet), and the special tokens the texts spell out
        alphabet = {chr(c) for c in range(256) if 33 <= c <= 126 or 161 <= c <= 172 or 174 <= c <= 255}
        alphabet |= {chr(256 + n) for n in range(256 - len(alphabet))}
        keep.update(i for i, t in enumerate(tokens) if t in alphabet)
        keep.update(i for i, t in enumerate(tokens) if types[i] in (3, 4) and any(t in c for c, _ in cases))
        for key in ("bos", "eos", "unknown", "padding"):
            if f"tokenizer.ggml.{key}_token_id" in kv and kv[f"tokenizer.ggml.{key}_token_id"] < len(tokens):
                keep.add(kv[f"tokenizer.ggml.{key}_token_id"])
        old = sorted(keep)
        new = {o: n for n, o in enumerate(old)}
        line = {
            "name": name,
            "pre": kv.get("tokenizer.ggml.pre", "default"),
            "tokens": [tokens[o] for o in old],
            "types": [types[o] for o in old],
            "ids": old,
            "merges": kept_merges,
            "specials": {k: new[kv[f"tokenizer.ggml.{k}_token_id"]] for k in ("bos", "eos", "unknown", "padding")
                         if f"tokenizer.ggml.{k}_token_id" in kv and kv[f"tokenizer.ggml.{k}_token_id"] in new},
            "cases": [{"text": t, "ids": [new[i] for i in ids]} for t, ids in cases],
        }
        for flag in ("add_bos_token", "add_eos_token", "add_space_prefix"):
            if f"tokenizer.ggml.{flag}" in kv:
                line[flag] = kv[f"tokenizer.ggml.{flag}"]
        print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    main()
