"""Regression tests for defects found by attacking the gateway (issue 10): each failed
on the code before its fix. Loopback only, bounded counts and times."""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from harness import COEGATE, Gateway, Stream, Upstream, chat_body, post, remote, request, settled_metrics

ECHO = {"experts": {"e": {"kind": "echo"}}, "routes": {"auto": {"default": "e"}}}


class ConnectionLimit(unittest.TestCase):
    def test_accepts_again_after_a_burst_at_the_limit_times_out(self):
        # 25 connections against a limit of 20, one byte each, then silence: once they
        # time out the gateway must accept again (it used to stop accepting for good).
        config = dict(ECHO, server={"max_connections": 20, "connection_timeout_s": 1})
        with Gateway(config) as gw:
            socks = []
            for _ in range(25):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
                s.sendall(b"G")
                socks.append(s)
            time.sleep(2.5)
            try:
                for _ in range(3):
                    r = request(gw.port, "GET", "/health", timeout=5)
                    self.assertEqual(r.status, 200)
            finally:
                for s in socks:
                    s.close()


KEY = "sk-straddle-0123456789abcdefghijklmnopqrstu"  # 42 characters


class Slowloris(unittest.TestCase):
    """A client that trickles its request, a byte every 0.4 s (under the 3 s idle
    timeout), is cut once the total deadline for headers or body passes."""

    def trickle(self, gw, head, body=b""):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(head)
        t0 = time.monotonic()
        data = head[-1:] if not body else body
        try:
            for _ in range(40):  # at most 16 s
                s.sendall(data[:1])
                time.sleep(0.4)
                s.settimeout(0.01)
                try:
                    if s.recv(4096) == b"":
                        break
                except socket.timeout:
                    pass
                s.settimeout(5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            s.close()
        return time.monotonic() - t0

    def test_headers_and_body_deadlines(self):
        config = dict(ECHO, server={"connection_timeout_s": 3, "headers_timeout_s": 2, "body_timeout_s": 2})
        with Gateway(config) as gw:
            took = self.trickle(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            self.assertLess(took, 6, "slow headers were not cut")
            took = self.trickle(gw, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                                    b"application/json\r\nContent-Length: 1000\r\n\r\n", body=b"{")
            self.assertLess(took, 6, "a slow body was not cut")
            self.assertEqual(request(gw.port, "GET", "/health").status, 200)
            self.assertTrue(gw.wait_log("to send its request headers"))
            self.assertTrue(gw.wait_log("to send its request body"))


class KeyScrubbing(unittest.TestCase):
    """An upstream that echoes the gateway's key in its error message: the key must not
    reach the client or the log, in part either, even where the message is cut
    (at 200 characters) through the middle of the key."""

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        try:
            cls.gw = Gateway({"experts": {"up": remote(cls.up, api_key_env="COE_TEST_KEY", retries=0)},
                              "routes": {"auto": {"default": "up"}}}, env={"COE_TEST_KEY": KEY})
        except Exception:
            cls.up.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.up.close()

    def assertNoKeyPart(self, text):
        for i in range(len(KEY) - 7):
            self.assertNotIn(KEY[i:i + 8], text)

    def test_relayed_error_message(self):
        for offset in (0, 160, 180, 195, 199, 230):
            with self.subTest(offset=offset):
                r = post(self.gw.port, chat_body(f"fake: status=400 echo_key={offset}"))
                self.assertEqual(r.status, 400)
                text = r.body.decode()
                self.assertIn("rejected the request", text)
                self.assertNoKeyPart(text)
                if offset < 190:
                    self.assertIn("[redacted]", text)

    def test_error_event_in_a_stream(self):
        for offset in (180, 195):
            with self.subTest(offset=offset):
                s = Stream(self.gw.port, chat_body(f"fake: chunks=3 error_after=1 echo_key={offset}", stream=True))
                self.assertEqual(s.status, 200)
                events = "\n".join(data for _, data in s.all())
                s.close()
                self.assertIn("error", events)
                self.assertNoKeyPart(events)

    def test_log(self):
        post(self.gw.port, chat_body("fake: status=422 echo_key=185"))
        self.gw.wait_log("status=400")
        self.assertNoKeyPart(self.gw.logs())


class StreamDeadlines(unittest.TestCase):
    """Keep-alive comments are not an answer, and an answer that never ends is cut."""

    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        try:
            cls.gw = Gateway({"experts": {
                "pinger": remote(cls.up, retries=0, first_byte_timeout_ms=600),
                "endless": remote(cls.up, retries=0, stream_timeout_ms=1500)},
                "routes": {"auto": {"default": "pinger"}}})
        except Exception:
            cls.up.close()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.up.close()

    def test_pings_do_not_count_as_content(self):
        # 100 pings over 10 s, then an answer: the first-content deadline (0.6 s) ends it.
        t0 = time.monotonic()
        s = Stream(self.gw.port, chat_body("fake: pings=100", model="pinger", stream=True))
        self.assertEqual(s.status, 504)
        self.assertIn("did not answer within 600 ms", s.resp.read().decode())
        s.close()
        self.assertLess(time.monotonic() - t0, 5)

    def test_stream_deadline(self):
        t0 = time.monotonic()
        s = Stream(self.gw.port, chat_body("fake: chunks=1000000 delay_ms=50", model="endless", stream=True))
        self.assertEqual(s.status, 200)
        events = [data for _, data in s.all()]
        s.close()
        self.assertLess(time.monotonic() - t0, 6)
        self.assertIn("did not finish its answer within 1500 ms", events[-2])
        self.assertEqual(events[-1], "[DONE]")


class EventStreamForJson(unittest.TestCase):
    """An upstream that answers a non-streamed request with an event stream: a clean
    502 (or the fallback's answer), never a 200 whose body is not JSON, never a hang."""

    def test_502_then_fallback(self):
        with Upstream() as up:
            config = {"experts": {"sse": remote(up, retries=0), "backup": {"kind": "echo"},
                                  "sse2": remote(up, retries=0, fallbacks=["backup"])},
                      "routes": {"auto": {"default": "sse"}}}
            with Gateway(config) as gw:
                for text in ("fake: sse=1", "fake: sse=1 stall_after=1"):
                    with self.subTest(text=text):
                        t0 = time.monotonic()
                        r = post(gw.port, chat_body(text, model="sse"), timeout=10)
                        self.assertEqual(r.status, 502)
                        self.assertIn("event stream", r.json()["error"]["message"])
                        self.assertLess(time.monotonic() - t0, 5)
                r = post(gw.port, chat_body("fake: sse=1", model="sse2"))
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers["x-coegate-expert"], "backup")
                self.assertEqual(r.json()["choices"][0]["message"]["content"], "fake: sse=1")
                m = settled_metrics(gw.port, answered=3).body.decode()
                self.assertRegex(m, r"(?m)^coegate_inflight_requests 0$")


class OverLimitChunkedBody(unittest.TestCase):
    def test_refused_as_soon_as_the_limit_is_crossed(self):
        # A chunked body announces no length: the gateway must stop reading once it is
        # over max_body_bytes, not read (here up to 64 MB) to the end first.
        with Gateway(dict(ECHO, server={"max_body_bytes": 4096})) as gw:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            s.setblocking(False)
            chunk = b"1000\r\n" + b"a" * 4096 + b"\r\n"
            sent, answer, t0 = 0, b"", time.monotonic()
            while sent < 64 << 20 and time.monotonic() - t0 < 20:
                try:
                    sent += s.send(chunk)
                except BlockingIOError:
                    time.sleep(0.001)
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    data = s.recv(65536)
                    if not data:
                        break
                    answer += data
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    break
            s.close()
            self.assertLess(sent, 16 << 20, "the gateway read on past the limit")
            self.assertTrue(answer.startswith(b"HTTP/1.1 413"), answer[:80])
            self.assertTrue(gw.wait_log(r"status=413"))


class SlowStreamReader(unittest.TestCase):
    """A client that reads nothing for 2 s while the expert streams ~30 MB, against a
    256 KiB bound: a remote expert is paused until the client catches up and every
    event arrives; a backend that cannot pause (echo) is stopped at the bound and the
    stream ends with an error event and a non-200 log line. Never bytes lost while the
    stream ends with [DONE] as if complete. A local expert stops stepping its sequence
    while the client is behind (8.5 MB of tokens with their top-20 logprobs, against a
    64 KiB bound; without the pause it ends with 507 after what the sockets hold)."""

    def slow_read(self, gw, body):
        s = Stream(gw.port, body, timeout=30)
        self.assertEqual(s.status, 200)
        time.sleep(2)
        events = [data for _, data in s.all()]
        s.close()
        return events

    def test_backpressure_then_bound(self):
        with Upstream() as up:
            config = {"server": {"stream_buffer_bytes": 262144},
                      "experts": {"up": remote(up, retries=0, chunk_timeout_ms=1000), "echo": {"kind": "echo"}},
                      "routes": {"auto": {"default": "up"}}}
            with Gateway(config) as gw:
                events = self.slow_read(gw, chat_body("fake: chunks=150000", stream=True))
                self.assertEqual(events[-1], "[DONE]")
                self.assertEqual(len(events), 150001)
                self.assertNotIn("error", events[-2])
                self.assertTrue(gw.wait_log(r"expert=up status=200"), gw.logs()[-2000:])
                events = self.slow_read(gw, chat_body("w " * 120000, model="echo", stream=True))
                self.assertEqual(events[-1], "[DONE]")
                self.assertIn("client_too_slow", events[-2])
                self.assertLess(len(events), 120000)
                self.assertTrue(gw.wait_log(r"status=507"), gw.logs()[-2000:])

    def test_local_expert_waits_for_the_client(self):
        with tempfile.TemporaryDirectory(prefix="coegate-slow-") as d:
            model = os.path.join(d, "tiny.gguf")
            # Seed 1: greedy decoding of this model does not reach an end token in 6000.
            r = subprocess.run([COEGATE, "forge", "-o", model, "--context", "8192", "--seed", "1"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            config = {"server": {"stream_buffer_bytes": 65536},
                      "experts": {"tiny": {"kind": "local", "path": model, "context": 8192, "threads": 1}},
                      "routes": {"auto": {"default": "tiny"}}}
            with Gateway(config) as gw:
                events = self.slow_read(gw, chat_body("hello", model="tiny", stream=True, max_tokens=6000,
                                                      temperature=0, logprobs=True, top_logprobs=20))
                self.assertEqual(events[-1], "[DONE]")
                self.assertNotIn("error", events[-2])
                # Every token arrives, with its logprobs (a paused call may put several in
                # one event), far more than the sockets hold (4 MB) against a 64 KiB bound.
                tokens = sum(len((json.loads(e)["choices"][0].get("logprobs") or {}).get("content") or [])
                             for e in events[:-1] if json.loads(e).get("choices"))
                self.assertEqual(tokens, 6000)
                self.assertGreater(sum(map(len, events)), 6 << 20)
                self.assertTrue(gw.wait_log(r"expert=tiny status=200 .*completion_tokens=6000"), gw.logs()[-2000:])


class CircuitBreaker(unittest.TestCase):
    def test_dead_upstream_is_not_hammered(self):
        # 3 failed attempts in a row open the circuit for 1 s: then requests skip the
        # expert (no upstream traffic, no retries) to its fallback or a 503; after the
        # cooldown one trial goes through, and a success closes the circuit.
        with Upstream() as up:
            config = {"experts": {
                "dead": remote(up, retries=2, breaker_failures=3, breaker_cooldown_ms=1000),
                "guarded": remote(up, retries=0, breaker_failures=3, breaker_cooldown_ms=1000, fallbacks=["spare"]),
                "spare": {"kind": "echo"}},
                "routes": {"auto": {"default": "dead"}}}
            with Gateway(config) as gw:
                r = post(gw.port, chat_body("fake: key=dead status=500", model="dead"))
                self.assertEqual(r.status, 502)
                self.assertEqual(up.key("dead")["requests"], 3)  # the first try and 2 retries
                for _ in range(5):
                    r = post(gw.port, chat_body("fake: key=dead status=500", model="dead"))
                    self.assertEqual(r.status, 503)
                    self.assertIn("circuit is open", r.json()["error"]["message"])
                self.assertEqual(up.key("dead")["requests"], 3)
                m = request(gw.port, "GET", "/metrics").body.decode()
                self.assertIn('coegate_expert_circuit_open{expert="dead"} 1', m)
                self.assertIn('coegate_expert_circuit_opened_total{expert="dead"} 1', m)
                self.assertIn('coegate_expert_short_circuited_total{expert="dead"} 5', m)
                time.sleep(1.2)
                # The trial fails: open again at once, without retries.
                r = post(gw.port, chat_body("fake: key=dead status=500", model="dead"))
                self.assertEqual(r.status, 502)
                self.assertEqual(up.key("dead")["requests"], 4)
                time.sleep(1.2)
                # The trial succeeds: closed.
                self.assertEqual(post(gw.port, chat_body("fake: key=dead", model="dead")).status, 200)
                self.assertEqual(post(gw.port, chat_body("fake: key=dead", model="dead")).status, 200)
                m = request(gw.port, "GET", "/metrics").body.decode()
                self.assertIn('coegate_expert_circuit_open{expert="dead"} 0', m)
                # An open circuit sends requests to the fallback at once.
                for _ in range(3):
                    post(gw.port, chat_body("fake: key=g status=500", model="guarded"))
                r = post(gw.port, chat_body("fake: key=g status=500", model="guarded"))
                self.assertEqual(r.status, 200)
                self.assertEqual(r.headers["x-coegate-expert"], "spare")
                self.assertEqual(up.key("g")["requests"], 3)


class ReloadKeepsLoadedExperts(unittest.TestCase):
    """A reload that leaves a local expert unchanged keeps it loaded: the file is not
    mapped again and no thread is started; a changed expert is loaded anew, and the
    old one stopped without holding up anyone."""

    def mappings(self, gw, path):
        with open(f"/proc/{gw.proc.pid}/maps") as f:
            return sorted(line.split()[0] for line in f if line.rstrip().endswith(path))

    def test_reload(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.gguf")
            r = subprocess.run([COEGATE, "forge", "-o", path], capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            config = {"experts": {"m": {"kind": "local", "path": path, "threads": 1},
                                  "n": {"kind": "local", "path": path, "threads": 1}},
                      "routes": {"auto": {"default": "m"}}}
            with Gateway(config) as gw:
                before = self.mappings(gw, path)
                self.assertEqual(len(before), 2)  # one per expert
                threads = len(os.listdir(f"/proc/{gw.proc.pid}/task"))
                config["routes"]["auto"]["default"] = "n"  # a change elsewhere
                gw.write_config(config)
                gw.signal(signal.SIGHUP)
                self.assertTrue(gw.wait_log(r"reloaded \(2 experts"))
                self.assertTrue(gw.wait_log(r"local expert 'm': unchanged, kept loaded"))
                self.assertEqual(self.mappings(gw, path), before)
                self.assertEqual(len(os.listdir(f"/proc/{gw.proc.pid}/task")), threads)
                self.assertEqual(post(gw.port, chat_body("hi", model="m", max_tokens=2)).status, 200)
                # A changed expert is loaded anew (context is one of its options).
                config["experts"]["n"]["context"] = 512
                gw.write_config(config)
                gw.signal(signal.SIGHUP)
                self.assertTrue(gw.wait_log(r"reloaded \(2 experts.*\n(.|\n)*reloaded \(2 experts"))
                self.assertEqual(post(gw.port, chat_body("hi", model="n", max_tokens=2)).status, 200)
                deadline = time.monotonic() + 5
                while len(self.mappings(gw, path)) != 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.assertEqual(len(self.mappings(gw, path)), 2)


class LocalOverContext(unittest.TestCase):
    """A prompt over a local expert's context, counted in tokens (past the byte-size
    pre-check), goes to the expert's fallbacks like every other thing it cannot serve;
    without fallbacks, 400 with param."""

    def test_fallback_then_param(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "m.gguf")
            r = subprocess.run([COEGATE, "forge", "-o", path], capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            config = {"experts": {"small": {"kind": "local", "path": path, "context": 64, "threads": 1,
                                            "fallbacks": ["big"]},
                                  "alone": {"kind": "local", "path": path, "context": 64, "threads": 1},
                                  "big": {"kind": "local", "path": path, "context": 1024, "threads": 1}},
                      "routes": {"auto": {"default": "small"}}}
            prompt = "the water " * 40  # about 80 tokens in 400 bytes
            with Gateway(config) as gw:
                r = post(gw.port, chat_body(prompt, model="small", max_tokens=2))
                self.assertEqual(r.status, 200, r.body)
                self.assertEqual(r.headers["x-coegate-expert"], "big")
                r = post(gw.port, chat_body(prompt, model="alone", max_tokens=2))
                self.assertEqual(r.status, 400, r.body)
                self.assertIn("context", r.json()["error"]["message"])
                self.assertEqual(r.json()["error"]["param"], "messages")
                r = post(gw.port, chat_body("hi", model="alone", n=2))
                self.assertEqual(r.json()["error"]["param"], "n")


if __name__ == "__main__":
    unittest.main()
