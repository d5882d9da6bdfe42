"""Token-level fusion of the real experts on mixed documents (a math problem, some
code and a Shakespeare passage in one text, made by scripts/make-mixed-docs.py from
the dev splits of ../shared/corpora), measured by `coegate fusion eval` with the
committed router and selector (models/fusion-router.gguf, trained to complement the
experts, and models/fusion-selector.gguf; both on the train splits only):

- fusion reads every part with the right expert: `select`, `fusionroute` and `mix`
  each have a lower perplexity than every expert alone, than the router alone and than
  sequence-level routing (the category router's one expert for the whole text);
- the router's complementary logits help: `fusionroute` is below `select`;
- the evaluation is deterministic: a second run prints the same numbers.

Skips (77) without ../shared/corpora."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

COEGATE = os.environ.get("COEGATE", "build/coegate")
SHARED = os.environ.get("COEGATE_SHARED", "../shared")
MODELS = os.environ.get("COEGATE_MODELS", "models")
ROOT = os.path.dirname(os.path.abspath(MODELS))
CORPORA = os.path.join(SHARED, "corpora")
EXPERTS = ["math", "code", "writing"]


def evaluate(data, router, out):
    cmd = [COEGATE, "fusion", "eval", "--router", os.path.join(MODELS, "fusion-router.gguf"),
           *[a for e in EXPERTS for a in ("--expert", f"{e}={os.path.join(MODELS, e + '.gguf')}")],
           "--selector", os.path.join(MODELS, "fusion-selector.gguf"),
           "--category-router", router,
           "--data", data, "--decode-tokens", "0", "--json", out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr
    with open(out) as f:
        return {g["group"]: g for g in json.load(f)["groups"]}["mixed"]


class FusionOnMixedDocuments(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory(prefix="coegate-fusion-")
        cls.data = os.path.join(cls.dir.name, "mixed.jsonl")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make-mixed-docs.py"), cls.data,
                        "--corpora", CORPORA], check=True, capture_output=True)
        # The demo's category router, trained as scripts/demo.sh trains it.
        cls.router = os.path.join(cls.dir.name, "router.gguf")
        subprocess.run([COEGATE, "router", "train", "--data", os.path.join(ROOT, "configs", "demo-queries.jsonl"),
                        "--out", cls.router, "--buckets", "65536", "--dim", "32"], check=True, capture_output=True,
                       timeout=300)
        cls.result = evaluate(cls.data, cls.router, os.path.join(cls.dir.name, "a.json"))
        ppl = cls.result["ppl"]
        print("\nmixed documents, perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()))

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def test_fusion_beats_every_expert_and_sequence_routing(self):
        ppl = self.result["ppl"]
        baselines = {e: ppl[e] for e in EXPERTS}
        baselines["router"] = ppl["router"]
        baselines["sequence-routing"] = ppl["sequence-routing"]
        for mode in ("select", "fusionroute", "mix"):
            for name, value in baselines.items():
                with self.subTest(mode=mode, baseline=name):
                    self.assertLess(ppl[mode], value)
        # The oracle bounds every mode that picks one expert per token.
        self.assertLessEqual(ppl["oracle"], ppl["select"])
        self.assertGreater(self.result["oracle_agreement"], 0.5)
        self.assertAlmostEqual(sum(self.result["expert_share"].values()), 1.0, places=6)

    def test_fusionroute_below_select(self):
        ppl = self.result["ppl"]
        self.assertLess(ppl["fusionroute"], ppl["select"])

    def test_reproducible(self):
        again = evaluate(self.data, self.router, os.path.join(self.dir.name, "b.json"))
        self.assertEqual(again, self.result)


if __name__ == "__main__":
    if not os.path.isdir(CORPORA):
        print(f"skipped: {CORPORA} not found (the corpora live in ../shared beside the checkout)")
        sys.exit(77)
    unittest.main()
