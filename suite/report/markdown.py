"""``summary.md``: the report's tables as Markdown, readable in a terminal (figures: report.html).

Text from data or plugins is made inert for Markdown renderers: ``&``, ``<`` and ``>`` become
entities, ``|`` is escaped and newlines show as ``↵`` so a cell stays one table cell.
"""
from __future__ import annotations

import re

import pandas as pd

from .content import NOTES, OVERALL_NOTE, RAN_NOTE, TURNS_NOTE, Report
from .formatting import numeric_column
from .retention import NOTE as RETENTION_NOTE

#: answers-table cells longer than this are cut in summary.md (report.html has them whole)
ANSWER_CHARS = 120



def cell(value) -> str:
    """One table cell's text, safe inside a Markdown table."""
    text = "" if value is None or (isinstance(value, float) and value != value) else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return re.sub(r"\r\n|\r|\n", " ↵ ", text)


def _cut(value) -> str:
    text = "" if value is None or (isinstance(value, float) and value != value) else str(value)
    return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"


def table(df: pd.DataFrame, index: bool = True, left: tuple = ()) -> str:
    """``df`` as a pipe table, numbers right-aligned (except ``left`` columns)."""
    frame = df.reset_index() if index else df
    align = ["left" if c in left or not numeric_column(frame[c].map(cell)) else "right" for c in frame.columns]
    frame = frame.map(cell)
    frame.columns = [cell(c) for c in frame.columns]
    return frame.to_markdown(index=False, colalign=align, disable_numparse=True)


def render(report: Report) -> str:
    lines = ["# leitai shootout", ""]
    lines += [f"- **{k}**: {cell(v)}" for k, v in report.facts] + [""]
    if report.results.empty:
        return "\n".join(lines)
    for w in report.warnings:
        lines += [f"> **Warning:** {cell(w)}", ""]
    verdicts = [sentence for section in report.sections if section.verdict for sentence in section.verdict.sentences]
    if verdicts:
        lines += ["## Verdict", ""] + [cell(v) for v in verdicts] + ["", "(How the tests work: the notes at the end.)", ""]
    lines += ["Figures (loss curves, Pareto fronts, score against forgetting, tuning, memory) are in `report.html`.", ""]
    if report.overall is not None:
        lines += ["## Overall", "", table(report.overall), "", cell(OVERALL_NOTE), ""]
    for s in report.sections:
        lines += [f"## {cell(s.task)} ({cell(s.score_name)})", "", table(s.table), ""]
        lines += [f"{cell(n)}." for n in s.notes] + ([""] if s.notes else [])
        if s.verdict is not None and len(s.verdict.pairwise) > 1:
            lines += ["### Pairwise differences", "", "Score of the row minus the column's, mean over the shared test "
                      "examples; * where a paired test says they differ (p < 0.05).", "",
                      table(s.verdict.pairwise), ""]
        if not s.retention.empty:
            lines += ["### Retention", "", table(s.retention), "", cell(RETENTION_NOTE), ""]
        if not s.turns.empty:
            lines += ["### Score by turn", "", table(s.turns), "", cell(TURNS_NOTE), ""]
        if not s.ran.empty:
            lines += ["### What ran", "", cell(RAN_NOTE), "", table(s.ran, index=False, left=("seeds", "what ran")), ""]
        if not s.answers.empty:
            lines += ["### Answers side by side", "",
                      "The same test prompts for every method (the run with the lowest seed answers); "
                      f"texts cut at {ANSWER_CHARS} characters (report.html and generations.csv have them whole).",
                      "", table(s.answers.map(_cut).replace("", "(empty)"), index=False), ""]
        if not s.more.empty:
            lines += ["### More measurements", "", table(s.more), ""]
    if not report.failed.empty:
        lines += ["## Runs that did not finish ok", "", table(report.failed, index=False), ""]
    lines += ["## How to read the tables", ""] + [f"- {cell(n)}" for n in NOTES] + [""]
    env = report.environments
    lines += ["## Environment", "", table(env, index=False, left=tuple(c for c in env.columns if c != "runs")), ""]
    return "\n".join(lines)
