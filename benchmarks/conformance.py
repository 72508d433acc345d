"""Run the conformance kit on every registered method and print what it reports, with times.

    python benchmarks/conformance.py [METHOD ...]

One line per method (checks passed/failed, seconds), then one line per failed check and the
seconds each check took over the three architectures. The first method also pays for
importing the model classes; it is run twice, so its second time is the one to read.
"""
from __future__ import annotations

import sys
import warnings
from collections import defaultdict


def main(names: list[str]) -> int:
    warnings.filterwarnings("ignore")
    from suite.plugins import registry
    from suite.testing import check_method

    names = names or sorted(registry().methods)
    check_method(names[0], raise_on_failure=False)  # warm-up: imports, first-call set-up
    failed = 0
    for name in names:
        report = check_method(name, raise_on_failure=False)
        per_check = defaultdict(float)
        for r in report.results:
            per_check[r.check] += r.seconds
        print(report)
        print("  seconds per check: " + ", ".join(f"{c} {s:.2f}" for c, s in per_check.items()), flush=True)
        failed += not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
