"""Every report file of the output contract, rebuilt from ``runs/*/record.json`` alone.

``write_report(dirs, out)`` is the one entry point: the runner calls it at the end of every
shootout (and after Ctrl-C), ``leitai report DIR [DIR ...]`` calls it to rebuild or merge.
The same records give byte-identical files: rows are sorted, nothing carries a timestamp,
and the figures' SVG is written deterministically.

Modules: :mod:`.sources` (reading and merging directories), :mod:`.frames` (results, curves,
generations), :mod:`.stats` (mean, std, t interval), :mod:`.formatting`, :mod:`.tables`,
:mod:`.figures`, :mod:`.environment` (versions footer and warnings), :mod:`.content` (what a
report says), :mod:`.markdown` and :mod:`.html_page` (its two renderings).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import content, html_page, markdown
from .frames import EXTRA_COLUMNS, RESULT_COLUMNS, baselines_frame, curves_frame, generations_frame, results_frame
from .sources import gather

__all__ = ["write_report", "RESULT_COLUMNS", "EXTRA_COLUMNS", "results_frame", "curves_frame", "generations_frame",
           "baselines_frame"]


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


def write_report(dirs: list[Path], out: Path) -> pd.DataFrame:
    """Read the records of ``dirs`` and write every report file into ``out``; returns the results.

    Several ``dirs`` are merged (see :mod:`suite.report.sources` for the rules; the same run id
    in two directories is a :class:`~suite.errors.UsageError`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = gather([Path(d) for d in dirs], out)
    report = content.build(records)
    results = report.results
    results.to_csv(out / "results.csv", index=False, lineterminator="\n")
    results.to_parquet(out / "results.parquet", index=False)
    curves_frame(records).to_csv(out / "curves.csv", index=False, lineterminator="\n")
    generations_frame(records).to_csv(out / "generations.csv", index=False, lineterminator="\n")
    baselines_frame(records)[0].to_csv(out / "baselines.csv", index=False, lineterminator="\n")
    _write(out / "summary.md", markdown.render(report))
    _write(out / "report.html", html_page.render(report))
    return results
