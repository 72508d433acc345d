"""The comparison tables (pandas): per task, overall, failed runs, and answers side by side.

Every table has one row per method. Aggregates are over the seeds that finished ``ok``;
the other runs are counted in the ``runs`` column and listed with their errors, never dropped.
Methods are sorted by mean score (higher is better, the task contract), methods without a
score last, ties by name.
"""
from __future__ import annotations

import json
import math
import re

import pandas as pd

from ..cell.records import STATUSES
from ..config import variants
from . import formatting as fmt
from .frames import TEXT_COLUMNS, answer_key
from .stats import Summary, summarise

#: the columns of a task table after the score and its interval: (results column, heading, kind)
MAIN_METRICS = (
    ("trainable_params", "trainable params (%)", "integer"),  # the % follows in brackets
    ("adapter_bytes", "adapter", "bytes"),
    ("peak_memory_bytes", "peak memory", "bytes"),
    ("predicted_peak_bytes", "predicted peak", "bytes"),  # leitai plan's, on the same basis (docs/plan.md)
    ("train_seconds", "train s", "number"),
    ("tokens_per_second", "tokens/s", "number"),
    ("final_train_loss", "final train loss", "number"),
    ("eval_loss", "dev loss", "number"),
    ("forgetting", "forgetting", "number"),
    ("infer_overhead", "inference × base", "number"),
    ("infer_overhead_merged", "merged × base", "number"),
)
#: numeric columns that are identifiers or settings, not measurements
NOT_MEASUREMENTS = ("seed",)
ANSWERS_PER_TASK = 5


def method_stats(results: pd.DataFrame) -> pd.DataFrame:
    """Long frame indexed by (task, method, metric): n, mean, std, ci_low, ci_high over ok seeds.

    Every numeric column of ``results`` is summarised, including metrics the report does not
    know by name.
    """
    cols = ["task", "method", "metric", "n", "mean", "std", "ci_low", "ci_high"]
    ok = results[results.status == "ok"]
    numeric = [
        c for c in ok.columns
        if c not in TEXT_COLUMNS and c not in NOT_MEASUREMENTS and pd.api.types.is_numeric_dtype(ok[c])
    ]
    rows = []
    for (task, method), df in ok.groupby(["task", "method"], sort=True):
        for metric in numeric:
            s = summarise(df[metric].tolist())
            if s.n:
                rows.append((task, method, metric, s.n, s.mean, s.std, s.ci_low, s.ci_high))
    return pd.DataFrame(rows, columns=cols).set_index(["task", "method", "metric"]).sort_index()


def summary_of(stats: pd.DataFrame, task: str, method: str, metric: str) -> Summary:
    """The :class:`Summary` of one metric (n = 0 when the method has no ok run with it)."""
    try:
        row = stats.loc[(task, method, metric)]
    except KeyError:
        return summarise([])
    return Summary(int(row["n"]), row["mean"], row["std"], row["ci_low"], row["ci_high"])


def score_name(results: pd.DataFrame, task: str) -> str:
    names = results.loc[results.task == task, "score_name"].dropna().unique()
    return " / ".join(sorted(names)) or "score"


def method_order(results: pd.DataFrame, stats: pd.DataFrame, task: str) -> list[str]:
    """The task's methods, best mean score first; methods without a score last; ties by name."""
    methods = sorted(results.loc[results.task == task, "method"].unique())
    scores = {m: summary_of(stats, task, m, "score").mean for m in methods}

    def key(m):
        scored = not math.isnan(scores[m])
        return (not scored, -scores[m] if scored else 0.0, m)

    return sorted(methods, key=key)


def status_counts(statuses) -> str:
    """``ok 2, failed 1``: every status that occurred, in the order of :data:`suite.cell.records.STATUSES`."""
    counts = pd.Series(list(statuses)).value_counts()
    order = [s for s in STATUSES if s in counts] + sorted(s for s in counts.index if s not in STATUSES)
    return ", ".join(f"{s} {counts[s]}" for s in order)


def task_table(results: pd.DataFrame, stats: pd.DataFrame, task: str, verdict=None, tuning: dict | None = None,
               tuning_seconds: dict | None = None, baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method (index), the formatted columns a reader compares methods by, then one
    row per baseline (its score only).

    ``verdict`` (:class:`.verdict.TaskVerdict`) adds "vs baseline" and, where the task has a
    linear probe, "vs probe"; ``tuning`` (method -> what its sweep chose) and ``tuning_seconds``
    (method -> training seconds of its tuning runs) add the chosen setting (marked ``edge`` where
    it lies at an edge of the grid tried), how many settings were tried and what the tuning cost.
    The diagnostics' flags ("answer format", "still learning") appear when a method has one.
    """
    from ..config.sweep import describe
    from ..measures.diagnostics import FORMAT_MIN

    df = results[results.task == task]
    methods = method_order(results, stats, task)
    shares = {m: summary_of(stats, task, m, "format_share").mean for m in methods}
    show_format = any(x < FORMAT_MIN for x in shares.values())
    learning = {m: still_learning(results, task, m) for m in methods}
    quantized = "quantize" in df and (df.quantize.fillna("none") != "none").any()  # --quantize: say each base
    retained = "retention_change" in df and df.retention_change.notna().any()
    rows = {}
    for method in methods:
        runs = df[df.method == method]
        ok = runs[runs.status == "ok"]
        score = summary_of(stats, task, method, "score")
        # the score first: it is what a reader decides by; the costs next to it
        row = {"runs": status_counts(runs.status), "n": str(len(ok))}
        if quantized:
            row["base"] = " / ".join(sorted(ok.weights_dtype.dropna().unique())) or fmt.MISSING
        row.update({score_name(results, task): fmt.mean_std(score), "95% CI": fmt.interval(score)})
        if verdict is not None and verdict.baseline:
            c = verdict.above_baseline.get(method)
            row["vs baseline"] = fmt.MISSING if c is None else ("above" if c.above else "not above")
        if verdict is not None and verdict.below_probe:
            below = verdict.below_probe.get(method)
            row["vs probe"] = fmt.MISSING if below is None else ("below" if below else "not below")
        if "choice_accuracy" in df and df.choice_accuracy.notna().any():
            row["choice accuracy"] = fmt.mean_std(summary_of(stats, task, method, "choice_accuracy"))
        if show_format:  # the share of well-formed answers, beside the choice accuracy
            share = shares[method]
            row["answer format"] = (fmt.MISSING if math.isnan(share) else
                                    fmt.number(share) + (" not learned" if share < FORMAT_MIN else ""))
        if any(flagged for flagged, _ in learning.values()):
            flagged, n = learning[method]
            row["still learning"] = f"yes ({flagged}/{n})" if flagged else ("no" if n else fmt.MISSING)
        if "best_dev_step" in df and df.best_dev_step.notna().any():  # --eval-every: where the dev score peaked
            steps = ok.best_dev_step.dropna().astype(int)
            kept = ok.kept_step.dropna().astype(int) if "kept_step" in ok else steps[:0]
            row["best dev step"] = " / ".join(map(str, sorted(steps))) or fmt.MISSING
            if len(kept) and (kept != ok.steps.loc[kept.index]).any():
                row["best dev step"] += " (kept)"
        if tuning:
            chosen = tuning.get(method)
            row["setting"] = (describe(chosen["setting"]) + _edge(chosen) if chosen and chosen.get("setting")
                              else ("none ok: defaults" if chosen else fmt.MISSING))
            row["tried"] = str(chosen["tried"]) if chosen else fmt.MISSING
        for col, heading, kind in MAIN_METRICS:
            row[heading] = fmt.mean_std(summary_of(stats, task, method, col), kind)
            if col == "trainable_params" and len(ok):
                row[heading] += f" ({fmt.number(summary_of(stats, task, method, 'trainable_pct').mean)}%)"
            if col == "peak_memory_bytes":
                row["memory kind"] = " / ".join(sorted(ok.memory_kind.dropna().unique())) or fmt.MISSING
            if col == "train_seconds" and tuning:
                row["tuning train s"] = fmt.number((tuning_seconds or {}).get(method)) if method in (tuning_seconds or {}) else fmt.MISSING
            if col == "forgetting" and retained:  # --retention: lost answers beside the lost language
                row["retention Δ"] = fmt.mean_std(summary_of(stats, task, method, "retention_change"))
            if col == "train_seconds" and quantized:
                row["s/step"] = fmt.number(_per_step(ok))
                row["vs float base"] = versus_float_base(df, method)
        rows[method] = row
    for _, b in (baselines if baselines is not None else pd.DataFrame()).iterrows():
        rows[f"baseline: {b.baseline}"] = {"runs": "baseline", score_name(results, task): fmt.number(b.score),
                                           "choice accuracy": fmt.number(b.choice_accuracy),
                                           "dev loss": fmt.number(b.eval_loss)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    columns = [c for c in table.columns if c in next(iter(rows.values()), {})] if rows else []
    table = table[columns].fillna(fmt.MISSING) if columns else table
    table.index.name = "method"
    if "memory kind" in table and len(memory_kinds(results, task)) <= 1:
        table = table.drop(columns="memory kind")  # one kind: said once, under the table
    return table


def _edge(chosen: dict) -> str:
    """`` (edge)`` (or ``(edge: lr)`` of several swept settings) for a choice at a grid's edge."""
    edge = chosen.get("edge") or []
    return "" if not edge else " (edge)" if len(chosen.get("keys") or []) <= 1 else f" (edge: {', '.join(edge)})"


def _per_step(ok: pd.DataFrame) -> float:
    """Mean training seconds per step of ``ok`` runs (nan without any)."""
    if not len(ok) or "steps" not in ok:
        return math.nan
    return float((pd.to_numeric(ok.train_seconds) / pd.to_numeric(ok.steps)).mean())


def versus_float_base(df: pd.DataFrame, method: str) -> str:
    """What a quantized base (``lora @ nf4``) saves and costs against the same method, with the
    same other variant settings, on the float base (``lora``) in ``df`` (one task's runs):
    ``weights ×0.5, memory ×0.61, s/step ×1.8`` (ratios of the means of ok runs);
    :data:`formatting.MISSING` for a float base, or when the other is not there."""
    mine = df[(df.method == method) & (df.status == "ok")]
    if not len(mine) or (mine.quantize.fillna("none") == "none").all():
        return fmt.MISSING
    first = mine.iloc[0]
    same = (df.plain_method == first.plain_method) & (df.quantize.fillna("none") == "none") & (df.status == "ok")
    for setting in (s for s in variants.SETTINGS if s != "quantize"):  # the same variant, on the float base
        same &= df[setting] == first[setting]
    other = df[same]
    if not len(other):
        return fmt.MISSING
    memory = pd.to_numeric(mine.peak_memory_bytes).mean() / pd.to_numeric(other.peak_memory_bytes).mean()
    weights = pd.to_numeric(mine.weights_bytes).mean() / pd.to_numeric(other.weights_bytes).mean()
    step = _per_step(mine) / _per_step(other)
    return f"weights ×{fmt.number(weights)}, memory ×{fmt.number(memory)}, s/step ×{fmt.number(step)}"


def memory_kinds(results: pd.DataFrame, task: str) -> list[str]:
    """What ``peak_memory_bytes`` measured in the task's ok runs (one kind unless runs are mixed)."""
    ok = results[(results.task == task) & (results.status == "ok")]
    return sorted(ok.memory_kind.dropna().unique())


def _kind(results: pd.DataFrame, metric: str) -> str:
    """How to show a metric the report does not know: bytes, whole numbers or 3 figures."""
    if metric.endswith("_bytes"):
        return "bytes"
    values = pd.to_numeric(results[metric], errors="coerce").dropna()
    return "integer" if len(values) and (values == values.round()).all() and (values.abs() >= 1).all() else "number"


def more_table(results: pd.DataFrame, stats: pd.DataFrame, task: str) -> pd.DataFrame:
    """Every other numeric measurement of the task's ok runs (mean ± std), one row per method.

    This is where metrics a plugin or another part of the core adds show up without the report
    knowing them; ``*_bytes`` columns are shown in kB/MB/GB, whole-number columns as integers.
    """
    main = {c for c, _, _ in MAIN_METRICS} | {"score", "trainable_pct", "choice_accuracy", "probe_score", "format_share"}
    if stats.empty or task not in stats.index.get_level_values("task"):
        return pd.DataFrame()
    sub = stats.xs(task, level="task")
    metrics = [m for m in sorted(sub.index.get_level_values("metric").unique())
               if m not in main and not TURN_SCORE.fullmatch(m)]
    rows = {}
    for method in method_order(results, stats, task):
        rows[method] = {
            m: fmt.mean_std(summary_of(stats, task, method, m), _kind(results, m)) for m in metrics
        }
    table = pd.DataFrame.from_dict(rows, orient="index", columns=metrics)
    table.index.name = "method"
    return table if metrics else pd.DataFrame()


#: the record metric of one assistant turn's score in a conversation task: score_turn1, ...
TURN_SCORE = re.compile(r"score_turn(\d+)")


def turn_table(results: pd.DataFrame, stats: pd.DataFrame, task: str) -> pd.DataFrame:
    """A conversation task's score per assistant turn (mean ± std over ok seeds), one row per
    method, then the overall score: whether a method loses the thread as the conversation
    grows. Empty for single-turn tasks."""
    columns = [c for c in results.columns if TURN_SCORE.fullmatch(c)
               and results.loc[results.task == task, c].notna().any()]
    if not columns:
        return pd.DataFrame()
    columns.sort(key=lambda c: int(TURN_SCORE.fullmatch(c).group(1)))
    rows = {}
    for method in method_order(results, stats, task):
        row = {f"turn {TURN_SCORE.fullmatch(c).group(1)}": fmt.mean_std(summary_of(stats, task, method, c))
               for c in columns}
        row["all turns"] = fmt.mean_std(summary_of(stats, task, method, "score"))
        rows[method] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def overall_table(results: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame | None:
    """Methods across tasks (only when there are several tasks).

    - ``mean rank``: the method's rank by mean score in each task it ran on (1 = best, tied
      methods share the better rank), averaged over those tasks; a task where it has no ok run counts
      as last place there.
    - ``relative score``: its mean score as a percentage of the best method's mean score on
      the task, averaged over the tasks it ran on; a task without an ok run counts as 0.
    - costs: trainable % averaged over tasks, the largest peak memory, total training seconds.
    Sorted by mean rank.
    """
    tasks = sorted(results.task.unique())
    if len(tasks) < 2:
        return None
    ranks: dict[str, list[float]] = {}
    relative: dict[str, list[float]] = {}
    for task in tasks:
        methods = sorted(results.loc[results.task == task, "method"].unique())
        scores = pd.Series({m: summary_of(stats, task, m, "score").mean for m in methods}, dtype=float)
        rank = scores.rank(ascending=False, method="min").fillna(len(methods))
        best = scores.max()  # nan when no method has a score on this task
        for m in methods:
            ranks.setdefault(m, []).append(float(rank[m]))
            if best > 0:
                relative.setdefault(m, []).append(0.0 if math.isnan(scores[m]) else 100 * scores[m] / best)
    rows = {}
    for m in sorted(ranks):
        ran = [t for t in tasks if ((results.task == t) & (results.method == m)).any()]
        ok = [t for t in ran if summary_of(stats, t, m, "score").n]
        pct = [summary_of(stats, t, m, "trainable_pct").mean for t in ok]
        mem = [summary_of(stats, t, m, "peak_memory_bytes").mean for t in ok]
        secs = [summary_of(stats, t, m, "train_seconds").mean for t in ok]
        rows[m] = {
            "_rank": sum(ranks[m]) / len(ranks[m]),
            "tasks ok": f"{len(ok)}/{len(ran)}",
            "mean rank": fmt.number(sum(ranks[m]) / len(ranks[m])),
            "relative score %": fmt.number(_mean(relative.get(m, []))),
            "trainable %": fmt.number(_mean(pct)),
            "largest peak memory": fmt.nbytes(max(mem)) if mem else fmt.MISSING,
            "total train s": fmt.number(sum(secs)) if secs else fmt.MISSING,
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table.sort_values("_rank", kind="stable").drop(columns="_rank")
    table.index.name = "method"
    return table


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def failed_runs(results: pd.DataFrame) -> pd.DataFrame:
    """Every run that did not finish ok, with its status and error."""
    bad = results[results.status != "ok"]
    return bad[["run_id", "task", "method", "seed", "status", "error"]].reset_index(drop=True)


def natural_key(text: str) -> tuple:
    """Sort ``ex2`` before ``ex10``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(text)))


def answers_table(results: pd.DataFrame, generations: pd.DataFrame, task: str, order: list[str],
                  n: int = ANSWERS_PER_TASK) -> pd.DataFrame:
    """The same ``n`` test prompts for every method, with the reference and each method's answer.

    For each method the ok run with the lowest seed answers; the prompts are the first ``n``
    example ids (natural order) that all of those runs answered. Columns: example, prompt,
    reference, then one per method in ``order``.
    """
    df = results[(results.task == task) & (results.status == "ok")]
    chosen = {}
    for method in order:
        runs = df[df.method == method].sort_values(["seed", "run_id"])
        if len(runs):
            chosen[method] = runs.iloc[0]
    if not chosen:
        return pd.DataFrame()
    def answered(run_id):  # one row per test prompt: a conversation's turns are told apart
        rows = generations[generations.run_id == run_id].copy()
        rows["example_id"] = answer_key(rows)
        return rows.drop_duplicates("example_id").set_index("example_id")

    answers = {m: answered(r.run_id) for m, r in chosen.items()}
    common = set.intersection(*(set(a.index.astype(str)) for a in answers.values()))
    ids = sorted(common, key=natural_key)[:n]
    if not ids:
        return pd.DataFrame()
    first = next(iter(answers.values()))
    first.index = first.index.astype(str)
    table = pd.DataFrame({"example": ids, "prompt": [first.loc[i, "prompt"] for i in ids],
                          "reference": [first.loc[i, "reference"] for i in ids]})
    for m, a in answers.items():
        a.index = a.index.astype(str)
        seed = chosen[m].seed
        label = m if pd.isna(seed) else f"{m} (seed {int(seed)})"
        table[label] = [a.loc[i, "output"] for i in ids]
    return table


def describe_info(info: dict) -> str:
    """A method's ``method_info`` as one line: ``key: value; key: a, b``."""
    def value(v):
        if isinstance(v, (list, tuple)):
            return ", ".join(map(str, v))
        return json.dumps(v, ensure_ascii=False, sort_keys=True) if isinstance(v, dict) else str(v)

    return "; ".join(f"{k}: {value(v)}" for k, v in info.items())


def _infos(results: pd.DataFrame, task: str):
    """``(method, seed, info dict)`` of every run of ``task`` that recorded what ran."""
    df = results[(results.task == task) & results.method_info.notna()]
    for r in df.sort_values(["method", "seed", "run_id"]).itertuples():
        yield r.method, r.seed, json.loads(r.method_info)


def _seeds(seeds: list) -> str:
    seeds = sorted({int(s) for s in seeds if not pd.isna(s)})
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else "no seed"


def method_info_table(results: pd.DataFrame, task: str, order: list[str]) -> pd.DataFrame:
    """What each method of ``task`` recorded it ran (``Method.run_info``): columns method,
    seeds, what ran; one row per method, or per distinct record where its runs differ. Empty
    when no run recorded anything."""
    runs: dict[str, dict[str, list]] = {}
    for method, seed, info in _infos(results, task):
        runs.setdefault(method, {}).setdefault(describe_info(info), []).append(seed)
    rows = [{"method": method, "seeds": _seeds(seeds).split(" ", 1)[1], "what ran": text}
            for method in [m for m in order if m in runs] + sorted(set(runs) - set(order))
            for text, seeds in runs[method].items()]
    return pd.DataFrame(rows, columns=["method", "seeds", "what ran"]) if rows else pd.DataFrame()


def fallback_warnings(results: pd.DataFrame) -> list[str]:
    """One warning per task, method and ``fallback`` a method recorded: it could not do what
    its settings asked and did something else (LST's pruning init on an unreadable backbone)."""
    out = []
    for task in sorted(results.task.dropna().unique()):
        seen: dict[tuple, list] = {}
        for method, seed, info in _infos(results, task):
            if info.get("fallback"):
                seen.setdefault((method, str(info["fallback"])), []).append(seed)
        out += [f"task {task}: {method} ({_seeds(seeds)}): {why}" for (method, why), seeds in seen.items()]
    return out


def still_learning(results: pd.DataFrame, task: str, method: str) -> tuple[int, int]:
    """``(flagged, n)``: how many of the method's ok runs on ``task`` were still learning
    (:func:`suite.measures.diagnostics.learning_tail`), of the ``n`` that were tested."""
    if "still_learning" not in results:
        return 0, 0
    ok = results[(results.task == task) & (results.method == method) & (results.status == "ok")]
    flags = ok.still_learning.dropna().astype(str)
    return int((flags == "True").sum()), len(flags)
