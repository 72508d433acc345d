"""Retention in the report (``--retention``, :mod:`suite.measures.retention`): what each method kept
of the base model's answers on the harness's multiple-choice tasks.

Every run and the base answer the same questions, so methods are compared question by question
with the paired tests of the task scores (:mod:`.significance`): a method's mark on a question
is the mean over its ok seeds, and "below the base" is the two-sided sign-flip test against the
base's marks, on the base the run trained on (the float base, or the quantized one with
``--quantize``).
"""
from __future__ import annotations

import json
import math

import pandas as pd

from . import formatting as fmt
from .frames import base_key, base_retention, retention_answers, retention_frame
from .significance import compare, per_example, tied_for_best
from .tables import summary_of

NOTE = (
    "retention (with --retention): accuracy on lm-evaluation-harness multiple-choice tasks, scored by the harness "
    "itself on the model in memory (each choice's log-likelihood after the question), for the untouched base model "
    "once and for each final run's trained model; 'retention Δ' is the run's accuracy minus the base's on the same "
    "questions (negative: answers the base gave right and the run lost). 'vs base' is the paired sign-flip test of a "
    "method's per-question marks (mean over its seeds) against the base's. Forgetting measures the damage as a loss "
    "on running text; retention as lost answers on a benchmark."
)


def _tasks_of(results: pd.DataFrame, task: str) -> list[str]:
    """The harness tasks the runs of ``task`` were scored on."""
    names = set()
    for text in results.loc[(results.task == task) & (results.status == "ok"), "retention_tasks"].dropna():
        names |= set(json.loads(text))
    return sorted(names)


def evidence(records: list[dict], results: pd.DataFrame, task: str, order: list[str]):
    """``(base marks, {method: marks}, {method: base marks it is compared with})`` of ``task``: each
    question's mark (mean over seeds) for the base and every method with retention."""
    answers = retention_answers(retention_frame(records))
    bases = {key: r["run_id"] for key, r in base_retention(records).items()}
    key_of = {r["run_id"]: base_key(r) for r in records}
    ok = results[(results.task == task) & (results.status == "ok") & results.retention_tasks.notna()]
    marks, against = {}, {}
    for m in order:
        runs = ok[ok.method == m]
        if not len(runs):
            continue
        marks[m] = per_example(answers, runs.run_id)
        key = key_of.get(runs.run_id.iloc[0])
        against[m] = per_example(answers, [bases[key]]) if key in bases else pd.Series(dtype=float)
    first = next(iter(bases.values()), None)
    return (per_example(answers, [first]) if first else pd.Series(dtype=float)), marks, against


def table(records: list[dict], results: pd.DataFrame, stats: pd.DataFrame, task: str, order: list[str]) -> pd.DataFrame:
    """The base model's row, then one row per method: each harness task's accuracy, all questions,
    the change against the base and the paired test against it. Empty without retention."""
    if "retention_tasks" not in results:
        return pd.DataFrame()
    names = _tasks_of(results, task)
    if not names:
        return pd.DataFrame()
    base, marks, against = evidence(records, results, task, order)
    rows = {}
    base_tasks = next(iter(base_retention(records).values()), {}).get("retention", {}).get("tasks", {})
    if base_tasks:
        rows["base model"] = {**{n: fmt.number(base_tasks[n]["accuracy"]) if n in base_tasks else fmt.MISSING for n in names},
                              "all questions": fmt.number(base.mean()) if len(base) else fmt.MISSING,
                              "questions": str(len(base)), "retention Δ": "", "vs base": ""}
    ok = results[(results.task == task) & (results.status == "ok")]
    for m in marks:
        per_task = {}
        for text in ok.loc[ok.method == m, "retention_tasks"].dropna():
            for n, v in json.loads(text).items():
                per_task.setdefault(n, []).append(v["after"])
        row = {n: fmt.mean_std(_summary(per_task.get(n, []))) for n in names}
        row["all questions"] = fmt.mean_std(summary_of(stats, task, m, "retention_accuracy"))
        row["questions"] = str(len(marks[m]))
        row["retention Δ"] = fmt.mean_std(summary_of(stats, task, m, "retention_change"))
        row["vs base"] = _versus(marks[m], against[m])
        rows[m] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "method"
    return frame


def _summary(values: list[float]):
    from .stats import summarise

    return summarise(values)


def _versus(mine: pd.Series, base: pd.Series) -> str:
    """``below (p = 0.001)``, ``above (p = …)`` or ``not different (p = …)``: the two-sided paired test."""
    if not len(mine) or not len(base):
        return fmt.MISSING
    c = compare(mine, base)
    if not c.n:
        return fmt.MISSING
    word = ("below" if c.diff < 0 else "above") if c.differs else "not different"
    return f"{word} (p = {c.p_two_sided:.2g})"


def sentences(records: list[dict], results: pd.DataFrame, stats: pd.DataFrame, task: str, order: list[str]) -> list[str]:
    """The verdict on retention: which methods kept the most of the base's answers (tied by the
    paired test), and which lost answers against the base at 95% confidence."""
    if "retention_tasks" not in results or not _tasks_of(results, task):
        return []
    base, marks, against = evidence(records, results, task, order)
    means = {m: summary_of(stats, task, m, "retention_accuracy").mean for m in marks}
    means = {m: v for m, v in means.items() if math.isfinite(v)}
    if not means:
        return []
    best, _ = tied_for_best({m: marks[m] for m in means}, means)
    names = ", ".join(_tasks_of(results, task))
    head = (f"{task}, retention (lm-eval {names}; {len(base) or len(next(iter(marks.values())))} questions"
            + (f"; the base model answers {fmt.number(base.mean())}" if len(base) else "") + "): ")
    out = head + f"{_join(best[:1])} kept the most ({fmt.number(means[best[0]])})"
    out += f", tied with {_join(best[1:])}." if len(best) > 1 else "."
    lost, kept = [], []
    for m in [m for m in order if m in means]:
        if not len(against.get(m, ())):
            continue
        c = compare(marks[m], against[m])
        if c.differs and c.diff < 0:
            lost.append(f"{m} ({fmt.number(c.diff)}, p = {c.p_two_sided:.2g})")
        else:
            kept.append(m)
    if lost:
        out += f" Below the base at 95% confidence: {', '.join(lost)}."
    if kept:
        out += f" Not below it: {_join(kept)}."
    return [out]


def _join(names: list[str]) -> str:
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""
