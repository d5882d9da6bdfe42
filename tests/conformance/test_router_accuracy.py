"""The router's accuracy on ../shared/routing-data: trained on train only (fixed seed,
settings chosen on a held-out tenth of train), reported on test. Skips where
../shared is absent.

Issue 3's bars, asserted as they are: mmlu-pro >= 0.80, clinc150 >= 0.96, arena-hard
>= 0.75, and mmlu-pro routed over experts <= 9B active at a mean <= 6B >= 0.465
(routing on the router's finer classes, the MMLU-Pro sources). Measured when this was
written: 0.8012, 0.9616, 0.9057 and 0.4695; the margins on mmlu-pro are thin, and
training is deterministic, so a change that moves them shows here."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

COEGATE = os.environ.get("COEGATE", "build/coegate")
DATA = os.path.join(os.environ.get("COEGATE_SHARED", "../shared"), "routing-data")

# set: (training options, issue bar, value asserted here)
SETS = {
    "arena-hard": (["--refit"], 0.75, 0.75),
    "clinc150": (["--fine-label", "intent", "--dropout", "0.3", "--refit"], 0.96, 0.96),
    "mmlu-pro": (["--fine-label", "source", "--char-ngrams", "3-4", "--refit", "--ensemble", "3"], 0.80, 0.80),
}
ROUTED_BAR, ROUTED_FLOOR = 0.465, 0.465


@unittest.skipUnless(os.path.isdir(DATA), f"{DATA} not found (the routing data lives in ../shared)")
class RouterAccuracy(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="coegate-accuracy-")

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def train_and_eval(self, name, options, extra_eval=()):
        router = os.path.join(self.dir.name, name + ".gguf")
        out = os.path.join(self.dir.name, name + ".json")
        r = subprocess.run([COEGATE, "router", "train", "--data", f"{DATA}/{name}.train.jsonl", "--out", router,
                            *options], capture_output=True, text=True, timeout=900)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run([COEGATE, "router", "eval", "--router", router, "--data", f"{DATA}/{name}.test.jsonl",
                            "--json", out, *extra_eval], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            return json.load(f)

    def check(self, name, measured, bar, floor):
        print(f"{name}: {measured:.4f} (issue bar {bar}; asserted here {floor})", file=sys.stderr)
        self.assertGreaterEqual(measured, floor)

    def test_arena_hard(self):
        options, bar, floor = SETS["arena-hard"]
        self.check("arena-hard accuracy", self.train_and_eval("arena-hard", options)["accuracy"], bar, floor)

    def test_clinc150(self):
        options, bar, floor = SETS["clinc150"]
        self.check("clinc150 domain accuracy", self.train_and_eval("clinc150", options)["accuracy"], bar, floor)

    def test_mmlu_pro_and_routing(self):
        options, bar, floor = SETS["mmlu-pro"]
        result = self.train_and_eval("mmlu-pro", options, [
            "--train", f"{DATA}/mmlu-pro.train.jsonl", "--models", f"{DATA}/mmlu-pro.models.json",
            "--max-active", "9", "--budget", "6", "--strong", "llama-3.1-8b-instruct", "--weak", "phi-3-mini"])
        self.check("mmlu-pro category accuracy", result["classifier"]["accuracy"], bar, floor)
        routed = result["routing"]["at_budget"]
        self.assertLessEqual(routed["mean_active_b"], 6.0)
        self.check("mmlu-pro routed accuracy, <= 9B experts, mean <= 6B", routed["accuracy"], ROUTED_BAR,
                   ROUTED_FLOOR)


if __name__ == "__main__":
    unittest.main()
