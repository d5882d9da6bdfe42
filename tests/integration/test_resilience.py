"""Upstream failures: retries before the first byte, fallbacks, Retry-After,
timeouts, broken streams, and clients that hang up."""

import json
import time
import unittest

from harness import (Gateway, Stream, Upstream, chat_body, content_of_stream, post, raw_stream_then_hangup,
                     remote, request, settled_metrics)


class Resilience(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        # These experts fail on purpose, test after test: circuit breakers (tested in
        # test_hardening.py) would open and hide the retries and fallbacks tested here.
        nb = {"breaker_failures": 0}
        cls.gw = Gateway({
            "experts": {
                "primary": remote(cls.up, model="primary-model", retries=2, fallbacks=["backup"],
                                  max_retry_after_ms=2000, **nb),
                "backup": remote(cls.up, model="backup-model", retries=0, **nb),
                "lonely": remote(cls.up, retries=1, **nb),
                "slow": remote(cls.up, retries=0, first_byte_timeout_ms=400, chunk_timeout_ms=400, **nb),
                "gone": remote(cls.up, base_url="http://127.0.0.1:9/v1", retries=1, fallbacks=["backup"], **nb),
            },
            "routes": {"auto": {"default": "primary"}},
        })

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.up.close()

    def models_seen(self, key):
        return json.loads(self.up.key(key)["last_body"])["model"]

    def test_retry_then_success(self):
        r = post(self.gw.port, chat_body("fake: key=r1 status=503 fail_times=2"))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-coegate-expert"], "primary")
        self.assertEqual(self.up.key("r1")["requests"], 3)

    def test_retry_then_fallback(self):
        # primary fails 1 + 2 retries; backup (same fake, same directive) then fails too
        # unless the failures run out: fail_times=3 lets the fourth request through.
        r = post(self.gw.port, chat_body("fake: key=r2 status=502 fail_times=3"))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-coegate-expert"], "backup")
        self.assertEqual(r.json()["model"], "backup")
        self.assertEqual(self.up.key("r2")["requests"], 4)
        self.assertEqual(self.models_seen("r2"), "backup-model")

    def test_stream_retry_then_fallback(self):
        s = Stream(self.gw.port, chat_body("fake: key=r3 status=500 fail_times=3 chunks=4", stream=True))
        self.assertEqual(s.status, 200)
        self.assertEqual(s.headers["x-coegate-expert"], "backup")
        text, _ = content_of_stream(s.all())
        s.close()
        self.assertEqual(text, "Hello w\u00f6rld \"quoted\" tab\t")

    def test_all_fail(self):
        r = post(self.gw.port, chat_body("fake: key=r4 status=503", model="lonely"))
        self.assertEqual(r.status, 502)
        self.assertIn("lonely", r.json()["error"]["message"])
        self.assertEqual(self.up.key("r4")["requests"], 2)
        r = post(self.gw.port, chat_body("fake: key=r5 status=429", model="lonely"))
        self.assertEqual(r.status, 429)

    def test_failures_keep_their_reason(self):
        # The upstream's message reaches the client; when the fallback fails too, the
        # chosen expert's reason comes first, then the fallback's, each named.
        r = post(self.gw.port, chat_body("fake: key=why1 status=500", model="lonely"))
        self.assertEqual(r.status, 502)
        self.assertEqual(r.json()["error"]["message"], "expert 'lonely' failed (HTTP 500): fake failure 500")
        r = post(self.gw.port, chat_body("fake: key=why2 status=503"))
        self.assertEqual(r.status, 502)
        self.assertEqual(r.json()["error"]["message"], "expert 'primary' failed (HTTP 503): fake failure 503; "
                         "then fallback expert 'backup' failed (HTTP 503): fake failure 503")
        # Not masked by the fallback's unrelated error.
        r = post(self.gw.port, chat_body("fake: key=why3 status=503", model="gone"))
        self.assertEqual(r.status, 502)
        msg = r.json()["error"]["message"]
        self.assertTrue(msg.startswith("expert 'gone' could not be reached: "), msg)
        self.assertTrue(msg.endswith("; then fallback expert 'backup' failed (HTTP 503): fake failure 503"), msg)
        # A 5xx whose body says the request is invalid is the request's fault: 400 with
        # the upstream's reason, no retry, no fallback.
        r = post(self.gw.port, chat_body("fake: key=why4 status=500 error_type=invalid_request_error"))
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["message"], "expert 'primary' rejected the request: fake failure 500")
        self.assertEqual(self.up.key("why4")["requests"], 1)

    def test_retry_after_is_honoured(self):
        t0 = time.monotonic()
        r = post(self.gw.port, chat_body("fake: key=ra status=429 retry_after=1 fail_times=1"))
        elapsed = time.monotonic() - t0
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["x-coegate-expert"], "primary")
        self.assertGreaterEqual(elapsed, 0.95)
        # A Retry-After beyond max_retry_after_ms goes to the fallback at once.
        t0 = time.monotonic()
        r = post(self.gw.port, chat_body("fake: key=ra2 status=429 retry_after=30 fail_times=1"))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["x-coegate-expert"], "backup")
        self.assertLess(time.monotonic() - t0, 5)

    def test_unreachable_expert_falls_back(self):
        r = post(self.gw.port, chat_body("fake: key=gone", model="gone"))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["x-coegate-expert"], "backup")

    def test_first_byte_timeout_is_504(self):
        r = post(self.gw.port, chat_body("fake: key=fb first_delay_ms=3000", model="slow"))
        self.assertEqual(r.status, 504)
        self.assertIn("did not answer within 400 ms", r.json()["error"]["message"])

    def test_stall_mid_stream_becomes_error_event(self):
        s = Stream(self.gw.port, chat_body("fake: key=stall chunks=10 stall_after=2", model="slow", stream=True))
        self.assertEqual(s.status, 200)
        events = s.all()
        s.close()
        data = [d for _, d in events]
        self.assertEqual(data[-1], "[DONE]")
        err = json.loads(data[-2])["error"]
        self.assertIn("stalled", err["message"])
        self.assertEqual(err["type"], "timeout_error")
        text, _ = content_of_stream([e for e in events if "error" not in e[1]])
        self.assertEqual(text, "Hello w\u00f6rld")

    def test_dropped_connection_mid_stream(self):
        s = Stream(self.gw.port, chat_body("fake: key=drop chunks=10 drop_after=3", model="lonely", stream=True))
        data = [d for _, d in s.all()]
        s.close()
        self.assertEqual(data[-1], "[DONE]")
        self.assertIn("error", json.loads(data[-2]))
        self.assertEqual(len(data), 3 + 2)

    def test_malformed_sse(self):
        # Mid-stream: an error event after what was already sent.
        s = Stream(self.gw.port, chat_body("fake: key=bad chunks=5 malformed_after=2", model="backup", stream=True))
        data = [d for _, d in s.all()]
        s.close()
        self.assertIn("malformed", json.loads(data[-2])["error"]["message"])
        self.assertEqual(data[-1], "[DONE]")
        # Before anything was sent: a failure like any other, here retried once and then 502.
        r = Stream(self.gw.port, chat_body("fake: key=bad2 malformed_after=0", model="lonely", stream=True))
        self.assertEqual(r.status, 502)
        r.close()
        self.assertEqual(self.up.key("bad2")["requests"], 2)

    def test_client_disconnect_closes_upstream(self):
        for key, directive in (("dc1", "chunks=200 delay_ms=50"), ("dc2", "chunks=5 stall_after=2")):
            body = chat_body(f"fake: key={key} {directive}", stream=True, model="backup")
            hung_up, seen = raw_stream_then_hangup(self.gw.port, body, 2)
            self.assertIn(b"200 OK", seen)
            deadline = time.monotonic() + 3
            closed = 0
            while time.monotonic() < deadline and not closed:
                closed = self.up.key(key)["closed_at"]
                time.sleep(0.02)
            self.assertTrue(closed, f"{key}: the upstream never saw the connection close")
            self.assertLess(closed - hung_up, 1.0, key)
        self.assertTrue(self.gw.wait_log(r"status=499"))
        # The gateway is still healthy afterwards.
        self.assertEqual(post(self.gw.port, chat_body("fake: key=after", model="backup")).status, 200)


class Metrics(unittest.TestCase):
    def test_counts_requests_retries_fallbacks_and_tokens(self):
        key = "sk-metrics-secret-0000"
        with Upstream() as up, Gateway({
                "experts": {"a": remote(up, retries=1, fallbacks=["b"], api_key_env="COE_TEST_K"),
                            "b": remote(up, retries=0)},
                "routes": {"auto": {"default": "a"}}}, env={"COE_TEST_K": key}) as gw:
            # a fails twice (first try and its one retry), then b answers
            self.assertEqual(post(gw.port, chat_body("fake: key=m1 status=503 fail_times=2 chunks=3")).status, 200)
            self.assertEqual(post(gw.port, chat_body("fake: key=m2 chunks=4", model="b")).status, 200)
            self.assertEqual(post(gw.port, chat_body("x", model="nobody")).status, 404)
            m = settled_metrics(gw.port, answered=3)
            self.assertEqual(m.status, 200)
            self.assertTrue(m.headers["content-type"].startswith("text/plain"))
            text = m.body.decode()
            lines = set(text.splitlines())
            for expected in (
                    'coegate_requests_total{endpoint="chat_completions",status="200"} 2',
                    'coegate_requests_total{endpoint="chat_completions",status="404"} 1',
                    'coegate_request_duration_seconds_count{endpoint="chat_completions"} 3',
                    'coegate_inflight_requests 0',
                    'coegate_expert_failed_total{expert="a"} 2',
                    'coegate_expert_retried_total{expert="a"} 1',
                    'coegate_expert_fell_back_total{expert="a"} 1',
                    'coegate_expert_answered_total{expert="a"} 0',
                    'coegate_expert_answered_total{expert="b"} 2',
                    'coegate_expert_completion_tokens_total{expert="b"} 7',
                    'coegate_expert_prompt_tokens_total{expert="b"} 10'):
                self.assertIn(expected, lines)
            self.assertNotIn(key, text)
            self.assertEqual(request(gw.port, "POST", "/metrics", b"").status, 405)


if __name__ == "__main__":
    unittest.main()
