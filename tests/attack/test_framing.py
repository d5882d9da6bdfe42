"""Raw-socket attacks on the gateway's HTTP framing (issue 10): requests that two
HTTP parsers could frame differently, the way requests are smuggled past a proxy.
Each must get one 400 (501 for an unknown transfer coding, 505 for another HTTP
version, 431 for an oversized head, 417 for an unknown expectation) and the connection
closed, as nginx and Envoy do, with an access-log line; nothing after it may run as a
second request. Loopback only; every read is bounded in time."""

import os
import re
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from harness import Gateway, read_until_closed, request  # noqa: E402

ECHO = {"experts": {"e": {"kind": "echo"}}, "routes": {"auto": {"default": "e"}}}
BODY = b'{"model":"e","messages":[{"role":"user","content":"hi"}]}'
POST = b"POST /v1/chat/completions HTTP/1.1\r\n"
SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

CASES = {
    "content-length and chunked": (POST + b"Host: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400),
    "two content-lengths": (POST + b"Host: x\r\nContent-Length: %d\r\nContent-Length: 4\r\n\r\n" % len(BODY) + BODY +
                            SMUGGLED, 400),
    "space before the colon": (POST + b"Host: x\r\nContent-Length : %d\r\n\r\n" % len(BODY) + BODY, 400),
    "obs-folded transfer-encoding": (POST + b"Host: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
                                     400),
    "bare CR in a value": (POST + b"Host: x\r\nX-Note: a\rb\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY, 400),
    "HTTP/1.1 without Host": (POST + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY, 400),
    "two Host headers": (POST + b"Host: x\r\nHost: y\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY, 400),
    "unknown transfer coding": (POST + b"Host: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "NUL in a value": (POST + b"Host: x\r\nX-Note: a\x00b\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY, 400),
    "bad content-length": (POST + b"Host: x\r\nContent-Length: 12abc\r\n\r\n" + BODY, 400),
    "folded line of another header": (POST + b"Host: x\r\nX-A: 1\r\n\t2\r\nContent-Length: %d\r\n\r\n" % len(BODY) +
                                      BODY + SMUGGLED, 400),
    "tab before the colon": (POST + b"Host: x\r\nContent-Length\t: %d\r\n\r\n" % len(BODY) + BODY, 400),
    "a line without a colon": (POST + b"Host: x\r\nContent-Length %d\r\n\r\n" % len(BODY) + BODY, 400),
    "garbage request line": (b"POST  /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "HTTP/2.0 in the request line": (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "an encoded NUL in the path": (b"GET /health%00x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "chunk size with a bare LF": (POST + b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" +
                                  SMUGGLED, 400),
    "chunk size past 15 hex digits": (POST + b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"10000000000000005\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400),
    "chunk data longer than its size": (POST + b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n"
                                        b"0\r\n\r\n" + SMUGGLED, 400),
    "transfer-encoding in HTTP/1.0": (b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"0\r\n\r\n", 400),
    "an unknown expectation": (POST + b"Host: x\r\nExpect: 200-ok\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY,
                               417),
    "a head over 32 KiB": (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
}


def exchange(port, raw, timeout=3.0):
    """Sends raw, reads until the server closes (or timeout); returns (bytes, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(raw)
        return read_until_closed(s, timeout)
    finally:
        s.close()


class Framing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gw = Gateway(dict(ECHO, server={"connection_timeout_s": 10}))

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()

    def check(self, raw, want):
        t0 = time.monotonic()
        data, closed = exchange(self.gw.port, raw)
        statuses = re.findall(rb"HTTP/1\.[01] (\d{3})", data)
        self.assertEqual(statuses, [str(want).encode()], data[:300])
        self.assertTrue(closed, "the connection was left open")
        self.assertLess(time.monotonic() - t0, 2.5)

    def test_each_case(self):
        for name, (raw, want) in CASES.items():
            with self.subTest(case=name):
                self.check(raw, want)
        # One access-log line per rejection.
        time.sleep(0.3)
        logs = self.gw.logs()
        self.assertGreaterEqual(len(re.findall(r"access .*status=(?:400|417|431|501|505)", logs)), len(CASES),
                                logs[-3000:])
        # And the gateway still serves.
        self.assertEqual(request(self.gw.port, "GET", "/health").status, 200)

    def test_a_clean_request_still_works(self):
        data, _ = exchange(self.gw.port, POST + b"Host: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:200])


if __name__ == "__main__":
    unittest.main()
