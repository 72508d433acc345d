"""Score against forgetting: what replay (``--replay``, :mod:`suite.data.replay`) buys each method.

A figure per task with one point per method and replay setting (mean over ok seeds, ±1 std),
a line joining each method's replay settings from none to the largest fraction, and the
Pareto front (no other point forgets less and scores no less); and, per method with runs
without replay, one sentence of the verdict: the replay setting that keeps the score (not
below the runs without replay by the paired test) at the least forgetting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ..config import variants
from ..data.replay import OFF, parse
from . import figures
from . import formatting as fmt
from .significance import compare, per_example
from .tables import summary_of

SETTING = "replay"


@dataclass
class Point:
    name: str  # the report's name of the runs: "full + replay 0.3"
    line: str  # the method without the replay label: "full"
    replay: str  # "replay 0.3", "" without replay
    fraction: float  # 0 without replay


def places(records: list[dict]) -> dict[str, Point]:
    """Every final run's name in the report -> its place along the replay dimension."""
    out = {}
    for r in records:
        if (r.get("phase") or "final") != "final":
            continue
        line, label, value = variants.along(r, SETTING)
        out[variants.record_name(r)] = Point(variants.record_name(r), line, label, 0.0 if value == OFF else parse(value)[1])
    return out


def _points(task: str, stats: pd.DataFrame, order: list[str], where: dict[str, Point]) -> list:
    out = []
    for name in order:
        f, s = summary_of(stats, task, name, "forgetting"), summary_of(stats, task, name, "score")
        if name in where and f.n and s.n and math.isfinite(f.mean) and math.isfinite(s.mean):
            out.append((where[name], f, s))
    return out


def figure(task: str, stats: pd.DataFrame, order: list[str], where: dict[str, Point], score_label: str) -> str | None:
    """The task's score against forgetting; None when no run measured forgetting."""
    points = _points(task, stats, order, where)
    if not points:
        return None
    lines = sorted({p.line for p, _, _ in points})
    palette = figures.colors(lines)
    with figures._style():
        fig = figures._figure(7, 3.8 + 0.2 * figures._legend_rows(len(lines)))
        ax = fig.add_subplot()
        front = set(figures.pareto_front([(p.name, f.mean, s.mean) for p, f, s in points]))
        for line in lines:
            mine = sorted((x for x in points if x[0].line == line), key=lambda x: (x[0].fraction, x[0].name))
            color = palette[line]
            ax.plot([f.mean for _, f, _ in mine], [s.mean for _, _, s in mine], color=color, lw=1, alpha=0.6,
                    ls=figures.linestyle(palette, line), label=line)
            for p, f, s in mine:
                on = p.name in front
                ax.errorbar([f.mean], [s.mean], xerr=[f.std] if f.n > 1 else None, yerr=[s.std] if s.n > 1 else None,
                            fmt=figures.marker(palette, line), ms=7 if on else 6, color=color,
                            mfc=color if on else "white", mew=1.5, capsize=2, lw=1)
                ax.annotate(p.replay.removeprefix("replay ") or "none", (f.mean, s.mean), xytext=(4, 4),
                            textcoords="offset points", fontsize=7, color=color)
        fp = sorted((f.mean, s.mean) for p, f, s in points if p.name in front)
        if len(fp) > 1:
            ax.step([x for x, _ in fp], [y for _, y in fp], where="post", color="0.4", lw=1, ls="--", zorder=0)
        ax.set_xlabel("forgetting (nats per token on the side corpus; lower is better)")
        ax.set_ylabel(score_label)
        ax.margins(x=0.15, y=0.12)
        fig.legend(loc="outside lower center", ncols=min(len(lines), figures.LEGEND_COLUMNS), fontsize=8)
        fig.suptitle(f"{task}: {score_label} against forgetting (labels: replay fraction; filled, dashed: Pareto "
                     "front; bars: ±1 std)", x=0.01, ha="left", fontsize=9)
        return figures._svg(fig, f"tradeoff-{task}")


def sentences(task: str, score_name: str, results: pd.DataFrame, stats: pd.DataFrame, generations: pd.DataFrame,
              order: list[str], where: dict[str, Point]) -> list[str]:
    """Per method with runs without replay and with it: which replay setting keeps the score
    (not below no replay by the paired test) at the least forgetting, in words."""
    ok = results[(results.task == task) & (results.status == "ok")]
    points = _points(task, stats, order, where)
    out = []
    for line in sorted({p.line for p, _, _ in points}):
        mine = [x for x in points if x[0].line == line]
        reference = next((x for x in mine if not x[0].replay), None)
        if reference is None or len(mine) < 2:
            continue
        scores = {p.name: per_example(generations, ok[ok.method == p.name].run_id) for p, _, _ in mine}
        ref_scores = scores[reference[0].name]
        kept, lost = [reference], []
        for x in mine:
            if x is reference:
                continue
            c = compare(scores[x[0].name], ref_scores) if len(scores[x[0].name]) and len(ref_scores) else None
            (lost if c is not None and c.differs and c.diff < 0 else kept).append((*x, c) if c else x)
        best = min(kept, key=lambda x: (x[1].mean, x[0].fraction))
        f0, s0 = reference[1].mean, reference[2].mean
        head = f"{task}, {line}: "
        if best is reference:
            text = (head + f"no replay setting keeps the {score_name} at less forgetting than no replay "
                    f"(forgetting {fmt.number(f0)}, {score_name} {fmt.number(s0)})")
        else:
            p = best[3].p_two_sided if len(best) > 3 else math.nan
            text = (head + f"{best[0].replay} keeps the {score_name} ({fmt.number(best[2].mean)} against "
                    f"{fmt.number(s0)} without replay; paired test p = {p:.2g}) at the least forgetting "
                    f"({fmt.number(best[1].mean)} against {fmt.number(f0)} nats)")
        less = [x for x in lost if x[1].mean < best[1].mean]
        if less:
            text += "; " + ", ".join(f"{x[0].replay} forgets less ({fmt.number(x[1].mean)}) but its {score_name} is "
                                     f"lower ({fmt.number(x[2].mean)}, p = {x[3].p_two_sided:.2g})" for x in less)
        out.append(text + ".")
    return out
