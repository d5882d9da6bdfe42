#!/usr/bin/env python3
"""Prints one closing line, 'LABEL: N passed, N failed, N skipped', counting test
cases inside each meson test (CMocka and unittest report their own counts)."""
import json
import re
import sys

log, label = sys.argv[1], sys.argv[2]
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
        case_failed = sum(map(int, re.findall(r"(?:failures|errors)=(\d+)", out)))
        passed += int(unittest.group(1)) - case_failed - skip
        skipped += skip
    elif result == "OK":
        passed += 1
    if result != "OK" and case_failed == 0:
        case_failed = 1  # crashed or timed out before it reported its own failures
    failed += case_failed
print(f"{label}: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
