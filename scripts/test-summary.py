#!/usr/bin/env python3
"""Prints 'LABEL: N passed, N failed, N skipped' for meson test logs, counting the
test cases inside each meson test (CMocka and unittest report their own counts), then
one line per skipped test or test case with the reason it gave.

usage: test-summary.py LABEL testlog.json [testlog.json ...]"""
import json
import re
import sys


def skip_reasons(name, out):
    """(test, reason) for each unittest case skipped in out."""
    found, case = [], None
    for line in out.splitlines():
        m = re.match(r"(test\w*) \(", line)
        if m:
            case = m.group(1)
        m = re.search(r"\.\.\. skipped '(.*)'$", line)
        if m:
            found.append((f"{name} / {case}" if case else name, m.group(1)))
    return found


def count(log, reasons):
    passed = failed = skipped = 0
    for line in open(log):
        t = json.loads(line)
        out = (t.get("stdout") or "") + (t.get("stderr") or "")
        result = t["result"]
        if result == "SKIP":
            skipped += 1
            said = [x.strip() for x in out.splitlines() if x.strip()]
            reasons.append((t["name"], said[-1] if said else "no reason given"))
            continue
        reasons.extend(skip_reasons(t["name"], out))
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
reasons = []
totals = [sum(x) for x in zip(*(count(log, reasons) for log in logs))]
print(f"{label}: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
for name, why in reasons:
    print(f"  skipped {name}: {why}")
sys.exit(1 if totals[1] else 0)
