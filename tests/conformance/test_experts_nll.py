"""The dev perplexity table of the real experts (models/dev-ppl.json, printed by
scripts/train_experts.py with PyTorch) recomputed by coegate itself (`coegate model
nll`) on the whole dev splits of ../shared/corpora: the two agree within 1% on every
cell, and on every domain its own expert has the lowest perplexity, at most 0.7 times
the best other expert's. Skips (77) without ../shared/corpora."""

import json
import os
import subprocess
import sys
import unittest

COEGATE = os.environ.get("COEGATE", "build/coegate")
SHARED = os.environ.get("COEGATE_SHARED", "../shared")
MODELS = os.environ.get("COEGATE_MODELS", "models")
CORPORA = os.path.join(SHARED, "corpora")
DOMAINS = ["math", "code", "writing"]
NAMES = DOMAINS + ["generalist"]


class ExpertsNll(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(MODELS, "dev-ppl.json")) as f:
            cls.script = json.load(f)
        cmd = [COEGATE, "model", "nll", *[os.path.join(MODELS, f"{n}.gguf") for n in NAMES], "--json",
               "--ctx", str(cls.script["ctx"])]
        for d in DOMAINS:
            cmd += ["--data", os.path.join(CORPORA, f"{d}.dev.jsonl")]
        if cls.script.get("ppl_rows"):
            cmd += ["--limit", str(cls.script["ppl_rows"])]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        cls.coegate = {n: m["groups"] for n, m in zip(NAMES, out["models"])}

    def test_agrees_with_the_training_script(self):
        for n in NAMES:
            for d in DOMAINS:
                ours, theirs = self.coegate[n][d], self.script["models"][n]["dev"][d]
                with self.subTest(model=n, domain=d):
                    self.assertEqual(ours["tokens"], theirs["tokens"])
                    ratio = ours["ppl"] / theirs["ppl"]
                    print(f"{n:10} on {d:7}: coegate {ours['ppl']:8.3f}, PyTorch {theirs['ppl']:8.3f} "
                          f"({100 * (ratio - 1):+.2f}%)")
                    self.assertLess(abs(ratio - 1), 0.01)

    def test_each_domain_is_best_served_by_its_expert(self):
        for d in DOMAINS:
            own = self.coegate[d][d]["ppl"]
            best_other = min(self.coegate[e][d]["ppl"] for e in DOMAINS if e != d)
            with self.subTest(domain=d):
                print(f"{d:7}: own expert {own:.2f}, best other expert {best_other:.2f} "
                      f"({own / best_other:.2f}x), generalist {self.coegate['generalist'][d]['ppl']:.2f}")
                self.assertLessEqual(own, 0.7 * best_other)
                self.assertLess(own, self.coegate["generalist"][d]["ppl"])


if __name__ == "__main__":
    if not os.path.isdir(CORPORA):
        print(f"skipped: {CORPORA} not found (the corpora live in ../shared beside the checkout)")
        sys.exit(77)
    unittest.main()
