#!/usr/bin/env python3
"""Prints 'LABEL: N passed, N failed, N skipped' for meson test logs, counting the
test cases inside each meson test (CMocka and unittest report their own counts).

usage: test-summary.py LABEL testlog.json [testlog.json ...]"""
import json
import re
import sys


def count(log):
    passed = failed = skipped = 0
    for line in open(log):
        t = json.loads(line)
        out = (t.get("stdout") or "") + (t.get("stderr") or "")
        result = t["result"]
        if result == "SKIP":
            skipped += 1
            continue
        case_failed = 0
        cmocka = re.findall(r"\[  PASSED  \] (\d+) test", out)
        unittest = re.search(r"^Ran (\d+) tests?", out, re.M)
        if cmocka:
            passed += sum(map(int, cmocka))
            case_failed = sum(map(int, re.findall(r"\[  FAILED  \] (\d+) test", out)))
        elif unittest:
            skip = sum(map(int, re.findall(r"skipped=(\d+)", out)))
            # "expected failures" are cases whose known failure happened (they pass);
            # an unexpected success fails the run, as unittest itself says.
            case_failed = sum(map(int, re.findall(r"(?<!expected )(?:failures|errors)=(\d+)", out)))
            case_failed += sum(map(int, re.findall(r"unexpected successes=(\d+)", out)))
            passed += int(unittest.group(1)) - case_failed - skip
            skipped += skip
        elif result == "OK":
            passed += 1
        if result != "OK" and case_failed == 0:
            case_failed = 1  # crashed or timed out before it reported its own failures
        failed += case_failed
    return passed, failed, skipped


label, logs = sys.argv[1], sys.argv[2:]
totals = [sum(x) for x in zip(*(count(log) for log in logs))]
print(f"{label}: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
sys.exit(1 if totals[1] else 0)
