"""Process lifetime: reload on SIGHUP, graceful stop on SIGTERM, and one coegate
serving as the remote expert of another."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from harness import COEGATE, Gateway, Stream, Upstream, chat_body, content_of_stream, post, remote, request


def model_ids(port):
    return {m["id"] for m in request(port, "GET", "/v1/models").json()["data"]}


class Reload(unittest.TestCase):
    def test_sighup_good_then_bad_file(self):
        config = {"experts": {"a": {"kind": "echo"}}, "routes": {"auto": {"default": "a"}}}
        with Gateway(config) as gw:
            self.assertEqual(model_ids(gw.port), {"auto", "a"})
            # A request in flight across the reload keeps its configuration.
            s = Stream(gw.port, chat_body("one two three four five six", stream=True, model="a"))
            config["experts"]["b"] = {"kind": "echo"}
            config["routes"]["auto"]["default"] = "b"
            gw.write_config(config)
            gw.signal(signal.SIGHUP)
            self.assertTrue(gw.wait_log(r"reloaded \(2 experts, 1 route\)"))
            self.assertEqual(model_ids(gw.port), {"auto", "a", "b"})
            self.assertEqual(post(gw.port, chat_body("hi")).headers["x-coegate-expert"], "b")
            text, _ = content_of_stream(s.all())
            s.close()
            self.assertEqual(text, "one two three four five six")

            # A bad file is reported, naming the field, and the running config stays.
            gw.write_config('{"experts": {"a": {"kind": "echo", "delay": 5}}}')
            gw.signal(signal.SIGHUP)
            self.assertTrue(gw.wait_log(r"experts\.a\.delay: unknown key"))
            self.assertTrue(gw.wait_log(r"reload refused"))
            self.assertEqual(model_ids(gw.port), {"auto", "a", "b"})
            gw.write_config("{ not json")
            gw.signal(signal.SIGHUP)
            self.assertTrue(gw.wait_log(r"invalid JSON near byte"))
            self.assertEqual(post(gw.port, chat_body("still here")).status, 200)
            self.assertEqual(gw.stop(), 0)


class Shutdown(unittest.TestCase):
    def test_sigterm_lets_the_stream_finish(self):
        with Upstream() as up, Gateway({"experts": {"up": remote(up)}, "routes": {"auto": {"default": "up"}}}) as gw:
            s = Stream(gw.port, chat_body("fake: key=term chunks=8 delay_ms=150", stream=True))
            first = next(s.events())
            gw.signal(signal.SIGTERM)
            time.sleep(0.2)
            # No new connections once stopping.
            with self.assertRaises(OSError):
                c = socket.create_connection(("127.0.0.1", gw.port), timeout=1)
                c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                if not c.recv(100):
                    raise ConnectionResetError("closed without an answer")
            rest = list(s.events())
            s.close()
            text, chunks = content_of_stream([first] + rest)
            self.assertEqual(rest[-1][1], "[DONE]")
            self.assertEqual(len(chunks), 8)
            self.assertEqual(gw.proc.wait(timeout=10), 0)
            self.assertIn("stopped", gw.logs())

    def test_sigterm_grace_is_bounded(self):
        with Upstream() as up, Gateway({"server": {"shutdown_grace_ms": 300},
                                        "experts": {"up": remote(up)}}) as gw:
            s = Stream(gw.port, chat_body("fake: key=long chunks=5 stall_after=1", stream=True, model="up"))
            next(s.events())
            t0 = time.monotonic()
            self.assertEqual(gw.stop(), 0)
            self.assertLess(time.monotonic() - t0, 5)
            s.close()
            self.assertIn("shutdown grace of 300 ms is over", gw.logs())


class Chain(unittest.TestCase):
    def test_coegate_behind_coegate(self):
        with Upstream() as up, \
                Gateway({"experts": {"inner": remote(up, model="deep-model")},
                         "routes": {"auto": {"default": "inner"}}}) as inner, \
                Gateway({"experts": {"outer": remote(inner, model="auto")},
                         "routes": {"auto": {"default": "outer"}}}) as outer:
            r = post(outer.port, chat_body("fake: key=chain chunks=5"))
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["x-coegate-expert"], "outer")
            direct = post(up.port, chat_body("fake: key=chain0 chunks=5")).json()
            self.assertEqual(r.json()["choices"][0]["message"]["content"],
                             direct["choices"][0]["message"]["content"])
            s = Stream(outer.port, chat_body("fake: key=chain2 chunks=7", stream=True,
                                             stream_options={"include_usage": True}))
            events = s.all()
            s.close()
            text, chunks = content_of_stream(events)
            self.assertEqual(len([c for c in chunks if c["choices"]]), 7)
            self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 7)
            self.assertEqual(events[-1][1], "[DONE]")
            # An inner failure travels out as an upstream failure.
            r = post(outer.port, chat_body("fake: key=chain3 status=400"))
            self.assertEqual(r.status, 400)


class CommandLine(unittest.TestCase):
    def run_coegate(self, *args, input=None):
        return subprocess.run([COEGATE, *args], capture_output=True, text=True, timeout=10, input=input)

    def test_help_for_every_verb(self):
        for args in (["--help"], ["serve", "--help"], ["config", "--help"], ["forge", "--help"]):
            r = self.run_coegate(*args)
            self.assertEqual(r.returncode, 0, args)
            self.assertIn("usage: coegate", r.stdout)
        r = self.run_coegate("frobnicate")
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown verb 'frobnicate'", r.stderr)
        # Each verb of a command has its own help, with its own options only.
        for verb, own, other in (("train", "--epochs", "--max-active"), ("eval", "--max-active", "--epochs")):
            r = self.run_coegate("router", verb, "--help")
            self.assertEqual(r.returncode, 0, verb)
            self.assertTrue(r.stdout.startswith(f"usage: coegate router {verb} "), r.stdout)
            self.assertIn(own, r.stdout)
            self.assertNotIn(other, r.stdout)
        r = self.run_coegate("router", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("coegate router train --help", r.stdout)

    def test_demo_configuration(self):
        # What scripts/demo.sh does: train the demo router beside the demo config, check
        # it. (Serving it, with the real experts of models/, is test_experts.py.)
        with tempfile.TemporaryDirectory() as d:
            with open("configs/demo.json") as f:
                demo = json.load(f)
            for e in demo["experts"].values():
                e["path"] = os.path.abspath(os.path.join("configs", e["path"]))
            for g in demo["fusions"].values():
                g["selector"] = os.path.abspath(os.path.join("configs", g["selector"]))
            config = os.path.join(d, "demo.json")
            with open(config, "w") as f:
                json.dump(demo, f)
            r = self.run_coegate("router", "train", "--data", "configs/demo-queries.jsonl", "--out",
                                 os.path.join(d, "demo-router.gguf"), "--buckets", "65536", "--dim", "32")
            self.assertEqual(r.returncode, 0, r.stderr)
            r = self.run_coegate("config", "check", config)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("ok (5 experts, 1 fusion group, 1 route)", r.stdout)

    def test_config_check(self):
        r = self.run_coegate("config", "check", "configs/remote-example.json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ok (4 experts, 2 routes)", r.stdout)
        self.assertIn("warning:", r.stderr)  # OPENAI_API_KEY is not set here
        r = self.run_coegate("config", "check", "tests/integration/bad-config.json")
        self.assertEqual(r.returncode, 1)
        self.assertIn("tests/integration/bad-config.json: experts.remote.base_url: must start with http://", r.stderr)
        self.assertIn("tests/integration/bad-config.json: routes.auto.default: no expert named \"missing\"", r.stderr)

    def test_model_info(self):
        r = self.run_coegate("model", "info", "tests/fuzz/corpus/gguf/small")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("architecture  llama", r.stdout)
        self.assertIn("Q8_0: 1 tensors", r.stdout)
        with open("tests/fuzz/corpus/gguf/small", "rb") as f:
            data = f.read()
        with tempfile.NamedTemporaryFile(suffix=".gguf") as cut:
            cut.write(data[:200])
            cut.flush()
            r = self.run_coegate("model", "info", cut.name)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"\.gguf: byte \d+: .*runs past the end of the file")

    def test_model_tokenize(self):
        with tempfile.TemporaryDirectory() as d:
            model = os.path.join(d, "m.gguf")
            self.assertEqual(self.run_coegate("forge", "-o", model).returncode, 0)
            # the forged vocabulary: <s> is 1, <|im_start|> 3, "▁the" a word piece
            r = self.run_coegate("model", "tokenize", model, input="the<|im_start|>")
            self.assertEqual(r.returncode, 0, r.stderr)
            plain = [int(t) for t in r.stdout.split()]
            r = self.run_coegate("model", "tokenize", "--prompt", model, input="the<|im_start|>")
            prompt = [int(t) for t in r.stdout.split()]
            self.assertEqual(prompt[0], 1)
            self.assertEqual(prompt[-1], 3)
            self.assertNotIn(3, plain)
            self.assertEqual(plain[0], prompt[1])
        r = self.run_coegate("model", "tokenize", "tests/integration/bad-config.json", input="x")
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad-config.json", r.stderr)

    def test_bad_config_does_not_start(self):
        r = self.run_coegate("serve", "--config", "tests/integration/bad-config.json", "--port", "0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not started", r.stderr)

    def test_port_in_use(self):
        with Gateway({"experts": {"a": {"kind": "echo"}}}) as gw:
            r = self.run_coegate("serve", "--port", str(gw.port))
            self.assertEqual(r.returncode, 1)
            self.assertIn("cannot listen", r.stderr)


if __name__ == "__main__":
    unittest.main()
