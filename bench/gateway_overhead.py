#!/usr/bin/env python3
"""Gateway overhead, in one run: the fake upstream hit directly, then through
coegate, with wrk at a fixed concurrency (non-streaming); then the time to the first
streamed chunk, direct and through coegate. Prints a Markdown table; the figures
that matter are the differences and ratios against the direct baseline of the
same run, since absolute numbers move with the machine's load.

usage: bench/gateway_overhead.py [--connections N,N...] [--duration S] [--ttfb-requests N]

The default concurrencies are 2 (the machine is not saturated: the figures are the
gateway's own cost) and 16 (every core is busy with wrk, coegate and the upstream, so
p99 mostly measures the scheduler). Shared machines drift: each figure is the median
of several rounds in which the paths are measured alternately."""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("COEGATE", os.path.join(ROOT, "build", "coegate"))
os.environ.setdefault("FAKE_UPSTREAM", os.path.join(ROOT, "build", "tests", "fake-upstream"))
from harness import Gateway, Upstream, remote  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url, connections, duration):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", os.path.join(ROOT, "bench", "chat.lua"), url],
                         capture_output=True, text=True, check=True).stdout
    lat = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses:\n{out}")
    return {"rps": rps, "p50_ms": lat["50"], "p99_ms": lat["99"]}


def ttfb(port, n):
    """Milliseconds from sending a streamed request to its first event, over n requests
    on one keep-alive connection."""
    body = json.dumps({"model": "auto", "stream": True,
                       "messages": [{"role": "user", "content": "fake: key=ttfb chunks=2"}]}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(req)
        buf = b""
        while b"data: " not in buf:
            buf += s.recv(65536)
        times.append((time.perf_counter() - t0) * 1e3)
        while not buf.endswith(b"0\r\n\r\n"):  # drain to the end of the chunked body
            buf += s.recv(65536)
    s.close()
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", default="2,16")
    ap.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians are reported")
    ap.add_argument("--ttfb-requests", type=int, default=500, help="per path and round")
    a = ap.parse_args()
    levels = [int(c) for c in a.connections.split(",")]
    rows = {}
    with Upstream() as up:
        expert = remote(up, retries=0)
        with Gateway({"server": {"access_log": True}, "experts": {"up": expert},
                      "routes": {"auto": {"default": "up"}}}) as gw_log, \
                Gateway({"server": {"access_log": False}, "experts": {"up": expert},
                         "routes": {"auto": {"default": "up"}}}) as gw:
            # Warm both paths (connection pools, page cache) before measuring.
            for url in (up.base_url, gw.base_url, gw_log.base_url):
                wrk(url + "/chat/completions", levels[0], 1)
            paths = {"direct": up.base_url, "coegate": gw.base_url, "coegate, access log on": gw_log.base_url}
            for c in levels:
                runs = {name: [] for name in paths}
                for _ in range(a.rounds):
                    for name, url in paths.items():
                        runs[name].append(wrk(url + "/chat/completions", c, a.duration))
                rows[c] = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
            tt = {"direct": [], "coegate": []}
            for _ in range(a.rounds):
                tt["direct"].append(ttfb(up.port, a.ttfb_requests))
                tt["coegate"].append(ttfb(gw.port, a.ttfb_requests))
            t_direct = {k: statistics.median(r[k] for r in tt["direct"]) for k in tt["direct"][0]}
            t_gw = {k: statistics.median(r[k] for r in tt["coegate"]) for k in tt["coegate"][0]}
    for c, by_path in rows.items():
        base = by_path["direct"]
        print(f"## Gateway overhead (wrk, {c} connections, non-streaming; medians of {a.rounds} alternating "
              f"rounds of {a.duration} s)\n")
        print("| path | requests/s | vs direct | p50 ms | p99 ms | added p50 us | added p99 us |")
        print("|---|---|---|---|---|---|---|")
        for name, r in by_path.items():
            print(f"| {name} | {r['rps']:.0f} | {r['rps'] / base['rps']:.2f}x | {r['p50_ms']:.3f} | "
                  f"{r['p99_ms']:.3f} | {(r['p50_ms'] - base['p50_ms']) * 1e3:.0f} | "
                  f"{(r['p99_ms'] - base['p99_ms']) * 1e3:.0f} |")
        print()
    print(f"## Time to first streamed chunk (one connection; medians of {a.rounds} alternating rounds of "
          f"{a.ttfb_requests} sequential requests)\n")
    print("| path | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| direct | {t_direct['p50_ms']:.3f} | {t_direct['p99_ms']:.3f} |")
    print(f"| coegate | {t_gw['p50_ms']:.3f} | {t_gw['p99_ms']:.3f} |")
    print(f"\nadded by coegate to the first chunk: p50 {(t_gw['p50_ms'] - t_direct['p50_ms']) * 1e3:.0f} us, "
          f"p99 {(t_gw['p99_ms'] - t_direct['p99_ms']) * 1e3:.0f} us")


if __name__ == "__main__":
    main()
