#!/usr/bin/env python3
"""Soak benchmark (not a test): the real coegate under mixed load for a while, with a
reload every 10 s, to see that nothing leaks and nothing fails.

Starts the fake upstream and coegate on loopback (COEGATE and FAKE_UPSTREAM, as the
tests do), with a remote expert, an echo expert and a small forged local expert.
CLIENTS threads send, for DURATION seconds, a mix of streamed and non-streamed chat
requests to each; one in ten streams is abandoned after its first event. Every 10 s
the configuration is rewritten (a changed setting) and SIGHUP'd, and coegate's
resident memory and open file descriptors are sampled. Prints the samples, then
requests by outcome: anything but 200 (and the documented 503 under overload) is a
failure.

usage: bench/soak.py [DURATION_S (default 600)] [CLIENTS (default 8)]"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration"))
from harness import COEGATE, Gateway, Stream, Upstream, chat_body, post, remote  # noqa: E402


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 600
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    tmp = tempfile.TemporaryDirectory(prefix="coegate-soak-")
    model = os.path.join(tmp.name, "local.gguf")
    subprocess.run([COEGATE, "forge", "-o", model, "--arch", "qwen2moe", "--type", "q8_0"], check=True,
                   capture_output=True, timeout=120)
    counts, lock, broken = {}, threading.Lock(), []
    stop = time.monotonic() + duration

    def count(key):
        with lock:
            counts[key] = counts.get(key, 0) + 1

    with Upstream() as up:
        config = {"server": {"access_log": False},
                  "experts": {"up": remote(up, retries=1), "echo": {"kind": "echo", "delay_ms": 2},
                              "local": {"kind": "local", "path": model, "threads": 1, "max_tokens": 24}},
                  "routes": {"auto": {"default": "up"}}}
        with Gateway(config) as gw:
            def client(seed):
                rng = random.Random(seed)
                while time.monotonic() < stop:
                    model_name = rng.choice(["up", "echo", "local"])
                    text = "fake: chunks=20 delay_ms=5" if model_name == "up" else "tell me about the sea " * 3
                    stream = rng.random() < 0.5
                    try:
                        if stream:
                            s = Stream(gw.port, chat_body(text, model=model_name, stream=True, max_tokens=24),
                                       timeout=30)
                            if s.status != 200:
                                count(f"{model_name} stream {s.status}")
                                s.close()
                                continue
                            events = s.events()
                            if rng.random() < 0.1:
                                next(events, None)
                                s.close()  # abandoned mid-stream
                                count(f"{model_name} stream abandoned")
                                continue
                            data = [d for _, d in events]
                            s.close()
                            ok = data and data[-1] == "[DONE]" and not any(
                                "error" in json.loads(d) for d in data[:-1])
                            count(f"{model_name} stream {'200' if ok else 'broken'}")
                            if not ok and len(broken) < 5:
                                broken.append(data[-3:])
                        else:
                            r = post(gw.port, chat_body(text, model=model_name, max_tokens=24), timeout=30)
                            count(f"{model_name} {r.status}")
                    except (OSError, socket.timeout) as e:
                        count(f"{model_name} {'stream' if stream else 'body'} {type(e).__name__}")

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
            for t in threads:
                t.start()
            samples, reloads, t0 = [], 0, time.monotonic()
            samples.append((0.0,) + sample(gw.proc.pid))
            while time.monotonic() < stop:
                time.sleep(min(10, max(0.0, stop - time.monotonic())))
                config["experts"]["echo"]["delay_ms"] = 2 + reloads % 2
                gw.write_config(config)
                gw.signal(signal.SIGHUP)
                reloads += 1
                samples.append((time.monotonic() - t0,) + sample(gw.proc.pid))
            for t in threads:
                t.join(timeout=60)
            print(f"## Soak: {duration:.0f} s, {clients} clients, {reloads} reloads\n")
            print("| t (s) | RSS (MB) | open fds |\n|---|---|---|")
            for t, rss, fds in samples:
                print(f"| {t:.0f} | {rss / 1024:.1f} | {fds} |")
            rss = [s[1] for s in samples[1:]] or [samples[0][1]]
            fds = [s[2] for s in samples[1:]] or [samples[0][2]]
            print(f"\nRSS after the first interval {rss[0] / 1024:.1f} MB, at the end {rss[-1] / 1024:.1f} MB "
                  f"(x{rss[-1] / rss[0]:.2f}); open fds {fds[0]} then {fds[-1]}")
            print("\n| outcome | requests |\n|---|---|")
            for k in sorted(counts):
                print(f"| {k} | {counts[k]} |")
            bad = sum(v for k, v in counts.items() if not (k.endswith(" 200") or k.endswith(" 503")
                                                            or k.endswith(" abandoned")))
            print(f"\nfailed (anything but 200, documented 503s and abandoned streams): {bad}")
            for b in broken:
                print("broken stream, last events:", b)
    tmp.cleanup()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
