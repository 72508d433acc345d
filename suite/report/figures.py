"""The report's figures (matplotlib), as SVG markup to inline in ``report.html``.

Chinese text: the SVG keeps text as text (``svg.fonttype = "none"``), so the browser that
shows the report draws it with its own fonts, exactly like the Chinese in the report's tables.
Making the figures therefore needs no CJK font at all; if one is installed, matplotlib uses it
only to measure text for the layout. The SVG names DejaVu Sans first, then common CJK
families; the browser falls back per character.

Determinism: a fixed ``svg.hashsalt``, no date in the metadata, and ids prefixed per figure
(several SVGs share one HTML document), so rebuilding a report gives identical files.
"""
from __future__ import annotations

import html
import io
import logging
import math
import re
import warnings
from contextlib import contextmanager

import pandas as pd

from . import formatting as fmt
from .tables import summary_of

#: CJK families the browser may have, in order of preference (also used by report.html's CSS)
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
    "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei", "SimHei", "Droid Sans Fallback",
)
#: steps in the moving average of the loss curves, as a fraction of the run's steps
SMOOTHING = 0.05


def _families() -> list[str]:
    """DejaVu Sans (matplotlib ships it) and whichever CJK families this machine has."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans"] + [f for f in CJK_FAMILIES if f in installed]


def _rc() -> dict:
    return {
        "svg.fonttype": "none",
        "svg.hashsalt": "leitai",
        "font.family": _families(),
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.frameon": False,
    }


@contextmanager
def _style():
    """The figures' rc settings; quiet about CJK fonts that have a single weight (WenQuanYi)."""
    import matplotlib

    log = logging.getLogger("matplotlib.font_manager")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with matplotlib.rc_context(_rc()):
            yield
    finally:
        log.setLevel(level)


def _svg(fig, name: str) -> str:
    """``fig`` as SVG markup for inlining: no XML prolog, ids unique to ``name``, scalable."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        # no CJK font for the layout: text is still written as text, the browser draws it
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        # tight: whatever reaches past the figure's edge (a long legend, a title) widens the picture, never cut
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight", pad_inches=0.1)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", name) + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{prefix}{m.group(1)})", svg)
    svg = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'<svg([^>]*?) width="[^"]+" height="[^"]+"', r'<svg\1', svg, count=1)
    return svg.replace("<svg", f'<svg role="img" aria-label="{html.escape(name, quote=True)}"', 1)


#: with more than ten methods, the colours repeat with another marker and line style
MARKERS = ("o", "s", "^", "D", "v")
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
#: legend entries beside a plot before the legend moves below it, in columns (the loss
#: curves' labels are longer: they carry the number of seeds)
LEGEND_INSIDE = 8
LEGEND_COLUMNS = 5
LOSS_LEGEND_COLUMNS = 4


def colors(methods: list[str]) -> dict[str, str]:
    """One colour per method, the same in every figure (by sorted name): tab10's ten strong
    colours, repeated past ten methods with another marker and line style (:func:`marker`,
    :func:`linestyle`), so that 20+ methods stay apart without pale colours."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    return {m: _hex(palette[i % len(palette)]) for i, m in enumerate(sorted(methods))}


def _round(palette: dict[str, str], method: str) -> int:
    """How many times the colours went round before ``method`` (its place in ``palette`` // 10)."""
    return list(palette).index(method) // 10


def marker(palette: dict[str, str], method: str) -> str:
    return MARKERS[_round(palette, method) % len(MARKERS)]


def linestyle(palette: dict[str, str], method: str):
    return LINESTYLES[_round(palette, method) % len(LINESTYLES)]


def _legend_rows(count: int, columns: int = LEGEND_COLUMNS) -> int:
    return math.ceil(count / columns)


def legend_columns(labels: list[str], most: int, width: float = 7, fontsize: float = 8) -> int:
    """How many legend columns of ``labels`` fit across a figure ``width`` inches wide (at most
    ``most``): a legend wider than its figure is cut at both edges. A character is counted at
    0.62 em (DejaVu Sans's mean; a CJK character, 1 em, as two), plus 0.45 in of marker and gap
    per column."""
    def inches(label: str) -> float:
        return sum(2 if ord(ch) > 0x2E80 else 1 for ch in label) * 0.62 * fontsize / 72 + 0.45

    widest = max((inches(label) for label in labels), default=1)
    return max(1, min(most, len(labels) or 1, int(width * 0.95 // widest)))


def _hex(rgb) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb[:3])


def _figure(width: float, height: float, **kw):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", **kw)


def loss_curves(task: str, results: pd.DataFrame, curves: pd.DataFrame, order: list[str],
                palette: dict[str, str], class_prior: float | None = None) -> str | None:
    """Training loss of every method on ``task``: mean over ok seeds, a ±1 std band, the dev
    loss as a marker at the last step. Step losses are smoothed by a centred moving average.
    ``class_prior``: the loss of knowing a closed answer set's format but not the labels, drawn
    as a line (a curve that ends on it learned the format, not the task). A method whose loss
    was still falling at the end (:func:`suite.measures.diagnostics.learning_tail`) says so, with how
    many seeds, in the legend."""
    ok = results[(results.task == task) & (results.status == "ok")]
    train = curves[(curves.split == "train") & curves.run_id.isin(ok.run_id)]
    if train.empty:
        return None
    methods = [m for m in order if m in set(ok.method)]
    below, columns = _curve_legend(methods)
    with _style():
        fig = _figure(7, 3.6 + (0.2 * _legend_rows(len(methods), columns) if below else 0))
        ax = fig.add_subplot()
        window = 1
        for method in order:
            runs = ok[ok.method == method].run_id
            per_run = {}
            for rid in runs:
                c = train[train.run_id == rid].set_index("step")["loss"].sort_index()
                if len(c):
                    window = max(1, round(len(c) * SMOOTHING))
                    per_run[rid] = c.rolling(window, center=True, min_periods=1).mean()
            if not per_run:
                continue
            frame = pd.DataFrame(per_run)
            mean, std = frame.mean(axis=1), frame.std(axis=1)
            n = frame.shape[1]
            flags = ok.loc[ok.method == method, "still_learning"] if "still_learning" in ok else pd.Series([], dtype=str)
            learning = int((flags.astype(str) == "True").sum())  # suite.measures.diagnostics.learning_tail
            ax.plot(mean.index, mean.values, color=palette[method], ls=linestyle(palette, method), lw=1.4,
                    label=f"{method} (n={n}{f'; still learning: {learning}' if learning else ''})")
            if n > 1:
                ax.fill_between(mean.index, (mean - std).values, (mean + std).values, color=palette[method],
                                alpha=0.18, lw=0)
            dev = curves[(curves.split == "dev") & curves.run_id.isin(runs)]
            dev = dev[dev.step == dev.groupby("run_id").step.transform("max")]  # each run's end
            if len(dev):
                ax.errorbar([dev.step.max()], [dev.loss.mean()], yerr=[dev.loss.std()] if len(dev) > 1 else None,
                            fmt=marker(palette, method), color=palette[method], ms=4, capsize=2)
        if class_prior is not None and math.isfinite(class_prior):
            ax.axhline(class_prior, color="0.35", lw=1, ls=":", zorder=0,
                       label=f"class prior ({fmt.number(class_prior)}): the format, not the task")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        smooth = f"moving average of {window} steps" if window > 1 else "per step"
        ax.set_title(f"{task}: training loss ({smooth}; ● dev loss at the end)", loc="left")
        if below:  # many methods: a legend in columns under the plot, not over the curves
            fig.legend(loc="outside lower center", ncols=columns, fontsize=8)
        else:
            ax.legend(loc="upper right", fontsize=8)
        return _svg(fig, f"loss-{task}")


def _curve_legend(methods: list[str]) -> tuple[bool, int]:
    """Where a curve figure's legend goes (under the plot when many methods would cover the
    curves) and in how many columns."""
    return len(methods) > LEGEND_INSIDE, legend_columns([f"{m} (n=10)" for m in methods], LOSS_LEGEND_COLUMNS)


def dev_curves(task: str, results: pd.DataFrame, curves: pd.DataFrame, order: list[str],
               palette: dict[str, str], score_label: str, yardsticks=()) -> str | None:
    """The dev score of every method on ``task`` at each evaluation (``--eval-every``), against the
    step and against the training seconds so far: mean over ok seeds, a ±1 std band, and a grey
    line at each of ``yardsticks`` (``(name, score)``: the best baseline, the linear probe); None
    when no run was evaluated during training."""
    ok = results[(results.task == task) & (results.status == "ok")]
    dev = curves[(curves.split == "dev") & curves.run_id.isin(ok.run_id) & curves.score.notna()]
    if dev.empty or dev.groupby("run_id").size().max() < 2:
        return None
    methods = [m for m in order if m in set(ok.method)]
    below, columns = _curve_legend(methods)
    with _style():
        fig = _figure(9, 3.4 + (0.2 * _legend_rows(len(methods), columns) if below else 0))
        by_step, by_time = fig.subplots(1, 2, sharey=True)
        for method in methods:
            points = dev[dev.run_id.isin(ok[ok.method == method].run_id)]
            if points.empty:
                continue
            grouped = points.groupby("step")
            mean, std, seconds = grouped.score.mean(), grouped.score.std().fillna(0), grouped.seconds.mean()
            n = points.run_id.nunique()
            style = dict(color=palette[method], ls=linestyle(palette, method), marker=marker(palette, method), ms=3,
                         lw=1.4)
            by_step.plot(mean.index, mean.values, label=f"{method} (n={n})", **style)
            by_time.plot(seconds.values, mean.values, **style)
            if n > 1:
                for ax, x in ((by_step, mean.index), (by_time, seconds.values)):
                    ax.fill_between(x, (mean - std).values, (mean + std).values, color=palette[method], alpha=0.18,
                                    lw=0)
        for (name, value), dashes in zip(yardsticks, ("--", ":")):
            for ax in (by_step, by_time):
                ax.axhline(value, color="0.45", ls=dashes, lw=1)
            by_step.annotate(f"{name} {value:.3f} (test)", (0.01, value), xycoords=("axes fraction", "data"),
                             xytext=(0, 2), textcoords="offset points", fontsize=7, color="0.35")
        by_step.set_xlabel("step")
        by_time.set_xlabel("training seconds (evaluation not counted)")
        by_step.set_ylabel(f"dev {score_label}")
        by_step.set_title(f"{task}: dev {score_label} during training", loc="left")
        if below:
            fig.legend(loc="outside lower center", ncols=columns, fontsize=8)
        else:
            by_step.legend(loc="lower right", fontsize=8)
        return _svg(fig, f"dev-{task}")


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the front of (cost, score) points: no other point costs no more and scores no
    less with one of the two strictly better. Lower cost and higher score are better."""
    front = []
    for name, cost, score in points:
        dominated = any(
            c <= cost and s >= score and (c < cost or s > score) for other, c, s in points if other != name
        )
        if not dominated:
            front.append(name)
    return front


def pareto(task: str, results: pd.DataFrame, stats: pd.DataFrame, order: list[str],
           palette: dict[str, str], score_label: str, verdict=None) -> str | None:
    """Score against trainable parameters, against peak memory and, with ``--retention``, against the
    retention lost (the base's accuracy minus the run's, :mod:`suite.measures.retention`), the front marked; methods
    not above the best baseline (``verdict``) drawn with a cross, the best baseline as a line."""
    from matplotlib.ticker import EngFormatter

    panels = (("trainable_params", "trainable parameters"), ("peak_memory_bytes", "peak memory (MB)"))
    if "retention_change" in results and results.loc[results.task == task, "retention_change"].notna().any():
        panels += (("retention_change", "retention lost (accuracy)"),)  # --retention: lost answers as a cost
    below = set(verdict.not_above()) if verdict is not None else set()
    labels = [f"{m} (not above baseline)" if m in below else m for m in order]
    if verdict is not None and verdict.baseline:
        labels.append(f"best baseline: {verdict.baseline[0]}")
    columns = legend_columns(labels, LEGEND_COLUMNS)
    with _style():
        fig = _figure(3.5 * len(panels), 3.4 + 0.2 * _legend_rows(len(labels), columns))
        axes = fig.subplots(1, len(panels), sharey=True)
        drawn = False
        for ax, (metric, label) in zip(axes, panels):
            scale = 1e6 if metric.endswith("_bytes") else -1 if metric == "retention_change" else 1  # lost: −Δ
            points, errs = [], {}
            for m in order:
                cost, score = summary_of(stats, task, m, metric), summary_of(stats, task, m, "score")
                if cost.n and score.n and math.isfinite(cost.mean) and math.isfinite(score.mean):
                    points.append((m, cost.mean / scale, score.mean))
                    errs[m] = (cost.std / abs(scale) if cost.n > 1 else 0.0, score.std if score.n > 1 else 0.0)
            if not points:
                continue
            drawn = True
            front = set(pareto_front(points))
            below = set(verdict.not_above()) if verdict is not None else set()
            for m, x, y in points:
                xerr, yerr = errs[m]
                on = m in front
                ax.errorbar([x], [y], xerr=[xerr] if xerr else None, yerr=[yerr] if yerr else None,
                            fmt="X" if m in below else marker(palette, m), ms=7 if on else 6, color=palette[m],
                            mfc=palette[m] if on else "white", mew=1.5, capsize=2, lw=1, label=m)
            if verdict is not None and verdict.baseline:
                ax.axhline(verdict.baseline[1], color="0.35", lw=1, ls=":", zorder=0)
            fp = sorted((x, y) for m, x, y in points if m in front)
            if len(fp) > 1:
                ax.step([p[0] for p in fp], [p[1] for p in fp], where="post", color="0.4", lw=1, ls="--", zorder=0)
            xs = [x for _, x, _ in points]
            if min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
            if metric == "trainable_params":
                ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 5.19M, not 1e6 offsets
            ax.set_xlabel(label)
            ax.margins(x=0.15, y=0.12)
        if not drawn:
            return None
        axes[0].set_ylabel(score_label)
        # a legend, not labels at the points: methods with equal scores would write over each other
        from matplotlib.lines import Line2D

        names = list(dict.fromkeys(m for ax in axes for m in ax.get_legend_handles_labels()[1]))
        below = set(verdict.not_above()) if verdict is not None else set()
        handles = [Line2D([], [], marker="X" if m in below else marker(palette, m), ls="", color=palette[m]) for m in names]
        labels = [f"{m} (not above baseline)" if m in below else m for m in names]
        if verdict is not None and verdict.baseline:
            handles.append(Line2D([], [], color="0.35", lw=1, ls=":"))
            labels.append(f"best baseline: {verdict.baseline[0]}")
        fig.legend(handles, labels, loc="outside lower center", ncols=legend_columns(labels, LEGEND_COLUMNS), fontsize=8)
        fig.suptitle(f"{task}: {score_label} against cost (filled, dashed: Pareto front; bars: ±1 std; "
                     "✕: not above the best baseline)", x=0.01, ha="left", fontsize=9)
        return _svg(fig, f"pareto-{task}")


def sensitivity(task: str, tuning_runs: pd.DataFrame, chosen: dict, palette: dict[str, str]) -> str | None:
    """Dev score and dev loss of every tuning run on ``task`` against its learning rate (or
    against the setting's index where lr was not swept), one line per method (and per value of
    its other swept settings), mean over tuning seeds; the chosen setting ringed, and labelled
    ``edge`` where it lies at an edge of the grid tried (its bound reached, or none declared)."""
    import json

    ok = tuning_runs[(tuning_runs.task == task) & (tuning_runs.status == "ok")]
    if ok.empty or not chosen:
        return None
    with _style():
        fig = _figure(7, 3.6)
        score_ax, loss_ax = fig.subplots(1, 2)
        log_x = True
        for method in sorted(chosen):
            info = chosen[method]
            keys = info.get("keys") or []
            entries = [e for e in info.get("settings", []) if e.get("ok")]
            if not entries:
                continue
            others = sorted(k for k in keys if k != "lr")
            groups: dict[str, list] = {}
            for e in entries:
                groups.setdefault(json.dumps({k: e["setting"].get(k) for k in others}, sort_keys=True, default=str),
                                  []).append(e)
            for group_key, group in sorted(groups.items()):
                if "lr" in keys:
                    group = sorted(group, key=lambda e: e["setting"]["lr"])
                    xs = [float(e["setting"]["lr"]) for e in group]
                else:
                    xs, log_x = list(range(1, len(group) + 1)), False
                rest = json.loads(group_key)
                label = method + ("" if not rest else " (" + ", ".join(f"{k} {v}" for k, v in rest.items()) + ")")
                label += f" [edge: {', '.join(info['edge'])}]" if info.get("edge") else ""
                for ax, metric in ((score_ax, "dev_score"), (loss_ax, "dev_loss")):
                    ys = [e[metric] for e in group]
                    ax.plot(xs, ys, "o-", color=palette.get(method, "0.3"), lw=1.2, ms=3.5,
                            label=label if ax is score_ax else None)
                    for x, e in zip(xs, group):
                        if e["setting"] == info.get("setting"):
                            ax.plot([x], [e[metric]], "o", ms=10, mfc="none", mec=palette.get(method, "0.3"), mew=1.5)
                            if info.get("edge"):  # still at an edge of the grid after extending it
                                ax.annotate("edge", (x, e[metric]), xytext=(5, 5), textcoords="offset points",
                                            fontsize=7, color=palette.get(method, "0.3"))
        for ax, label in ((score_ax, "dev score"), (loss_ax, "dev loss")):
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel("learning rate" if log_x else "setting")
            ax.set_ylabel(label)
        if score_ax.get_legend_handles_labels()[1]:
            score_ax.legend(fontsize=7, loc="best")
        fig.suptitle(f"{task}: tuning runs on the dev split (ringed: the setting each method keeps; "
                     "edge: at an edge of the grid tried)",
                     x=0.01, ha="left", fontsize=9)
        return _svg(fig, f"sensitivity-{task}")


def memory_bars(tasks: list[str], results: pd.DataFrame, stats: pd.DataFrame, orders: dict[str, list[str]],
                palette: dict[str, str]) -> str | None:
    """Peak memory of every method (mean over ok seeds, ±1 std), one panel per task."""
    rows = [(t, [(m, summary_of(stats, t, m, "peak_memory_bytes")) for m in orders[t]]) for t in tasks]
    rows = [(t, [(m, s) for m, s in ms if s.n]) for t, ms in rows]
    rows = [(t, ms) for t, ms in rows if ms]
    if not rows:
        return None
    kinds = " / ".join(sorted(results.loc[results.status == "ok", "memory_kind"].dropna().unique()))
    with _style():
        height = 0.9 + sum(0.28 * len(ms) + 0.5 for _, ms in rows)
        fig = _figure(7, height)
        axes = fig.subplots(len(rows), 1, squeeze=False, sharex=True)[:, 0]
        for ax, (task, ms) in zip(axes, rows):
            ms = sorted(ms, key=lambda p: p[1].mean)
            names = [m for m, _ in ms]
            values = [s.mean / 1e6 for _, s in ms]
            errs = [s.std / 1e6 if s.n > 1 else 0 for _, s in ms]
            ax.barh(names, values, xerr=errs, color=[palette[m] for m in names], capsize=2, height=0.6)
            for i, (v, err) in enumerate(zip(values, errs)):
                ax.annotate(f"{fmt.number(v)} MB", (max(v, 0) + err, i), xytext=(5, 0), textcoords="offset points",
                            va="center", fontsize=8)
            ax.set_title(task, loc="left", fontsize=9)
            ax.grid(axis="y", visible=False)
            ax.margins(x=0.18)
        axes[-1].set_xlabel(f"peak memory during training (MB; {kinds or 'unknown kind'})")
        return _svg(fig, "memory")
