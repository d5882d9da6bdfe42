#!/usr/bin/env python3
"""coegate's engine against llama.cpp on the same GGUF model, on this machine, in one
run: prompt processing (256 tokens), decode of one sequence and of four concurrent
ones (each after a 32-token prompt, 96 steps). Run by hand, with llama.cpp built from
source outside the project (its llama-bench and llama-batched-bench):

    python3 bench/vs_llama_cpp.py LLAMA_CPP_BUILD/bin [MODEL.gguf] [ROUNDS]

MODEL defaults to the engine benchmark's forged model (bench/engine.sh makes it).
The two engines run alternately, ROUNDS times (default 3); the table gives medians and
each ratio is coegate / llama.cpp, or four sequences / one of the same engine. For one
sequence llama.cpp's figure is the faster of llama-bench's (96 tokens at depth 32) and
llama-batched-bench's.
"""
import glob
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def coegate(model, threads):
    out = sh([os.path.join(ROOT, "build/bench/engine-bench"), model, str(threads)])
    num = lambda label: float(re.search(re.escape(label) + r"[^|]*\| ([0-9.]+)", out).group(1))
    return {"pp": num("prompt processing"), "one": num("decode, 1 sequence"),
            "four": num("decode, 4 concurrent sequences")}


def llama(bin_dir, model, threads):
    def bench(*args):
        out = sh([os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", str(threads), "-r", "3", "-o", "csv", *args])
        return float(out.strip().splitlines()[-1].split(",")[-2].strip('"'))  # avg_ts

    pp = bench("-p", "256", "-n", "0")
    tg = bench("-p", "0", "-n", "96", "-d", "32")  # 96 tokens after 32 in the cache, as coegate's figure
    batched = sh([os.path.join(bin_dir, "llama-batched-bench"), "-m", model, "-t", str(threads), "-c", "2048",
                  "-npp", "32", "-ntg", "96", "-npl", "1,4"])
    rows = {}
    for line in batched.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[2].isdigit():
            rows[int(cells[2])] = float(cells[7])  # S_TG t/s: generation, all sequences together
    # one sequence: the faster of llama-bench's and llama-batched-bench's figures
    return {"pp": pp, "one": max(tg, rows[1]), "four": rows[4]}


def main():
    bin_dir = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) > 2 else max(glob.glob(os.path.join(ROOT, "build/bench-model-*.gguf")),
                                                       key=os.path.getmtime)
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    threads = os.cpu_count()
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(coegate(model, threads))
        theirs.append(llama(bin_dir, model, threads))
    med = lambda runs, k: statistics.median(r[k] for r in runs)
    ratio = lambda k: statistics.median(o[k] / t[k] for o, t in zip(ours, theirs))
    gain = lambda runs: statistics.median(r["four"] / r["one"] for r in runs)
    print(f"## coegate and llama.cpp, {os.path.basename(model)}, {threads} threads, {rounds} alternating rounds\n")
    print("| measure | coegate | llama.cpp | coegate / llama.cpp |")
    print("|---|---|---|---|")
    print(f"| prompt processing, 256 tokens (tokens/s) | {med(ours, 'pp'):.1f} | {med(theirs, 'pp'):.1f} | {ratio('pp'):.2f} |")
    print(f"| decode, 1 sequence (tokens/s) | {med(ours, 'one'):.2f} | {med(theirs, 'one'):.2f} | {ratio('one'):.2f} |")
    print(f"| decode, 4 sequences (tokens/s, all) | {med(ours, 'four'):.2f} | {med(theirs, 'four'):.2f} | {ratio('four'):.2f} |")
    print(f"| 4 sequences / 1 | {gain(ours):.2f}x | {gain(theirs):.2f}x | |")


if __name__ == "__main__":
    main()
