"""Starts the real coegate and the fake upstream on loopback, and talks HTTP to them.

Every process is started on port 0, bounded in time, and stopped by the test that
started it. Binaries come from the COEGATE and FAKE_UPSTREAM environment variables
(meson sets them)."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

COEGATE = os.environ.get("COEGATE", "build/coegate")
FAKE_UPSTREAM = os.environ.get("FAKE_UPSTREAM", "build/tests/fake-upstream")
START_TIMEOUT = 10.0


def _read_port(proc, what):
    """Reads the 'listening on http://HOST:PORT' line a server prints once ready."""
    deadline = time.monotonic() + START_TIMEOUT
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on http://\[?[0-9a-f.:]+\]?:(\d+)", line)
        if m:
            return int(m.group(1))
    proc.kill()
    raise RuntimeError(f"{what} did not start: {line!r}")


class Upstream:
    """The fake OpenAI-compatible server (tests/fake_upstream.c)."""

    def __init__(self):
        self.proc = subprocess.Popen([FAKE_UPSTREAM, "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = _read_port(self.proc, "fake-upstream")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        c.request("GET", "/stats")
        r = json.loads(c.getresponse().read())
        c.close()
        return r

    def key(self, name):
        return self.stats()["keys"].get(name, {"requests": 0, "closed_at": 0})

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=5)
        self.proc.stdout.close()
        self.proc.stdin.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Gateway:
    """A coegate serve process on its own config file, logging to a file."""

    def __init__(self, config, env=None, args=()):
        self.dir = tempfile.TemporaryDirectory(prefix="coegate-test-")
        self.config_path = os.path.join(self.dir.name, "config.json")
        self.write_config(config)
        self.log_path = os.path.join(self.dir.name, "stderr.log")
        self.log = open(self.log_path, "w")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [COEGATE, "serve", "--config", self.config_path, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=full_env)
        self.port = _read_port(self.proc, "coegate")
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def write_config(self, config):
        text = config if isinstance(config, str) else json.dumps(config, indent=2)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def logs(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_log(self, pattern, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.logs()):
                return True
            time.sleep(0.02)
        return False

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def close(self):
        """Stops gracefully, so that every test also checks a clean exit: status 0 and
        no sanitizer report (leaks are reported at exit under the sanitizer build)."""
        try:
            status = self.stop()
            logs = self.logs()
            for marker in ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:"):
                if marker in logs:
                    raise AssertionError(f"coegate reported {marker}:\n{logs[-4000:]}")
            if status != 0:
                raise AssertionError(f"coegate exited with status {status}:\n{logs[-2000:]}")
        finally:
            self.proc.stdout.close()
            self.log.close()
            self.dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def config_check(config):
    """`coegate config check` on config (written to a temporary file): the completed process."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.json")
        with open(path, "w") as f:
            json.dump(config, f)
        return subprocess.run([COEGATE, "config", "check", path], capture_output=True, text=True, timeout=30)


def gpus_found():
    """The GPUs `coegate version` says it finds."""
    out = subprocess.run([COEGATE, "version"], capture_output=True, text=True, timeout=30).stdout
    return int(re.search(r"(\d+) GPUs? found", out).group(1))


def remote(upstream, **kw):
    """A remote expert entry for the fake upstream."""
    e = {"kind": "remote", "base_url": upstream.base_url, "retry_backoff_ms": 10,
         "connect_timeout_ms": 2000, "first_byte_timeout_ms": 5000, "chunk_timeout_ms": 5000}
    e.update(kw)
    return e


def chat_body(text, stream=False, model="auto", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body["stream"] = True
    body.update(kw)
    return body


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def request(port, method, path, body=None, headers=None, timeout=20):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    # An iterator is sent with chunked transfer encoding (no Content-Length).
    c.request(method, path, body=data, headers=h, encode_chunked=not isinstance(data, (bytes, str, type(None))))
    r = c.getresponse()
    out = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    c.close()
    return out


def post(port, body, path="/v1/chat/completions", headers=None, timeout=20):
    return request(port, "POST", path, body, headers, timeout)


def settled_metrics(port, answered, endpoint="chat_completions", timeout=5.0):
    """GET /metrics once `answered` requests to `endpoint` are counted and none is in
    flight. A request is counted when libmicrohttpd reports it complete, just after its
    last byte left, so the client may have read the answer before then; a request
    refused before dispatch never counts as in flight, so "nothing in flight" alone is
    not enough. Waits at most `timeout` seconds, then returns what it last read."""
    want = ('coegate_request_duration_seconds_count{endpoint="%s"} %d' % (endpoint, answered),
            "coegate_inflight_requests 0")
    deadline = time.monotonic() + timeout
    while True:
        m = request(port, "GET", "/metrics")
        lines = set(m.body.decode().splitlines())
        if all(w in lines for w in want) or time.monotonic() > deadline:
            return m
        time.sleep(0.01)


class Stream:
    """A streamed response read event by event, with the arrival time of each."""

    def __init__(self, port, body, path="/v1/chat/completions", headers=None, timeout=20):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        self.t0 = time.monotonic()
        self.conn.request("POST", path, body=json.dumps(body), headers=h)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}

    def events(self):
        """Yields (seconds since the request, data string) for each event."""
        data = []
        while True:
            line = self.resp.readline()
            if not line:
                return
            line = line.decode().rstrip("\r\n")
            if line == "":
                if data:
                    yield time.monotonic() - self.t0, "\n".join(data)
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" ") if line.startswith("data: ") else line[5:])

    def all(self):
        return list(self.events())

    def close(self):
        self.conn.close()


def content_of_stream(events):
    """Concatenated delta content of the choice 0, and the parsed chunk objects."""
    text, chunks = "", []
    for _, data in events:
        if data == "[DONE]":
            continue
        obj = json.loads(data)
        chunks.append(obj)
        for ch in obj.get("choices", []):
            d = ch.get("delta", {})
            text += d.get("content") or ch.get("text") or ""
    return text, chunks


def read_until_closed(s, timeout=3.0):
    """Reads socket s until the peer closes it or timeout passes: (bytes, closed)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def raw_stream_then_hangup(port, body, events_before_close):
    """Sends a streamed request on a raw socket, reads some events, then hangs up.
    Returns the wall time of the hang-up."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    payload = json.dumps(body).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    seen = b""
    while seen.count(b"data: ") < events_before_close:
        chunk = s.recv(4096)
        if not chunk:
            break
        seen += chunk
    s.close()
    return time.time(), seen
