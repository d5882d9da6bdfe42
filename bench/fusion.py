#!/usr/bin/env python3
"""Decode speed of token-level fusion through the real server, in one run: the math
expert alone (the experts are the same size), and the demo's fusion group (router
models/fusion-router.gguf) in modes fusionroute, select and mix, each with 1 and 4
concurrent streams. Tokens/s counts
generated tokens (usage) over wall time from request to last byte; each figure is the
best of three tries, and the ratios compare figures of this run only.

usage: bench/fusion.py [--build DIR] [--tokens N]"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(path):
    models = os.path.join(ROOT, "models")
    experts = {n: {"kind": "local", "path": os.path.join(models, n + ".gguf"), "context": 1024, "max_batch": 8}
               for n in ("math", "code", "writing", "fusion-router")}
    group = {"experts": ["math", "code", "writing"], "router": "fusion-router",
             "selector": os.path.join(models, "fusion-selector.gguf")}
    fusions = {f"fused-{m}": dict(group, mode=m) for m in ("fusionroute", "select", "mix")}
    with open(path, "w") as f:
        json.dump({"server": {"host": "127.0.0.1", "port": 0}, "experts": experts, "fusions": fusions}, f)


def one(port, model, tokens, seed, out):
    # The end tokens banned (</s> 2 and <|im_end|> 4 of models/' vocabulary): every mode
    # decodes exactly `tokens` tokens, so the figures compare the same work.
    body = json.dumps({"model": model, "max_tokens": tokens, "seed": seed, "temperature": 1.0,
                       "logit_bias": {"2": -100, "4": -100},
                       "messages": [{"role": "user", "content": "Tell me a story about numbers and code."}]})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body.encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        n = json.loads(r.read())["usage"]["completion_tokens"]
    assert n == tokens, f"{model}: {n} tokens instead of {tokens}"
    out.append(n)


def measure(port, model, streams, tokens):
    best = 0.0
    for attempt in range(3):
        done = []
        threads = [threading.Thread(target=one, args=(port, model, tokens, 100 * attempt + i, done))
                   for i in range(streams)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, sum(done) / (time.monotonic() - t0))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--tokens", type=int, default=400)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "fusion.json")
        config(cfg)
        p = subprocess.Popen([os.path.join(a.build, "coegate"), "serve", "--config", cfg, "--log-level", "warn"],
                             stdout=subprocess.PIPE, text=True)
        port = None
        for line in p.stdout:
            m = re.search(r"listening on http://[^ ]*:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            sys.exit("coegate did not start")
        threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
        try:
            rows = []
            base = {}
            for model in ("math", "fused-fusionroute", "fused-select", "fused-mix"):
                for streams in (1, 4):
                    tps = measure(port, model, streams, a.tokens)
                    base.setdefault(streams, tps)
                    rows.append((model, streams, tps, tps / base[streams]))
            print("| model | streams | tokens/s | vs the expert alone |\n|---|---:|---:|---:|")
            for model, streams, tps, ratio in rows:
                print(f"| {model} | {streams} | {tps:.0f} | {ratio:.2f}x |")
        finally:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    main()
