"""Local experts through the real server: forged GGUF models answering chat and
completions, streamed and not, with logprobs; seeds; four concurrent streams
decoded together; a client hang-up that frees its sequence; config errors."""

import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (COEGATE, Gateway, Stream, chat_body, config_check, content_of_stream, gpus_found, post,
                     raw_stream_then_hangup, request)


def forge(path, *args):
    r = subprocess.run([COEGATE, "forge", "-o", path, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def metric(port, name, expert):
    text = request(port, "GET", "/metrics").body.decode()
    m = re.search(r'^%s\{expert="%s"(?:,state="active")?\} (\d+)$' % (name, expert), text, re.M)
    return int(m.group(1)) if m else None


class Local(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="coegate-local-")
        d = cls.dir.name
        forge(os.path.join(d, "qwen.gguf"), "--arch", "qwen2moe", "--type", "q8_0", "--seed", "7")
        forge(os.path.join(d, "mixtral.gguf"), "--arch", "llama", "--type", "f16", "--experts", "4", "--seed", "8")
        # Big enough that a long answer takes seconds, so a hang-up lands mid-sequence.
        forge(os.path.join(d, "slow.gguf"), "--arch", "olmoe", "--layers", "6", "--embd", "256", "--heads", "4",
              "--kv-heads", "4", "--ff", "256", "--experts", "8", "--experts-used", "2", "--context", "8192")
        cls.config = {
            "experts": {
                "qwen": {"kind": "local", "path": os.path.join(d, "qwen.gguf"), "max_tokens": 64, "threads": 2},
                "mixtral": {"kind": "local", "path": os.path.join(d, "mixtral.gguf"), "threads": 2},
                "slow": {"kind": "local", "path": os.path.join(d, "slow.gguf"), "context": 8192, "threads": 2},
                "single": {"kind": "local", "path": os.path.join(d, "slow.gguf"), "context": 8192, "threads": 1,
                           "max_batch": 1, "max_queue": 1, "retries": 0},
            },
            "routes": {"auto": {"default": "qwen"}},
        }
        cls.gw = Gateway(cls.config)

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.dir.cleanup()

    def chat(self, model="qwen", stream=False, **kw):
        body = chat_body("Tell me about the sea and the sky.", model=model, stream=stream, **kw)
        if stream:
            s = Stream(self.gw.port, body)
            self.assertEqual(s.status, 200)
            events = s.all()
            s.close()
            return events
        r = post(self.gw.port, body)
        self.assertEqual(r.status, 200, r.body)
        return r

    def test_chat_answer(self):
        for model in ("qwen", "mixtral"):
            r = self.chat(model, max_tokens=12, seed=1)
            self.assertEqual(r.headers["x-coegate-expert"], model)
            body = r.json()
            choice = body["choices"][0]
            self.assertEqual(choice["message"]["role"], "assistant")
            self.assertIsInstance(choice["message"]["content"], str)
            self.assertIn(choice["finish_reason"], ("length", "stop"))
            self.assertLessEqual(body["usage"]["completion_tokens"], 12)
            self.assertGreater(body["usage"]["prompt_tokens"], 5)
            self.assertEqual(body["usage"]["total_tokens"],
                             body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"])

    def test_same_seed_same_text_streamed_or_not(self):
        a = self.chat(max_tokens=24, seed=42, temperature=0.9).json()["choices"][0]["message"]["content"]
        b = self.chat(max_tokens=24, seed=42, temperature=0.9).json()["choices"][0]["message"]["content"]
        text, chunks = content_of_stream(self.chat(stream=True, max_tokens=24, seed=42, temperature=0.9))
        self.assertEqual(a, b)
        self.assertEqual(a, text)
        self.assertEqual(chunks[0]["choices"][0]["delta"].get("role"), "assistant")
        self.assertIn(chunks[-1]["choices"][0]["finish_reason"], ("length", "stop"))
        others = {self.chat(max_tokens=24, seed=s, temperature=0.9).json()["choices"][0]["message"]["content"]
                  for s in (1, 2, 3)}
        self.assertGreater(len(others | {a}), 1, "different seeds should give different text")

    def test_greedy_logprobs(self):
        body = self.chat(max_tokens=8, temperature=0, logprobs=True, top_logprobs=3).json()
        content = body["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), body["usage"]["completion_tokens"])
        for entry in content:
            self.assertLessEqual(entry["logprob"], 0)
            tops = entry["top_logprobs"]
            self.assertEqual(len(tops), 3)
            self.assertEqual([t["logprob"] for t in tops], sorted((t["logprob"] for t in tops), reverse=True))
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(entry["logprob"], tops[0]["logprob"], places=4)
            self.assertEqual(bytes(entry["bytes"]), bytes(tops[0]["bytes"]))
        text = "".join(bytes(e["bytes"]).decode("utf-8", "replace") for e in content)
        self.assertEqual(text, body["choices"][0]["message"]["content"])

    def test_streamed_logprobs(self):
        _, chunks = content_of_stream(self.chat(stream=True, max_tokens=6, seed=5, logprobs=True, top_logprobs=1))
        entries = [e for c in chunks if c["choices"][0].get("logprobs") for e in c["choices"][0]["logprobs"]["content"]]
        self.assertEqual(len(entries), 6)
        self.assertTrue(all(len(e["top_logprobs"]) == 1 for e in entries))

    def test_completions(self):
        r = post(self.gw.port, {"model": "qwen", "prompt": "the time of day", "max_tokens": 5, "seed": 3,
                                "logprobs": 2}, path="/v1/completions")
        self.assertEqual(r.status, 200, r.body)
        choice = r.json()["choices"][0]
        lp = choice["logprobs"]
        self.assertEqual(len(lp["tokens"]), 5)
        self.assertEqual(len(lp["token_logprobs"]), 5)
        self.assertTrue(all(len(t) <= 2 for t in lp["top_logprobs"]))
        self.assertEqual(lp["text_offset"][0], 0)

    def test_stop_sequence(self):
        full = self.chat(max_tokens=30, temperature=0).json()["choices"][0]["message"]["content"]
        words = full.split()
        if len(words) < 3:
            self.skipTest("the greedy text is too short to cut")
        stop = words[2]
        r = self.chat(max_tokens=30, temperature=0, stop=[stop]).json()["choices"][0]
        self.assertEqual(r["finish_reason"], "stop")
        self.assertEqual(r["message"]["content"], full[:full.index(stop)])

    def test_four_concurrent_streams(self):
        """Decoded together, each stream gives exactly what it gives alone."""
        # Long enough (~0.3 s each) that the four overlap even on a loaded machine.
        alone = {s: self.chat(model="slow", max_tokens=200, seed=s).json()["choices"][0]["message"]["content"]
                 for s in range(4)}
        results = {}

        def run(seed):
            events = self.chat(model="slow", stream=True, max_tokens=200, seed=seed)
            results[seed] = (events[-1][1], content_of_stream(events))

        threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        self.assertEqual(sorted(results), [0, 1, 2, 3])
        for seed, (last, (text, chunks)) in results.items():
            self.assertEqual(last, "[DONE]")
            self.assertIn(chunks[-1]["choices"][0]["finish_reason"], ("length", "stop"))
            self.assertEqual(text, alone[seed], f"seed {seed}")
        self.assertGreaterEqual(metric(self.gw.port, "coegate_local_batch_max", "slow"), 2,
                                "the streams were not decoded together")

    def test_disconnect_frees_the_sequence(self):
        before = metric(self.gw.port, "coegate_local_cancelled_total", "slow")
        body = chat_body("Go on for a long time.", model="slow", stream=True, max_tokens=6000, temperature=0.8)
        raw_stream_then_hangup(self.gw.port, body, 3)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if metric(self.gw.port, "coegate_local_sequences", "slow") == 0:
                break
            time.sleep(0.02)
        self.assertEqual(metric(self.gw.port, "coegate_local_sequences", "slow"), 0)
        self.assertEqual(metric(self.gw.port, "coegate_local_cancelled_total", "slow"), before + 1)

    def test_queue_limit(self):
        """One decoding, one waiting: a third request is refused with 503 at once."""
        long = chat_body("Go on.", model="single", stream=True, max_tokens=3000)
        first = Stream(self.gw.port, long)
        next(first.events())
        waited = {}

        def wait_in_line():  # its response only starts once the first is done
            s = Stream(self.gw.port, chat_body("Then me.", model="single", stream=True, max_tokens=2))
            waited["events"] = s.all()
            s.close()

        second = threading.Thread(target=wait_in_line)
        second.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = request(self.gw.port, "GET", "/metrics").body.decode()
            if 'coegate_local_sequences{expert="single",state="queued"} 1' in text:
                break
            time.sleep(0.01)
        r = post(self.gw.port, chat_body("And me?", model="single", max_tokens=2))
        self.assertEqual(r.status, 503, r.body)
        self.assertIn("busy", r.json()["error"]["message"])
        first.close()
        # The waiting one runs once the first is gone.
        second.join(timeout=30)
        text, chunks = content_of_stream(waited["events"])
        self.assertIn(chunks[-1]["choices"][0]["finish_reason"], ("length", "stop"))

    def test_json_object(self):
        # response_format json_object: only tokens that continue a JSON object. With the
        # '}' byte token (<0x7D>, id 130 in forged vocabularies) pushed up, the object
        # closes at once, and then only an end token may follow.
        fmt = {"type": "json_object"}
        r = self.chat(max_tokens=20, temperature=0, response_format=fmt, logit_bias={"130": 100})
        choice = r.json()["choices"][0]
        self.assertEqual((json.loads(choice["message"]["content"]), choice["finish_reason"]), ({}, "stop"))
        # Free sampling: a complete answer is a JSON object, a cut one starts one; the
        # stream says the same as the whole answer.
        for seed in (1, 2, 3):
            r = self.chat(max_tokens=48, seed=seed, response_format=fmt)
            choice = r.json()["choices"][0]
            text = choice["message"]["content"]
            self.assertTrue(text.startswith("{"), text)
            if choice["finish_reason"] == "stop":
                self.assertIsInstance(json.loads(text), dict)
            streamed, _ = content_of_stream(self.chat(stream=True, max_tokens=48, seed=seed, response_format=fmt))
            self.assertEqual(streamed, text)

    def test_json_schema(self):
        # Only tokens that continue an object valid against the schema: every answer
        # that ends is one (keys of the schema, each once, the required ones, the
        # enum's values, an integer); the stream says the same as the whole answer.
        schema = {"type": "object", "additionalProperties": False, "required": ["kind", "ok"],
                  "properties": {"kind": {"type": "string", "enum": ["cat", "dog"]}, "ok": {"type": "boolean"},
                                 "n": {"type": "integer"}, "tags": {"type": "array", "items": {"enum": ["a"]},
                                                                    "maxItems": 2}}}
        fmt = {"type": "json_schema", "json_schema": {"name": "pet", "strict": True, "schema": schema}}
        complete = 0
        for seed in range(1, 7):
            r = self.chat(model="mixtral", max_tokens=300, seed=seed, response_format=fmt)
            self.assertEqual(r.status, 200, r.body)
            choice = r.json()["choices"][0]
            text = choice["message"]["content"]
            self.assertTrue(text.startswith("{"), text)
            if choice["finish_reason"] == "stop":
                complete += 1
                obj = json.loads(text)
                self.assertLessEqual(set(obj), {"kind", "ok", "n", "tags"})
                self.assertIn(obj["kind"], ("cat", "dog"))
                self.assertIsInstance(obj["ok"], bool)
                self.assertIsInstance(obj.get("n", 0), int)
                self.assertLessEqual(len(obj.get("tags", [])), 2)
            streamed, _ = content_of_stream(self.chat(model="mixtral", stream=True, max_tokens=300, seed=seed,
                                                      response_format=fmt))
            self.assertEqual(streamed, text)
        self.assertGreater(complete, 0)
        # A schema outside the subset: 400 naming the part at fault.
        schema = {"type": "object", "properties": {"age": {"type": "integer", "pattern": "^[0-9]+$"}}}
        r = post(self.gw.port, chat_body("hi", model="qwen", response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": schema}}))
        self.assertEqual(r.status, 400, r.body)
        err = r.json()["error"]
        self.assertEqual(err["param"], "response_format.json_schema.schema.properties.age")
        self.assertIn("'pattern' is outside", err["message"])

    def test_logit_bias(self):
        # +100 on one token makes greedy decoding repeat it; an id past the vocabulary
        # is refused, naming the field.
        r = self.chat(max_tokens=6, temperature=0, logit_bias={"300": 100})
        self.assertEqual(r.status, 200, r.body)
        text = r.json()["choices"][0]["message"]["content"]
        self.assertTrue(text and text == text[:len(text) // 6] * 6, text)
        r = post(self.gw.port, chat_body("hi", model="qwen", logit_bias={"99999999": 1}))
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["param"], "logit_bias")
        self.assertIn("outside the vocabulary", r.json()["error"]["message"])

    def test_bad_requests(self):
        r = post(self.gw.port, chat_body("hi", model="qwen", n=2))
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["param"], "n")
        self.assertIn("cannot serve 'n'", r.json()["error"]["message"])
        r = post(self.gw.port, chat_body("hi", model="qwen", top_k=-5))
        self.assertEqual(r.status, 400)
        r = post(self.gw.port, {"model": "qwen", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
        self.assertEqual(r.status, 400)
        r = post(self.gw.port, chat_body("hi", model="qwen", tools=[{"type": "function", "function": {"name": "f"}}]))
        self.assertEqual(r.status, 400)
        self.assertIn("tools", r.json()["error"]["message"])
        # Over the context: refused, whether counted before or after tokenizing.
        r = post(self.gw.port, chat_body("word " * 5000, model="qwen"))
        self.assertEqual(r.status, 400)
        self.assertIn("context", r.json()["error"]["message"])
        r = post(self.gw.port, chat_body("x" * 3000000, model="qwen"))
        self.assertEqual(r.status, 400)
        self.assertIn("context", r.json()["error"]["message"])


class LocalLifecycle(unittest.TestCase):
    """A local expert across a reload (a stream started before it finishes on the old
    model, new requests use the new one) and a shutdown whose grace runs out mid-stream."""

    def test_reload_then_bounded_shutdown(self):
        with tempfile.TemporaryDirectory() as d:
            slow = os.path.join(d, "slow.gguf")
            forge(slow, "--arch", "olmoe", "--layers", "6", "--embd", "256", "--heads", "4", "--kv-heads", "4",
                  "--ff", "256", "--experts", "8", "--experts-used", "2", "--context", "8192")
            config = {"server": {"shutdown_grace_ms": 300},
                      "experts": {"m": {"kind": "local", "path": slow, "context": 8192, "threads": 2}},
                      "routes": {"auto": {"default": "m"}}}
            with Gateway(config) as gw:
                s = Stream(gw.port, chat_body("hi", model="m", stream=True, max_tokens=60, seed=1))
                next(s.events())
                config["experts"]["n"] = {"kind": "local", "path": slow, "context": 8192, "threads": 1}
                gw.write_config(config)
                gw.signal(signal.SIGHUP)
                self.assertTrue(gw.wait_log(r"reloaded \(2 experts, 1 route\)"))
                self.assertEqual(post(gw.port, chat_body("hi", model="n", max_tokens=3)).status, 200)
                text, chunks = content_of_stream(s.all())
                s.close()
                self.assertIn(chunks[-1]["choices"][0]["finish_reason"], ("length", "stop"))
                # A stream that outlives the grace is cut, and the process still exits 0.
                s = Stream(gw.port, chat_body("hi", model="n", stream=True, max_tokens=6000))
                next(s.events())
                t0 = time.monotonic()
                self.assertEqual(gw.stop(), 0)
                self.assertLess(time.monotonic() - t0, 5)
                s.close()


class LocalConfig(unittest.TestCase):
    def check(self, config):
        return config_check(config)

    def test_missing_and_bad_models_are_named(self):
        with tempfile.TemporaryDirectory() as d:
            bad = os.path.join(d, "bad.gguf")
            with open(bad, "wb") as f:
                f.write(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
            for path, words in ((os.path.join(d, "none.gguf"), "none.gguf"), (bad, "bad.gguf")):
                r = self.check({"experts": {"x": {"kind": "local", "path": path}}, "routes": {"auto": {"default": "x"}}})
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("experts.x.path: cannot load the model", r.stderr)
                self.assertIn(words, r.stderr)

    def test_device(self):
        gpus = gpus_found()
        with tempfile.TemporaryDirectory() as d:
            model = os.path.join(d, "m.gguf")
            forge(model)
            for device in ("auto", "cpu"):
                r = self.check({"experts": {"x": {"kind": "local", "path": model, "device": device}},
                                "routes": {"auto": {"default": "x"}}})
                self.assertEqual(r.returncode, 0, r.stderr)
            r = self.check({"experts": {"x": {"kind": "local", "path": model, "device": "cuda"}},
                            "routes": {"auto": {"default": "x"}}})
            if gpus == 0:  # what starting would find, said by the check
                self.assertEqual(r.returncode, 1)
                self.assertIn("experts.x.device: cuda: no CUDA device is found", r.stderr)
            else:
                self.assertEqual(r.returncode, 0, r.stderr)
            r = self.check({"experts": {"x": {"kind": "local", "path": model, "device": "tpu"}},
                            "routes": {"auto": {"default": "x"}}})
            self.assertEqual(r.returncode, 1)
            self.assertIn('experts.x.device: must be "auto", "cpu" or "cuda", not "tpu"', r.stderr)

    def test_template_override_and_keys(self):
        with tempfile.TemporaryDirectory() as d:
            model = os.path.join(d, "m.gguf")
            forge(model)
            r = self.check({"experts": {"x": {"kind": "local", "path": model, "chat_template": "nonsense"}},
                            "routes": {"auto": {"default": "x"}}})
            self.assertEqual(r.returncode, 1)
            self.assertIn('chat_template "nonsense" is not one of chatml', r.stderr)
            r = self.check({"experts": {"x": {"kind": "local", "path": model, "chat_template": "llama3"}},
                            "routes": {"auto": {"default": "x"}}})
            self.assertEqual(r.returncode, 0, r.stderr)
            r = self.check({"experts": {"x": {"kind": "echo", "path": model}}, "routes": {"auto": {"default": "x"}}})
            self.assertIn("experts.x.path: only local experts take this key", r.stderr)


if __name__ == "__main__":
    unittest.main()
