"""The demo's fusion group (configs/demo.json "fusions": the three real experts of
models/, models/fusion-router.gguf as router, models/fusion-selector.gguf) through the real
server: streamed and not, seeded sampling reproduced, four concurrent fused streams
each equal to its text alone, a client that hangs up freeing every sequence of its
request (router and experts), the per-expert counts (header, extension fields) and
the fusion metrics."""

import json
import os
import re
import socket
import threading
import time
import unittest

from harness import Gateway, Stream, chat_body, post, request

ROOT = os.getcwd()  # meson runs the integration tests from the source root
MODELS = ("fusion-router", "math", "code", "writing")


def demo_config(**fusion):
    with open(os.path.join(ROOT, "configs/demo.json")) as f:
        config = json.load(f)
    for e in config["experts"].values():
        e["path"] = os.path.normpath(os.path.join(ROOT, "configs", e["path"]))
        e["threads"] = 1
        e["context"] = 2048  # past the models' 256, so that a long answer outlasts a hang-up
    del config["routes"]  # the category router is not what this tests
    for g in config["fusions"].values():
        g["selector"] = os.path.normpath(os.path.join(ROOT, "configs", g["selector"]))
        g["max_tokens"] = 0
        g.update(fusion)
    return config


def sequences(port):
    """Active sequences per local model, from /metrics."""
    text = request(port, "GET", "/metrics").body.decode()
    return {m: int(re.search(r'^coegate_local_sequences\{expert="%s",state="active"\} (\d+)$' % m, text, re.M)
                   .group(1)) for m in MODELS}


def streamed(port, body):
    s = Stream(port, body)
    assert s.status == 200, s.status
    events = [json.loads(data) for _, data in s.all() if data != "[DONE]"]
    s.close()
    return s.headers, events


class Fusion(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Gateway(demo_config())

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()

    def body(self, stream, **kw):
        kw.setdefault("max_tokens", 24)
        kw.setdefault("seed", 7)
        return chat_body("Write a Python function that returns the larger of two numbers.", stream=stream,
                         model="fused", **kw)

    def test_listed_as_fusion(self):
        models = {m["id"]: m["coegate_type"] for m in request(self.gw.port, "GET", "/v1/models").json()["data"]}
        self.assertEqual(models["fused"], "fusion")

    def test_non_streamed_with_counts(self):
        r = post(self.gw.port, self.body(False))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-coegate-expert"], "fused")
        choice = r.json()["choices"][0]
        counts = choice["coegate_fusion"]["experts"]
        self.assertEqual(set(counts), {"math", "code", "writing"})
        header = dict(kv.split("=") for kv in r.headers["x-coegate-fusion"].split(","))
        self.assertEqual({k: int(v) for k, v in header.items()}, counts)
        usage = r.json()["usage"]["completion_tokens"]
        # Every generated token was drawn from one expert's step (an end token is not counted).
        self.assertEqual(sum(counts.values()), usage)
        self.assertGreater(usage, 0)

    def test_streamed_equals_non_streamed_and_seed_repeats(self):
        r1 = post(self.gw.port, self.body(False, temperature=0.8))
        r2 = post(self.gw.port, self.body(False, temperature=0.8))
        text = r1.json()["choices"][0]["message"]["content"]
        self.assertEqual(text, r2.json()["choices"][0]["message"]["content"])
        headers, events = streamed(self.gw.port, self.body(True, temperature=0.8, coegate_fusion_trace=True))
        self.assertEqual(headers["x-coegate-expert"], "fused")
        content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        self.assertEqual(content, text)
        traced = [n for e in events if e["choices"] for n in e["choices"][0].get("coegate_fusion", {}).get("tokens", [])]
        final = [e["choices"][0]["coegate_fusion"]["experts"] for e in events
                 if e["choices"] and e["choices"][0].get("finish_reason")]
        self.assertEqual(len(final), 1)
        self.assertEqual({k: traced.count(k) for k in final[0]}, final[0])
        self.assertEqual(final[0], r1.json()["choices"][0]["coegate_fusion"]["experts"])

    def test_four_concurrent_streams_each_as_alone(self):
        seeds = (1, 2, 3, 4)
        alone = {}
        for s in seeds:
            _, ev = streamed(self.gw.port, self.body(True, seed=s, temperature=0.9))
            alone[s] = "".join(e["choices"][0]["delta"].get("content") or "" for e in ev if e["choices"])
        together = {}

        def run(s):
            _, ev = streamed(self.gw.port, self.body(True, seed=s, temperature=0.9))
            together[s] = "".join(e["choices"][0]["delta"].get("content") or "" for e in ev if e["choices"])

        threads = [threading.Thread(target=run, args=(s,)) for s in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(together, alone)
        self.assertGreater(len(set(alone.values())), 1)

    def test_disconnect_frees_every_sequence(self):
        # 2000 tokens: seconds of decoding, so the hang-up comes long before the end.
        body = json.dumps(self.body(True, max_tokens=2000, seed=11, temperature=1.0)).encode()
        s = socket.create_connection(("127.0.0.1", self.gw.port), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        got = b""
        while got.count(b"data: ") < 3:
            chunk = s.recv(4096)
            self.assertTrue(chunk)
            got += chunk
        busy = sequences(self.gw.port)
        self.assertEqual(busy["fusion-router"], 1)  # the router's sequence, open while it decodes
        s.close()
        deadline = time.monotonic() + 10
        while sequences(self.gw.port) != {m: 0 for m in MODELS} and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(sequences(self.gw.port), {m: 0 for m in MODELS})
        text = request(self.gw.port, "GET", "/metrics").body.decode()
        self.assertIn('coegate_fusion_cancelled_total{fusion="fused"} 1', text)

    def test_metrics(self):
        post(self.gw.port, self.body(False))
        text = request(self.gw.port, "GET", "/metrics").body.decode()
        tokens = {m: int(v) for m, v in re.findall(
            r'^coegate_fusion_tokens_total\{fusion="fused",expert="(\w+)"\} (\d+)$', text, re.M)}
        self.assertEqual(set(tokens), {"math", "code", "writing"})
        self.assertGreater(sum(tokens.values()), 0)
        self.assertRegex(text, r'(?m)^coegate_fusion_steps_total\{fusion="fused",mode="fusionroute"\} [1-9]\d*$')
        self.assertRegex(text, r'(?m)^coegate_fusion_catchup_tokens_total\{fusion="fused"\} \d+$')


class Modes(unittest.TestCase):
    def test_select_and_mix_serve(self):
        for mode in ("select", "mix"):
            with self.subTest(mode=mode), Gateway(demo_config(mode=mode)) as gw:
                r = post(gw.port, chat_body("Natalia sold 48 clips. How many?", model="fused", max_tokens=12,
                                            temperature=0, logprobs=True, top_logprobs=2))
                self.assertEqual(r.status, 200, r.body)
                choice = r.json()["choices"][0]
                lp = choice["logprobs"]["content"]
                self.assertEqual(len(lp), r.json()["usage"]["completion_tokens"])
                # Greedy: the chosen token is the most probable of the fused distribution.
                for t in lp:
                    self.assertAlmostEqual(t["logprob"], t["top_logprobs"][0]["logprob"], places=5)
                text = request(gw.port, "GET", "/metrics").body.decode()
                self.assertIn('coegate_fusion_steps_total{fusion="fused",mode="%s"}' % mode, text)


if __name__ == "__main__":
    unittest.main()
