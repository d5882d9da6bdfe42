"""The OpenAI-compatible API through the real binary: pass-through, streaming,
usage, errors, limits and secrets."""

import json
import threading
import unittest

from harness import (Gateway, Stream, Upstream, chat_body, content_of_stream, post, remote, request)

KEY = "sk-test-NEVER-IN-LOGS-0123456789"


class Api(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = Upstream()
        cls.gw = Gateway({
            "server": {"max_body_bytes": 4096, "api_keys_env": "COE_TEST_CLIENT_KEYS", "access_log": True},
            "experts": {
                "fake": remote(cls.up, model="upstream-model", api_key_env="COE_TEST_UPSTREAM_KEY",
                               headers={"X-Team": "integration"}),
                "capped": remote(cls.up, max_tokens=16),
                "newer": remote(cls.up, max_tokens_field="max_completion_tokens",
                                capabilities=["tools", "response_format", "n", "images"]),
                "narrow": remote(cls.up, max_concurrency=1, retries=0),
                "echo": {"kind": "echo"},
            },
            "routes": {"auto": {"default": "fake"}},
        }, env={"COE_TEST_CLIENT_KEYS": "client-key-1,client-key-2", "COE_TEST_UPSTREAM_KEY": KEY},
            args=("--log-level", "debug"))
        cls.auth = {"Authorization": "Bearer client-key-2"}

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.up.close()

    def post(self, body, path="/v1/chat/completions"):
        return post(self.gw.port, body, path, headers=self.auth)

    def stream(self, body, path="/v1/chat/completions"):
        return Stream(self.gw.port, body, path, headers=self.auth)

    def test_non_stream_passthrough_is_identical(self):
        body = chat_body("fake: key=ns chunks=7")
        direct = post(self.up.port, body)
        via = self.post(body)
        self.assertEqual(via.status, 200)
        d, v = direct.json(), via.json()
        self.assertEqual(v["object"], "chat.completion")
        self.assertEqual(v["choices"][0]["message"]["content"], d["choices"][0]["message"]["content"])
        self.assertIn("\t", v["choices"][0]["message"]["content"])
        self.assertEqual(v["choices"][0]["finish_reason"], "stop")
        self.assertEqual(v["usage"], {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12})
        self.assertEqual(v["model"], "fake")
        self.assertEqual(via.headers["x-coegate-expert"], "fake")
        self.assertTrue(via.headers["x-request-id"])
        self.assertTrue(v["id"].startswith("chatcmpl-"))
        # The upstream got its own model name, and the configured headers.
        sent = json.loads(self.up.key("ns")["last_body"])
        self.assertEqual(sent["model"], "upstream-model")
        headers = self.up.key("ns")["last_headers"]
        self.assertEqual(headers["X-Team"], "integration")
        self.assertEqual(headers["Content-Type"], "application/json")
        # The client's own headers (its key above all) are not passed on.
        self.assertNotIn("client-key-2", json.dumps(headers))

    def test_stream_passthrough_is_identical_and_unbuffered(self):
        body = chat_body("fake: key=st chunks=6 delay_ms=300", stream=True)
        s = Stream(self.up.port, body)
        direct_text, direct_chunks = content_of_stream(s.all())
        s.close()
        s = self.stream(body)
        self.assertEqual(s.status, 200)
        self.assertEqual(s.headers["content-type"], "text/event-stream")
        self.assertEqual(s.headers["x-coegate-expert"], "fake")
        events = s.all()
        s.close()
        self.assertEqual(events[-1][1], "[DONE]")
        text, chunks = content_of_stream(events)
        self.assertEqual(text, direct_text)
        self.assertEqual(len(chunks), len(direct_chunks))
        first = chunks[0]
        self.assertEqual(first["object"], "chat.completion.chunk")
        self.assertEqual(first["model"], "fake")
        self.assertEqual(first["choices"][0]["delta"]["role"], "assistant")
        self.assertTrue(all(c["id"] == first["id"] and c["created"] == first["created"] for c in chunks))
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        self.assertNotIn("usage", first)  # only with include_usage
        # Each delta reaches the client before the upstream produces the next one
        # (300 ms apart): nothing is held back.
        times = [t for t, d in events if d != "[DONE]"]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(g > 0.15 for g in gaps), gaps)

    def test_include_usage(self):
        s = self.stream(chat_body("fake: key=usage chunks=4", stream=True, stream_options={"include_usage": True}))
        events = s.all()
        s.close()
        _, chunks = content_of_stream(events)
        self.assertTrue(all("usage" in c for c in chunks))
        self.assertTrue(all(c["usage"] is None for c in chunks[:-1]))
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
        # usage is always asked of the upstream on streams, for the access log
        sent = json.loads(self.up.key("usage")["last_body"])
        self.assertTrue(sent["stream_options"]["include_usage"])

    def test_completions_endpoint(self):
        r = self.post({"model": "fake", "prompt": "fake: key=cmpl chunks=2"}, "/v1/completions")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["object"], "text_completion")
        self.assertEqual(r.json()["choices"][0]["text"], "Hello w\u00f6rld")
        s = self.stream({"model": "fake", "prompt": "fake: key=cmpl2 chunks=3", "stream": True}, "/v1/completions")
        text, chunks = content_of_stream(s.all())
        s.close()
        self.assertEqual(text, "Hello w\u00f6rld \"quoted\"")
        self.assertEqual(chunks[0]["object"], "text_completion")

    def test_models_and_health(self):
        r = request(self.gw.port, "GET", "/v1/models", headers=self.auth)
        self.assertEqual(r.status, 200)
        ids = {m["id"] for m in r.json()["data"]}
        self.assertEqual(ids, {"auto", "fake", "capped", "newer", "narrow", "echo"})
        self.assertEqual(r.json()["object"], "list")
        listed = {m["id"]: m for m in r.json()["data"]}
        for name in ("fake", "auto"):  # one entry: what the list says of it
            one = request(self.gw.port, "GET", "/v1/models/" + name, headers=self.auth)
            self.assertEqual(one.status, 200)
            self.assertEqual({**one.json(), "created": 0}, {**listed[name], "created": 0})
        self.assertError(request(self.gw.port, "GET", "/v1/models/nobody", headers=self.auth), 404,
                         param="model", code="model_not_found", text="nobody")
        self.assertError(request(self.gw.port, "GET", "/v1/models/fake"), 401)
        self.assertError(request(self.gw.port, "POST", "/v1/models/fake", body={}, headers=self.auth), 405)
        h = request(self.gw.port, "GET", "/health")  # no key needed
        self.assertEqual((h.status, h.json()), (200, {"status": "ok"}))
        h = request(self.gw.port, "HEAD", "/health")  # load balancers' probes
        self.assertEqual((h.status, h.body), (200, b""))
        self.assertTrue(self.gw.wait_log(r"method=HEAD path=/health .*status=200"))
        # Each endpoint is counted under its own name (counted before its log line).
        self.assertTrue(self.gw.wait_log(r"path=/v1/models/nobody .*status=404"))
        m = request(self.gw.port, "GET", "/metrics", headers=self.auth).body.decode()
        for endpoint, status in (("health", 200), ("models", 200), ("models", 404), ("models", 401)):
            self.assertRegex(m, r'coegate_requests_total\{endpoint="%s",status="%d"\} [1-9]' % (endpoint, status))

    def assertError(self, r, status, param=None, code=None, text=None, expert="none"):
        """expert: what x-coegate-expert must say ("none" when the gateway refused on its own)."""
        self.assertEqual(r.status, status, r.body)
        err = r.json()["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"})
        if param is not None:
            self.assertEqual(err["param"], param)
        if code is not None:
            self.assertEqual(err["code"], code)
        if text is not None:
            self.assertIn(text, err["message"])
        self.assertTrue(r.headers["x-request-id"])
        self.assertEqual(r.headers["x-coegate-expert"], expert)

    def test_400_names_the_field(self):
        self.assertError(self.post("{not json"), 400, text="not valid JSON")
        self.assertError(self.post({"model": "auto"}), 400, param="messages")
        self.assertError(self.post(chat_body("x", temperature=9)), 400, param="temperature")
        self.assertError(self.post({"messages": [{"role": "user", "content": 1}]}), 400, param="messages[0].content")
        deep = "[" * 100 + "]" * 100
        self.assertError(self.post('{"model":"auto","x":' + deep + "}"), 400, text="nested")

    def test_401(self):
        self.assertError(post(self.gw.port, chat_body("hi")), 401, code="invalid_api_key")
        self.assertError(post(self.gw.port, chat_body("hi"), headers={"Authorization": "Bearer client-key-3"}), 401)
        self.assertError(request(self.gw.port, "GET", "/v1/models"), 401)

    def test_404(self):
        self.assertError(self.post(chat_body("hi", model="nobody")), 404, param="model", code="model_not_found")
        self.assertError(request(self.gw.port, "GET", "/v2/elsewhere", headers=self.auth), 404)

    def test_405(self):
        r = request(self.gw.port, "GET", "/v1/chat/completions", headers=self.auth)
        self.assertError(r, 405)
        self.assertEqual(r.headers["allow"], "POST")

    def test_413(self):
        big = chat_body("x" * 5000)
        self.assertError(self.post(big), 413, text="4096 bytes")
        # Refused on Content-Length before the body is read, and also when chunked.
        r = request(self.gw.port, "POST", "/v1/chat/completions", body=iter([json.dumps(big).encode()]),
                    headers={**self.auth, "Transfer-Encoding": "chunked"})
        self.assertError(r, 413)
        self.assertEqual(self.post(chat_body("small", model="echo")).status, 200)

    def test_max_tokens_cap(self):
        self.post(chat_body("fake: key=cap", model="capped", max_tokens=1000))
        self.assertEqual(json.loads(self.up.key("cap")["last_body"])["max_tokens"], 16)
        self.post(chat_body("fake: key=cap2", model="capped"))
        self.assertEqual(json.loads(self.up.key("cap2")["last_body"])["max_tokens"], 16)
        self.post(chat_body("fake: key=cap3", model="capped", max_tokens=3))
        self.assertEqual(json.loads(self.up.key("cap3")["last_body"])["max_tokens"], 3)

    def test_embeddings(self):
        """/v1/embeddings goes to the expert as it is (its model name put in), and the
        expert's answer comes back whole, named as the client named it."""
        r = self.post({"model": "fake", "input": "fake: key=emb hello"}, "/v1/embeddings")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-coegate-expert"], "fake")
        body = r.json()
        self.assertEqual((body["object"], body["model"], len(body["data"])), ("list", "fake", 1))
        self.assertEqual(body["data"][0]["embedding"], [0.25, 0.5, 0.75, 1.0])
        self.assertEqual(body["usage"], {"prompt_tokens": 3, "total_tokens": 3})
        sent = json.loads(self.up.key("emb")["last_body"])
        self.assertEqual(sent, {"input": "fake: key=emb hello", "model": "upstream-model"})
        # Several inputs; through a route (its default); no token limit added from a cap.
        r = self.post({"input": ["fake: key=emb2 a", "b", "c"]}, "/v1/embeddings")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual((r.json()["model"], [d["index"] for d in r.json()["data"]]), ("auto", [0, 1, 2]))
        r = self.post({"model": "capped", "input": "fake: key=emb3 x"}, "/v1/embeddings")
        self.assertEqual(r.status, 200, r.body)
        self.assertNotIn("max_tokens", json.loads(self.up.key("emb3")["last_body"]))
        # Experts that cannot, and bad input.
        self.assertError(self.post({"model": "echo", "input": "x"}, "/v1/embeddings"), 400, param="model",
                         code="unsupported_capability", text="cannot serve 'embeddings'")
        self.assertError(self.post({"model": "newer", "input": "x"}, "/v1/embeddings"), 400, param="model",
                         code="unsupported_capability")
        for bad, param in (({"model": "fake"}, "input"), ({"model": "fake", "input": []}, "input"),
                           ({"model": "fake", "input": ["a", 1]}, "input"),
                           ({"model": "fake", "input": "a", "stream": True}, "stream")):
            self.assertError(self.post(bad, "/v1/embeddings"), 400, param=param)
        self.assertError(request(self.gw.port, "GET", "/v1/embeddings", headers=self.auth), 405)

    def test_first_chunk_has_the_role(self):
        """An upstream that leaves the role out (llama-server) is normalised: the first
        chunk says role assistant, the others say no role, the text is unchanged."""
        for directive in ("norole=1", ""):
            with self.subTest(directive=directive):
                s = self.stream(chat_body(f"fake: key=role {directive}", stream=True))
                text, chunks = content_of_stream(s.all())
                s.close()
                self.assertEqual([c["choices"][0]["delta"].get("role") for c in chunks],
                                 ["assistant"] + [None] * (len(chunks) - 1))
                self.assertEqual(text, "Hello w\u00f6rld \"quoted\"")

    def test_max_completion_tokens(self):
        """The newer name is honoured: the upstream gets one limit, the smallest of the
        request's two and the expert's cap, under the name the expert reads."""
        def sent(key, model, **limits):
            self.assertEqual(self.post(chat_body(f"fake: key={key}", model=model, **limits)).status, 200)
            body = json.loads(self.up.key(key)["last_body"])
            return {k: body[k] for k in ("max_tokens", "max_completion_tokens") if k in body}

        self.assertEqual(sent("mct1", "fake", max_completion_tokens=4), {"max_tokens": 4})
        self.assertEqual(sent("mct2", "fake", max_completion_tokens=9, max_tokens=5), {"max_tokens": 5})
        self.assertEqual(sent("mct3", "fake", max_completion_tokens=5, max_tokens=9), {"max_tokens": 5})
        self.assertEqual(sent("mct4", "capped", max_completion_tokens=1000), {"max_tokens": 16})
        self.assertEqual(sent("mct5", "fake"), {})
        self.assertEqual(sent("mct6", "newer", max_tokens=7), {"max_completion_tokens": 7})
        # The echo expert answers one word per token: the limit holds for built-in experts too.
        r = self.post(chat_body("one two three four five six", model="echo", max_completion_tokens=2))
        self.assertEqual(r.json()["usage"]["completion_tokens"], 2)
        self.assertEqual(r.json()["choices"][0]["finish_reason"], "length")

    def test_request_cannot_choose_the_upstream(self):
        # Fields that look like routing hints are passed on as data, never used as a URL.
        r = self.post(chat_body("fake: key=url", base_url="http://127.0.0.2:1/v1", api_base="http://x"))
        self.assertEqual(r.status, 200)
        self.assertEqual(self.up.key("url")["requests"], 1)

    def test_key_is_sent_upstream_but_never_logged(self):
        r = self.post(chat_body("fake: key=auth"))
        self.assertEqual(r.status, 200)
        self.assertEqual(self.up.key("auth")["last_auth"], "Bearer " + KEY)
        # An upstream error message that echoes the key is scrubbed before it reaches anyone.
        r = self.post(chat_body("fake: key=auth2 status=400"))
        self.assertEqual(r.status, 400)
        self.assertNotIn(KEY, r.body.decode())
        logs = self.gw.logs()
        self.assertIn("access id=", logs)
        self.assertNotIn(KEY, logs)
        self.assertNotIn("client-key-2", logs)

    def test_log_lines_cannot_be_forged(self):
        r = self.post(chat_body("hi", model="x\n2026-01-01T00:00:00.000Z info access id=forged status=200"))
        self.assertEqual(r.status, 404)
        self.assertTrue(self.gw.wait_log(r"model=x\?2026"))
        self.assertNotIn("\n2026-01-01T00:00:00.000Z info access id=forged", self.gw.logs())
        # An unknown path is logged as sent, as one word.
        r = request(self.gw.port, "GET", "/v1/nowhere%0A2026-01-01T00:00:00.000Z%20info%20access%20id=forged2",
                    headers=self.auth)
        self.assertEqual(r.status, 404)
        self.assertTrue(self.gw.wait_log(r"method=GET path=/v1/nowhere\?2026-01-01T00:00:00.000Z\?info\?access"))
        self.assertNotIn("\n2026-01-01T00:00:00.000Z info access id=forged2", self.gw.logs())

    def test_upstream_client_error_is_relayed(self):
        r = self.post(chat_body("fake: key=e400 status=400"))
        self.assertError(r, 400, text="fake failure 400", expert="fake")
        self.assertEqual(self.up.key("e400")["requests"], 1)  # never retried

    def test_concurrency_limit_gives_503(self):
        s = self.stream(chat_body("fake: key=busy chunks=3 delay_ms=500", model="narrow", stream=True))
        r = self.post(chat_body("fake: key=busy2", model="narrow"))
        self.assertError(r, 503, text="concurrency limit", expert="narrow")
        self.assertEqual(r.headers["retry-after"], "1")
        self.assertEqual(s.all()[-1][1], "[DONE]")
        s.close()
        self.assertEqual(self.post(chat_body("fake: key=busy3", model="narrow")).status, 200)


class Load(unittest.TestCase):
    def run_all(self, fns):
        results = [None] * len(fns)

        def run(i):
            try:
                results[i] = fns[i]()
            except Exception as e:  # reported below, with the others
                results[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return results

    def test_many_concurrent_streams(self):
        with Upstream() as up, Gateway({"server": {"threads": 2}, "experts": {"up": remote(up)},
                                        "routes": {"auto": {"default": "up"}}}) as gw:
            expected = "".join(["Hello", " w\u00f6rld", " \"quoted\"", " tab\t", " \u4e2d\u6587",
                                " emoji \U0001f389", "\\n", "\n"] * 2)[:]

            def stream(i):
                s = Stream(gw.port, chat_body(f"fake: key=load{i} chunks=16 delay_ms=20", stream=True))
                events = s.all()
                s.close()
                text, chunks = content_of_stream(events)
                return s.status, text, events[-1][1], len(chunks)

            def whole(i):
                r = post(gw.port, chat_body(f"fake: key=whole{i} chunks=16"))
                return r.status, r.json()["choices"][0]["message"]["content"]

            results = self.run_all([lambda i=i: stream(i) for i in range(64)] +
                                   [lambda i=i: whole(i) for i in range(32)])
            for r in results[:64]:
                self.assertEqual(r, (200, expected, "[DONE]", 16))
            for r in results[64:]:
                self.assertEqual(r, (200, expected))

    def test_overload_gives_clean_503s(self):
        with Upstream() as up, Gateway({"server": {"max_inflight": 8}, "experts": {"up": remote(up)},
                                        "routes": {"auto": {"default": "up"}}}) as gw:
            def one(i):
                r = post(gw.port, chat_body(f"fake: key=ov{i} chunks=4 first_delay_ms=300"))
                return r.status, r.headers.get("retry-after"), r.json()

            results = self.run_all([lambda i=i: one(i) for i in range(24)])
            ok = [r for r in results if r[0] == 200]
            busy = [r for r in results if r[0] == 503]
            self.assertEqual(len(ok) + len(busy), 24, results)
            self.assertGreaterEqual(len(ok), 8)
            self.assertGreaterEqual(len(busy), 1)
            for _, retry_after, body in busy:
                self.assertEqual(retry_after, "1")
                self.assertEqual(body["error"]["type"], "overloaded_error")


if __name__ == "__main__":
    unittest.main()
