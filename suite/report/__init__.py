"""The report stage: every report file of the output contract, rebuilt from ``runs/*/record.json`` alone.

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

from ..atomic import atomic_path, remedy, write_text_atomic
from . import content, html_page, markdown
from .frames import EXTRA_COLUMNS, RESULT_COLUMNS, baselines_frame, curves_frame, generations_frame, results_frame, retention_frame
from .sources import gather

__all__ = ["write_report", "RESULT_COLUMNS", "EXTRA_COLUMNS", "results_frame", "curves_frame", "generations_frame",
           "baselines_frame"]


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def write_report(dirs: list[Path], out: Path) -> pd.DataFrame:
    """Read the records of ``dirs`` and write every report file into ``out``; returns the results.

    Several ``dirs`` are merged (see :mod:`suite.report.sources` for the rules; the same run id
    in two directories is a :class:`~suite.errors.UsageError`).
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        records = gather([Path(d) for d in dirs], out)
        report = content.build(records)
        results = report.results
        _csv(results, out / "results.csv")  # every file whole or not at all (suite.atomic)
        with atomic_path(out / "results.parquet") as tmp:
            results.to_parquet(tmp, index=False)
        _csv(curves_frame(records), out / "curves.csv")
        _csv(generations_frame(records), out / "generations.csv")
        _csv(baselines_frame(records)[0], out / "baselines.csv")
        answered = retention_frame(records)
        if len(answered):  # --retention: each harness question's correctness, per run and for the base
            _csv(answered, out / "retention.csv")
        write_text_atomic(out / "summary.md", markdown.render(report))
        write_text_atomic(out / "report.html", html_page.render(report))
    except OSError as e:  # a full disk: say what to do once there is room
        remedy(e, out)
        raise
    return results
