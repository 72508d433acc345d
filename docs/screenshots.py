"""Retake the docs' pictures of the reference report (``docs/images/report*.png``).

    python docs/screenshots.py            # needs chromium (apt-get install chromium fonts-wqy-zenhei)

The report is rebuilt from ``reports/reference/runs`` into a temporary directory with the
installed leitai (``leitai report``; the committed report is left as it is), so the pictures
show what today's renderer makes of the reference records. Headless Chromium is driven as the
report test drives it (``tests/headless.py``), at 1,300 CSS pixels wide.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from headless import evaluate, find_chromium, open_page, screenshot  # noqa: E402

WIDTH = 1300
#: the top of the report: its heading, the verdict and the first task's table
TOP = "return Math.ceil(document.querySelector('details').getBoundingClientRect().bottom + 12)"
#: the accuracy-against-cost figure, by its aria-label
PARETO = """const r = document.querySelector("svg[aria-label^='pareto-']").closest('figure').getBoundingClientRect();
return {x: Math.floor(r.left), y: Math.floor(r.top + window.scrollY), width: Math.ceil(r.width), height: Math.ceil(r.height)};"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=ROOT / "reports" / "reference", type=Path, help="a shootout directory")
    parser.add_argument("--out", default=ROOT / "docs" / "images", type=Path)
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium fonts-wqy-zenhei)")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        subprocess.run([sys.executable, "-m", "suite.cli", "report", str(args.runs), "--out", str(report)],
                       check=True, stdout=subprocess.DEVNULL)
        args.out.mkdir(parents=True, exist_ok=True)
        with open_page(chromium, report / "report.html", WIDTH, 900) as (b, s):
            top = evaluate(b, s, TOP)
        with open_page(chromium, report / "report.html", WIDTH, top) as (b, s):
            (args.out / "report.png").write_bytes(screenshot(b, s))
            (args.out / "report-pareto.png").write_bytes(screenshot(b, s, evaluate(b, s, PARETO)))
    print(f"wrote {args.out / 'report.png'} and {args.out / 'report-pareto.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
