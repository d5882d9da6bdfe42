"""Regression tests for defects found by attacking the gateway (issue 10): each failed
on the code before its fix. Loopback only, bounded counts and times."""

import socket
import time
import unittest

from harness import Gateway, request

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


if __name__ == "__main__":
    unittest.main()
