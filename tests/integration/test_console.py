"""The web console (GET /console) in headless Chromium from Debian: the page loads
without a console message, shows the requests, experts and routes of the state
document, and its playground sends a chat through a chosen route and shows the answer
and the decision (for a fusion group, each token coloured by the expert that wrote
it). A screenshot is written, and its path printed. With API keys, the page itself
needs none, and everything it reads does."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Gateway, request  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url, *args):
    """Runs headless Chromium on url; returns (stdout, the console messages it logged)."""
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--user-data-dir=" + tempfile.mkdtemp(prefix="coegate-chromium-"), "--enable-logging=stderr",
                        "--v=0", "--virtual-time-budget=15000", *args, url],
                       capture_output=True, text=True, timeout=120)
    return r.stdout, [ln for ln in r.stderr.splitlines() if ":CONSOLE" in ln]


@unittest.skipUnless(CHROMIUM, "chromium is not installed (scripts/test.sh installs it)")
class Console(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        experts = {"e": {"kind": "echo"}}
        for name in ("math", "code", "writing", "fusion-router"):
            experts[name] = {"kind": "local", "path": os.path.join(MODELS, name + ".gguf"), "threads": 1}
        cls.gw = Gateway({"experts": experts,
                          "fusions": {"fused": {"experts": ["math", "code", "writing"], "router": "fusion-router",
                                                "selector": os.path.join(MODELS, "fusion-selector.gguf")}},
                          "routes": {"auto": {"default": "e"}}})

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()

    def url(self, **query):
        return "http://127.0.0.1:%d/console?%s" % (self.gw.port, urllib.parse.urlencode(query))

    def test_page_and_state(self):
        r = request(self.gw.port, "GET", "/console")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/html"))
        self.assertIn("default-src 'self'", r.headers["content-security-policy"])
        self.assertNotRegex(r.body.decode(), r"https?://")  # nothing from elsewhere
        request(self.gw.port, "POST", "/v1/chat/completions",
                {"model": "auto", "messages": [{"role": "user", "content": "hello state"}]})
        state = request(self.gw.port, "GET", "/console/api/state").json()
        self.assertEqual(state["requests"][0]["model"], "auto")
        self.assertEqual(state["requests"][0]["expert"], "e")
        self.assertEqual([e["name"] for e in state["experts"]], ["e", "math", "code", "writing", "fusion-router",
                                                                  "fused"])
        self.assertEqual(state["routes"][0], {"name": "auto", "default": "e", "router": None})

    def test_playground_in_chromium(self):
        dom, messages = chromium(self.url(playground="e", message="hello from the playground"), "--dump-dom")
        self.assertEqual(messages, [], "the page logged to the console")
        self.assertIn('data-playground="done"', dom)
        answer = re.search(r'<div id="answer">(.*?)</div>', dom, re.S).group(1)
        self.assertIn("hello from the playground", answer)
        self.assertRegex(dom, r'<p id="decision">status 200 · expert e ')
        # The live table shows the request the playground made.
        self.assertRegex(dom, r"<td[^>]*>POST /v1/chat/completions</td>")

    def test_fusion_colouring_and_screenshot(self):
        dom, messages = chromium(self.url(playground="fused", max=24, message="Write a function that adds two numbers."),
                                 "--dump-dom")
        self.assertEqual(messages, [])
        spans = re.findall(r'<span title="(math|code|writing)" style="background', dom)
        self.assertGreater(len(spans), 3, dom[-2000:])
        legend = re.search(r'<p id="legend">(.*?)</p>', dom, re.S).group(1)
        for name in set(spans):
            self.assertIn(">%s</span>" % name, legend)
        shot = os.path.join(os.environ.get("COEGATE_SCREENSHOTS", tempfile.gettempdir()), "coegate-console.png")
        chromium(self.url(playground="fused", max=24, message="Write a function that adds two numbers."),
                 "--window-size=1400,1000", "--screenshot=" + shot)
        self.assertTrue(os.path.getsize(shot) > 10000)
        print("\nconsole screenshot: " + shot, file=sys.stderr)


@unittest.skipUnless(CHROMIUM, "chromium is not installed (scripts/test.sh installs it)")
class ConsoleWithKeys(unittest.TestCase):
    def test_keys(self):
        with Gateway({"server": {"api_keys_env": "COE_TEST_KEYS"}, "experts": {"e": {"kind": "echo"}},
                      "routes": {"auto": {"default": "e"}}}, env={"COE_TEST_KEYS": "k1"}) as gw:
            self.assertEqual(request(gw.port, "GET", "/console").status, 200)
            self.assertEqual(request(gw.port, "GET", "/console/api/state").status, 401)
            ok = request(gw.port, "GET", "/console/api/state", headers={"Authorization": "Bearer k1"})
            self.assertEqual(ok.status, 200)
            json.loads(ok.body)
            dom, messages = chromium("http://127.0.0.1:%d/console" % gw.port, "--dump-dom")
            self.assertIn("API key needed", dom)
            self.assertEqual([m for m in messages if "401" not in m], [])


if __name__ == "__main__":
    unittest.main()
