"""The learned route policy through the real server: category headers, the
threshold fallback, the cost weight, `coegate route`, and config errors."""

import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import unittest
import urllib.request

from harness import COEGATE, Gateway, Upstream, chat_body, config_check, gpus_found, post, remote

CODE_Q = "How do I parse a CSV file in Python without extra libraries?"
MATH_Q = "What is the derivative of x^3 sin x? Explain step by step."
WRITING_Q = "Write a short poem about the sea at night."


def demo_router(folder):
    """The demo's category router (code, math, writing), trained into folder."""
    path = os.path.join(folder, "router.gguf")
    r = subprocess.run([COEGATE, "router", "train", "--data", "configs/demo-queries.jsonl", "--out", path,
                        "--buckets", "65536", "--dim", "32"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return path


class Routing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="coegate-routing-")
        cls.router = demo_router(cls.dir.name)
        experts = {name: {"kind": "echo", "cost": cost} for name, cost in
                   (("coder", 1.0), ("mathematician", 1.0), ("writer", 1.0), ("generalist", 0.1))}
        categories = {"code": {"experts": {"coder": 0.9, "generalist": 0.6}},
                      "math": {"experts": {"mathematician": 0.9, "generalist": 0.5}}}
        cls.config = {
            "experts": experts,
            "categories": categories,
            "routes": {
                "auto": {"router": cls.router, "default": "generalist", "threshold": 0.4},
                "strict": {"router": cls.router, "default": "generalist", "fallback": "writer", "threshold": 0.9999},
                "cheap": {"router": cls.router, "default": "generalist", "cost_weight": 10},
                "plain": {"default": "writer"},
            },
        }
        cls.config.update(cls.settings)
        cls.gw = Gateway(cls.config)

    settings = {}  # the configuration's "router" section, for the subclass below

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.dir.cleanup()

    def ask(self, text, model="auto", stream=False):
        return post(self.gw.port, chat_body(text, model=model, stream=stream))

    def test_policy_picks_the_categorys_best_expert(self):
        for text, category, expert in ((CODE_Q, "code", "coder"), (MATH_Q, "math", "mathematician")):
            r = self.ask(text)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["x-coegate-category"], category)
            self.assertGreater(float(r.headers["x-coegate-confidence"]), 0.4)
            self.assertEqual(r.headers["x-coegate-expert"], expert)
        self.assertTrue(self.gw.wait_log(r"rule=policy category=math expert=mathematician"))

    def test_category_without_experts_goes_to_the_default(self):
        r = self.ask(WRITING_Q)
        self.assertEqual(r.headers["x-coegate-category"], "writing")
        self.assertEqual(r.headers["x-coegate-expert"], "generalist")
        self.assertTrue(self.gw.wait_log(r"rule=unconfigured category=writing"))

    def test_threshold_fallback(self):
        r = self.ask(CODE_Q, model="strict")
        self.assertEqual(r.headers["x-coegate-category"], "code")
        self.assertLess(float(r.headers["x-coegate-confidence"]), 0.9999)
        self.assertEqual(r.headers["x-coegate-expert"], "writer")

    def test_cost_weight(self):
        # 0.6 - 10 x 0.1 beats 0.9 - 10 x 1.0: the cheap generalist answers.
        r = self.ask(CODE_Q, model="cheap")
        self.assertEqual(r.headers["x-coegate-expert"], "generalist")
        self.assertEqual(r.headers["x-coegate-category"], "code")

    def test_conversation_history_and_streams(self):
        body = {"model": "auto", "stream": True, "messages": [
            {"role": "user", "content": WRITING_Q},
            {"role": "assistant", "content": "Here is a poem."},
            {"role": "user", "content": MATH_Q}]}
        r = post(self.gw.port, body)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["x-coegate-category"], "math")  # the last user message weighs most

    def test_routes_without_router_and_direct_experts_have_no_category(self):
        for model in ("plain", "coder"):
            r = self.ask(CODE_Q, model=model)
            self.assertEqual(r.status, 200)
            self.assertNotIn("x-coegate-category", r.headers)

    def run_coegate(self, *args):
        return subprocess.run([COEGATE, *args], capture_output=True, text=True, timeout=30)

    def test_route_command_explains(self):
        r = self.run_coegate("route", "--config", self.gw.config_path, MATH_Q)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"categories +math 0\.\d+,")
        self.assertIn("expert      mathematician", r.stdout)
        self.assertIn("rule        policy: best quality - 0 x cost among the experts of 'math'", r.stdout)
        r = self.run_coegate("route", "--config", self.gw.config_path, "--route", "strict", CODE_Q)
        self.assertIn("rule        threshold: top probability", r.stdout)
        r = self.run_coegate("route", "--config", self.gw.config_path, "--route", "nope", CODE_Q)
        self.assertEqual(r.returncode, 1)
        self.assertIn("has no route named 'nope'", r.stderr)

    def test_config_errors(self):
        bad = json.loads(json.dumps(self.config))
        bad["routes"]["auto"]["router"] = "/nonexistent/router.gguf"
        bad["categories"]["code"]["experts"]["nobody"] = 1
        bad["routes"]["plain"]["threshold"] = 0.5
        path = os.path.join(self.dir.name, "bad.json")
        with open(path, "w") as f:
            json.dump(bad, f)
        r = self.run_coegate("config", "check", path)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"{path}: categories.code.experts.nobody: no expert named \"nobody\"", r.stderr)
        self.assertIn(f"{path}: routes.auto.router: cannot load the router: /nonexistent/router.gguf: cannot open",
                      r.stderr)
        self.assertIn(f"{path}: routes.plain.threshold: takes effect only with a router", r.stderr)

    def test_category_no_router_produces(self):
        # "poem" is not one of the router's categories (code, math, writing): a warning
        # names it and what the routers produce; "code" and "math" draw none.
        config = json.loads(json.dumps(self.config))
        config["categories"]["poem"] = {"experts": {"writer": 0.9}}
        path = os.path.join(self.dir.name, "poem.json")
        with open(path, "w") as f:
            json.dump(config, f)
        r = self.run_coegate("config", "check", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"warning: {path}: categories.poem: no route's router produces this category "
                      "(they produce: code, math, writing): no request reaches it", r.stderr)
        self.assertEqual(r.stderr.count("warning:"), 1, r.stderr)


class Capabilities(unittest.TestCase):
    """A request that needs tools, response_format, n > 1 or images goes only to experts
    that can serve it: the category's best capable expert, else the route's fallback
    or default; only when none can, a 400 naming the field."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="coegate-caps-")
        cls.router = demo_router(cls.dir.name)
        cls.up = Upstream()
        nb = {"breaker_failures": 0, "retries": 0}
        cls.gw = Gateway({
            "experts": {
                "plain": remote(cls.up, capabilities=[], **nb),
                "vision": remote(cls.up, capabilities=["images", "n"], **nb),
                "smart": remote(cls.up, fallbacks=["plain", "vision", "spare"], **nb),
                "spare": remote(cls.up, **nb),
                "echo": {"kind": "echo"},
            },
            "categories": {"code": {"experts": {"plain": 0.9, "vision": 0.7, "smart": 0.5}}},
            "routes": {
                "auto": {"router": cls.router, "default": "echo", "fallback": "spare"},
                "simple": {"default": "echo"},
            },
        })

    @classmethod
    def tearDownClass(cls):
        cls.gw.close()
        cls.up.close()
        cls.dir.cleanup()

    TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

    def test_the_best_capable_expert_of_the_category(self):
        for extra, expert in (({}, "plain"), ({"n": 2}, "vision"), ({"tools": self.TOOLS}, "smart"),
                              ({"response_format": {"type": "json_object"}}, "smart"),
                              ({"response_format": {"type": "text"}}, "plain")):
            with self.subTest(extra=extra):
                r = post(self.gw.port, chat_body(CODE_Q, **extra))
                self.assertEqual(r.status, 200, r.body)
                self.assertEqual(r.headers["x-coegate-expert"], expert)
                self.assertEqual(r.headers["x-coegate-category"], "code")

    def test_fallback_and_default_when_the_category_cannot(self):
        # Writing is not configured: the default (echo) answers, unless the request needs
        # what echo cannot serve; then the route's fallback (spare).
        r = post(self.gw.port, chat_body(WRITING_Q))
        self.assertEqual(r.headers["x-coegate-expert"], "echo")
        r = post(self.gw.port, chat_body(WRITING_Q, tools=self.TOOLS))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-coegate-expert"], "spare")

    def test_none_can_serve_it(self):
        image = {"model": "simple", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
        for body, param, text in (
                (chat_body("hi", model="simple", tools=self.TOOLS), "tools", "route 'simple'"),
                (image, "messages[0].content[1]", "'images'"),
                (chat_body("hi", model="plain", n=3), "n", "expert 'plain' cannot serve 'n'"),
                (chat_body("hi", model="echo", response_format={"type": "json_schema"}), "response_format",
                 "expert 'echo' cannot serve 'json_schema'")):
            with self.subTest(param=param):
                r = post(self.gw.port, body)
                self.assertEqual(r.status, 400, r.body)
                err = r.json()["error"]
                self.assertEqual((err["param"], err["code"]), (param, "unsupported_capability"))
                self.assertIn(text, err["message"])

    def test_fallbacks_that_cannot_serve_it_are_skipped(self):
        # smart fails; of its fallbacks, plain and vision cannot call tools: spare answers.
        r = post(self.gw.port, chat_body("fake: key=caps status=500 fail_times=1", model="smart", tools=self.TOOLS))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.headers["x-coegate-expert"], "spare")
        self.assertEqual(self.up.key("caps")["requests"], 2)


class Evaluation(unittest.TestCase):
    def test_report_with_an_expert_pool(self):
        # "fast" (1B) is right on code and writing, "deep" (8B) on everything.
        with tempfile.TemporaryDirectory() as d:
            with open("configs/demo-queries.jsonl") as f:
                rows = [json.loads(line) for line in f]
            right = {"code": {"fast": 1, "deep": 1}, "math": {"fast": 0, "deep": 1}, "writing": {"fast": 1, "deep": 1}}
            for name, part in (("train", rows[:200]), ("test", rows[200:])):
                with open(os.path.join(d, name + ".jsonl"), "w") as f:
                    for r in part:
                        f.write(json.dumps({**r, "scores": right[r["category"]]}) + "\n")
            with open(os.path.join(d, "models.json"), "w") as f:
                json.dump({"models": [{"name": "fast", "active_params_b": 1},
                                      {"name": "deep", "active_params_b": 8}]}, f)
            router = os.path.join(d, "r.gguf")
            r = subprocess.run([COEGATE, "router", "train", "--data", os.path.join(d, "train.jsonl"), "--out", router,
                                "--buckets", "4096", "--dim", "16"], capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            report = os.path.join(d, "report")
            r = subprocess.run([COEGATE, "router", "eval", "--router", router, "--data", os.path.join(d, "test.jsonl"),
                                "--train", os.path.join(d, "train.jsonl"), "--models", os.path.join(d, "models.json"),
                                "--budget", "4", "--strong", "deep", "--weak", "fast", "--report", report],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("# Routing with the expert pool", r.stdout)
            with open(os.path.join(report, "report.json")) as f:
                result = json.load(f)
            self.assertGreater(result["classifier"]["accuracy"], 0.9)
            routing = result["routing"]
            self.assertAlmostEqual(routing["oracle"], 1.0)
            # Math to deep, the rest to fast: nearly all right, at under half the deep expert's cost.
            self.assertGreater(routing["at_budget"]["accuracy"], 0.9)
            self.assertLessEqual(routing["at_budget"]["mean_active_b"], 4)
            costs = [p["mean_active_b"] for p in routing["curve"]]
            self.assertEqual(costs, sorted(costs))
            self.assertGreater(routing["apgr"], 0.5)
            import xml.etree.ElementTree as ET
            for svg in ("confusion.svg", "reliability.svg", "quality-cost.svg"):
                root = ET.parse(os.path.join(report, svg)).getroot()
                self.assertTrue(root.tag.endswith("svg"), svg)
            with open(os.path.join(report, "index.html")) as f:
                html = f.read()
            self.assertEqual(html.count("<svg"), 3)
            self.assertIn("Router evaluation", html)
            # The routing figures are in the page too: each expert alone, the table at
            # the budget, AUC and APGR, the curve's points; the chart has its oracle
            # line and a legend.
            for text in ("<th>expert alone</th>", "<td>deep (best)</td>", "<th>category</th><th>expert",
                         "AUC <b>", "APGR <b>", "<th>cost weight</th>", "Per-question oracle"):
                self.assertIn(text, html)
            with open(os.path.join(report, "quality-cost.svg")) as f:
                curve = f.read()
            self.assertIn("oracle 1.0000", curve)
            self.assertIn("an expert alone", curve)
            # A strong expert over --max-active: the report comes out without AUC/APGR,
            # saying why; a name that is not in the pool is an error.
            args = [COEGATE, "router", "eval", "--router", router, "--data", os.path.join(d, "test.jsonl"),
                    "--train", os.path.join(d, "train.jsonl"), "--models", os.path.join(d, "models.json"),
                    "--budget", "4", "--max-active", "4", "--weak", "fast", "--report", report]
            r = subprocess.run(args + ["--strong", "deep"], capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(report, "report.json")) as f:
                routing = json.load(f)["routing"]
            self.assertNotIn("apgr", routing)
            self.assertIn("over --max-active 4 B", routing["apgr_note"])
            self.assertIn("over --max-active 4 B", r.stdout)
            r = subprocess.run(args + ["--strong", "nosuch"], capture_output=True, text=True, timeout=120)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("the strong expert 'nosuch' is not in the models file", r.stderr)



class BatchedRouting(Routing):
    """Every test above again with the routers' classifications gathered into batches
    (on the CPU here; on a GPU the same path, with the GPU's batch function): the
    request waits on the worker's loop without blocking it, and is woken when its batch
    is classified."""

    settings = {"router": {"device": "cpu", "batch_window_us": 3000, "max_batch": 8}}

    def test_batching_is_on(self):
        self.assertTrue(self.gw.wait_log(r"route 'auto': classifies on the CPU, up to 8 requests together within 3000 us"))

    def test_concurrent_requests_each_get_their_route(self):
        cases = [(CODE_Q, "coder"), (MATH_Q, "mathematician"), (WRITING_Q, "generalist")] * 10
        results = [None] * len(cases)

        def ask(i):
            r = self.ask(cases[i][0])
            results[i] = (r.status, r.headers.get("x-coegate-expert"))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(results, [(200, expert) for _, expert in cases])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.gw.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        largest = int(re.search(r'coegate_router_batch_max\{route="auto"\} (\d+)', text).group(1))
        self.assertGreater(largest, 1)  # 30 at once: some were classified together
        self.assertLessEqual(largest, 8)

    def test_client_leaving_while_classified(self):
        body = json.dumps(chat_body(CODE_Q, model="auto")).encode()
        for _ in range(5):  # each leaves before its batch's window is over
            s = socket.create_connection(("127.0.0.1", self.gw.port))
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            s.close()
        r = self.ask(MATH_Q)
        self.assertEqual((r.status, r.headers["x-coegate-expert"]), (200, "mathematician"))
        self.assertTrue(self.gw.wait_log(r"status=499"))


class RouterSettings(unittest.TestCase):
    def check(self, config):
        return config_check(config)

    def test_errors_are_named(self):
        base = {"experts": {"e": {"kind": "echo"}}, "routes": {"auto": {"default": "e"}}}
        r = self.check({**base, "router": {"device": "tpu", "batch_window_us": -1, "speed": 1}})
        self.assertEqual(r.returncode, 1)
        self.assertIn("router.speed: unknown key (allowed here: device, batch_window_us, max_batch)", r.stderr)
        self.assertIn('router.device: must be "auto", "cpu" or "cuda", not "tpu"', r.stderr)
        self.assertIn("router.batch_window_us: expected an integer from 0 to 100000", r.stderr)
        gpus = gpus_found()
        r = self.check({**base, "router": {"device": "cuda"}})
        if gpus == 0:
            self.assertEqual(r.returncode, 1)
            self.assertIn("router.device: cuda: no CUDA device is found", r.stderr)
        else:
            self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.check({**base, "router": {"device": "auto", "max_batch": 64}}).returncode, 0)

if __name__ == "__main__":
    unittest.main()
