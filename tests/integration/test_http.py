"""The gateway's own HTTP/1.1 server (gateway/http.c) as clients use it: 100-continue,
pipelining, keep-alive, HEAD, HTTP/1.0, streams, early answers to requests whose body
is not read, and the per-address connection limit. Raw sockets on loopback; every
read is bounded in time."""

import json
import os
import re
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Gateway, read_until_closed, request  # noqa: E402

ECHO = {"experts": {"e": {"kind": "echo"}}, "routes": {"auto": {"default": "e"}}}
BODY = b'{"model":"e","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = b'{"model":"e","stream":true,"messages":[{"role":"user","content":"hi there"}]}'


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_response(s, buf=b""):
    """One response with a Content-Length body; returns (status, headers, body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("closed before a whole head: %r" % buf[:200])
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("closed before the whole body")
        rest += chunk
    return status, headers, rest[:n], rest[n:]


def post_head(length, extra=b""):
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % length + extra + b"\r\n")


class Http(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Gateway(dict(ECHO, server={"connection_timeout_s": 10, "max_connections_per_ip": 4,
                                            "threads": 2}))

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()

    def test_expect_100_continue(self):
        with connect(self.gw.port) as s:
            s.sendall(post_head(len(BODY), b"Expect: 100-continue\r\n"))
            s.settimeout(3)
            interim = s.recv(4096)
            self.assertTrue(interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim)
            s.sendall(BODY)
            status, _, body, _ = read_response(s, interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):])
            self.assertEqual(status, 200)
            self.assertIn("hi", json.loads(body)["choices"][0]["message"]["content"])

    def test_pipelined_requests_answered_in_order(self):
        with connect(self.gw.port) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + post_head(len(BODY)) + BODY +
                      b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            st1, _, b1, rest = read_response(s)
            st2, _, b2, rest = read_response(s, rest)
            st3, _, b3, rest = read_response(s, rest)
            self.assertEqual((st1, st2, st3), (200, 200, 200))
            self.assertEqual(json.loads(b1), {"status": "ok"})
            self.assertEqual(json.loads(b2)["object"], "chat.completion")
            self.assertEqual(json.loads(b3)["object"], "list")
            self.assertEqual(rest, b"")

    def test_keep_alive_and_head(self):
        with connect(self.gw.port) as s:
            s.settimeout(5)
            for _ in range(3):
                s.sendall(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(4096)
                self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
                self.assertIn(b"Content-Length: 15\r\n", head)
                self.assertTrue(head.endswith(b"\r\n\r\n"), "HEAD got a body")
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body, _ = read_response(s)
            self.assertEqual((status, body), (200, b'{"status":"ok"}'))

    def test_http10_closes_unless_kept_alive(self):
        with connect(self.gw.port) as s:
            s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            data, closed = read_until_closed(s)
            self.assertTrue(data.startswith(b"HTTP/1.1 200"), data)
            self.assertIn(b"Connection: close", data)
            self.assertTrue(closed)
        with connect(self.gw.port) as s:
            s.settimeout(5)
            for _ in range(2):
                s.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                status, headers, body, _ = read_response(s)
                self.assertEqual(status, 200)
                self.assertEqual(headers.get("connection"), "keep-alive")

    def test_streams_chunked_and_to_http10(self):
        with connect(self.gw.port) as s:
            s.sendall(post_head(len(STREAM_BODY)) + STREAM_BODY)
            data = b""
            s.settimeout(5)
            while not data.endswith(b"0\r\n\r\n"):
                chunk = s.recv(65536)
                self.assertTrue(chunk, "closed mid-stream")
                data += chunk
            self.assertIn(b"Transfer-Encoding: chunked", data)
            self.assertIn(b"data: [DONE]", data)
        with connect(self.gw.port) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(STREAM_BODY) +
                      STREAM_BODY)
            data, closed = read_until_closed(s)
            self.assertTrue(closed)
            self.assertNotIn(b"Transfer-Encoding", data)
            self.assertTrue(data.rstrip().endswith(b"data: [DONE]"), data[-200:])

    def test_an_early_answer_closes_with_the_body_unread(self):
        # 404 before a 1 MB body is read: the answer arrives whole and the connection
        # closes (the body cannot be told from a next request any more).
        with connect(self.gw.port) as s:
            s.sendall(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 65536)
            data, closed = read_until_closed(s)
            self.assertTrue(data.startswith(b"HTTP/1.1 404"), data[:200])
            self.assertIn(b"Connection: close", data)
            self.assertTrue(closed)
            self.assertTrue(data.endswith(b"}"), data[-100:])

    def test_connections_per_address(self):
        socks = [connect(self.gw.port) for _ in range(4)]
        try:
            time.sleep(0.2)
            extra = connect(self.gw.port)
            data, closed = read_until_closed(extra, timeout=2)
            extra.close()
            self.assertTrue(closed and data == b"", "a fifth connection from one address was served")
        finally:
            for s in socks:
                s.close()
        time.sleep(0.3)
        self.assertEqual(request(self.gw.port, "GET", "/health").status, 200)

    def test_client_leaving_mid_body_is_logged(self):
        with connect(self.gw.port) as s:
            s.sendall(post_head(1000) + b'{"model"')
            time.sleep(0.2)
        self.assertTrue(self.gw.wait_log(r"access .*path=/v1/chat/completions .*status=499"))


if __name__ == "__main__":
    unittest.main()
