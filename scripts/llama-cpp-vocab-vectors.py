#!/usr/bin/env python3
"""Checks coegate's tokenizers against llama.cpp's own tokenizer test vectors: every
models/ggml-vocab-*.gguf of a llama.cpp checkout that has .inp/.out files (texts, and
the token ids llama.cpp's test-tokenizer-0 expects). Run by hand, outside the build:

    python3 scripts/llama-cpp-vocab-vectors.py LLAMA_CPP/models [build/coegate]

Prints one line per vocabulary (matching cases, or the first mismatches) and exits 1
if any case differs. Vocabularies whose tokenizer coegate refuses are listed as such.
"""
import pathlib
import subprocess
import sys

SEP = "\n__ggml_vocab_test__\n"


def main():
    models = pathlib.Path(sys.argv[1])
    coegate = sys.argv[2] if len(sys.argv) > 2 else "build/coegate"
    bad = 0
    for vocab in sorted(models.glob("ggml-vocab-*.gguf")):
        inp, out = vocab.with_name(vocab.name + ".inp"), vocab.with_name(vocab.name + ".out")
        if not inp.exists() or not out.exists():
            print(f"{vocab.name}: no test vectors")
            continue
        texts = inp.read_text(encoding="utf-8").split(SEP)
        wants = out.read_text(encoding="utf-8").split("\n")
        if texts and texts[-1] == "":  # every text is followed by the separator
            texts.pop()
        ok, shown = 0, []
        for i, text in enumerate(texts):
            run = subprocess.run([coegate, "model", "tokenize", str(vocab)], input=text.encode("utf-8"),
                                 capture_output=True)
            if run.returncode != 0:
                reason = run.stderr.decode("utf-8", "replace").strip().split(": ", 1)[-1]
                print(f"{vocab.name}: refused: {reason}")
                break
            got = run.stdout.decode().split()
            want = wants[i].split() if i < len(wants) else []
            if got == want:
                ok += 1
            elif len(shown) < 3:
                shown.append(f"  case {i} {text[:40]!r}: want {' '.join(want)}; got {' '.join(got)}")
        else:
            print(f"{vocab.name}: {ok}/{len(texts)} match llama.cpp")
            for line in shown:
                print(line)
            bad += len(texts) - ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
