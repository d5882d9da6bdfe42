#!/usr/bin/env python3
"""Writes mixed documents for `coegate fusion eval`: each one a math problem, a piece
of code and a Shakespeare passage, in that order, taken from the dev splits of
../shared/corpora (row i of each), with "domain": "mixed". Deterministic.

usage: scripts/make-mixed-docs.py OUT.jsonl [--corpora DIR] [--n N] [--chars N]
"""
import argparse
import json
import os


def rows(corpora, domain):
    with open(os.path.join(corpora, f"{domain}.dev.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def head(text, chars):
    """At most chars characters, cut at the end of a line when there is one."""
    if len(text) <= chars:
        return text
    cut = text.rfind("\n", 0, chars)
    return text[:cut if cut > chars // 2 else chars]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--corpora", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--chars", type=int, default=900, help="at most this many characters of each part")
    a = ap.parse_args()
    math, code, writing = (rows(a.corpora, d) for d in ("math", "code", "writing"))
    n = min(a.n, len(math), len(code), len(writing))
    with open(a.out, "w", encoding="utf-8") as f:
        for i in range(n):
            text = "\n\n".join(head(t, a.chars) for t in (math[i], code[i], writing[i]))
            f.write(json.dumps({"id": f"mixed-{i}", "domain": "mixed", "text": text}) + "\n")
    print(f"wrote {n} mixed documents to {a.out}")


if __name__ == "__main__":
    main()
