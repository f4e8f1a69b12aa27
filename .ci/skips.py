"""Read a pytest JUnit report and fail on a skip CI does not expect.

Prints every skip reason seen, with its count. A module skipped at collection is never expected
(its tests would vanish from the count unseen); a test's skip is expected only for a reason in
EXPECTED: machine features this CI may lack, or the CPU-only checks on a machine with CUDA.
Usage: python .ci/skips.py REPORT.xml; exit 1 on an unexpected skip.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter

EXPECTED = (
    "needs a CUDA device",
    "checks the message without CUDA",
    "cannot mount a tmpfs here (no unprivileged user namespaces)",
    "this CPU has no AVX-512 BF16 and VBMI",
)
COLLECTION = "collection skipped"  # pytest's message for a module skipped while collected


def skips(report: str) -> Counter[tuple[str, str]]:
    """(where, reason) → count: where is "collection" or "test"."""
    seen: Counter[tuple[str, str]] = Counter()
    for case in ET.parse(report).iter("testcase"):
        for skipped in case.iter("skipped"):
            message = skipped.get("message", "")
            if message == COLLECTION:
                seen["collection", f"{case.get('name')}: {skipped.text}"] += 1
            else:
                seen["test", message] += 1
    return seen


def main(report: str) -> int:
    seen = skips(report)
    unexpected = 0
    for (where, reason), count in sorted(seen.items()):
        ok = where == "test" and reason in EXPECTED
        unexpected += not ok
        print(f"skip ({where}, {'expected' if ok else 'UNEXPECTED'}) x{count}: {reason}")
    if unexpected:
        print(f"{unexpected} unexpected skip reason(s): a test that should run did not")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
