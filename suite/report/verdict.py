"""What a task's runs say, in words: which methods are tied for best (paired tests over the same
test examples, :mod:`.significance`), at what cost, and which methods did not beat the task's
baselines. The report opens with these sentences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ..cell.records import STATUSES
from ..measures.diagnostics import FORMAT_MIN
from . import formatting as fmt
from .frames import PROBE
from .significance import ALPHA, Comparison, compare, per_example, tied_for_best
from .tables import still_learning, summary_of


@dataclass
class TaskVerdict:
    task: str
    score_name: str
    best: list[str] = field(default_factory=list)  # tied for best, the best by mean first
    against_best: dict[str, Comparison] = field(default_factory=dict)
    baseline: tuple[str, float] | None = None  # the best baseline's name and score
    above_baseline: dict[str, Comparison] = field(default_factory=dict)  # method -> vs the best baseline
    pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)  # row minus column, * when it differs
    probe: float | None = None  # the linear probe's score (a yardstick, not one of the baselines a verdict needs)
    below_probe: dict[str, bool] = field(default_factory=dict)  # method -> below the probe at 95% confidence
    reasons: dict[str, list[str]] = field(default_factory=dict)  # method not above -> what the diagnostics say
    left_out: dict[str, str] = field(default_factory=dict)  # method -> its runs not in the means, and why
    sentences: list[str] = field(default_factory=list)

    def yardsticks(self) -> list[tuple[str, float]]:
        """``(name, score)`` of the best baseline and the linear probe, those there are."""
        return ([self.baseline] if self.baseline else []) + ([("linear probe", self.probe)] if self.probe is not None
                                                              else [])

    def not_above(self) -> list[str]:
        """Methods whose score is not above the best baseline at 95% confidence."""
        return sorted(m for m, c in self.above_baseline.items() if not c.above)


def judge(task: str, score_name: str, results: pd.DataFrame, stats: pd.DataFrame, generations: pd.DataFrame,
          baselines: pd.DataFrame, baseline_answers: pd.DataFrame, order: list[str],
          curves: pd.DataFrame | None = None) -> TaskVerdict:
    """The verdict on ``task`` from its final runs (``results``), their answers and its baselines;
    with ``curves`` (``curves.csv``), what the dev curves of ``--eval-every`` say too."""
    verdict = TaskVerdict(task, score_name)
    ok = results[(results.task == task) & (results.status == "ok")]
    scores = {m: per_example(generations, ok[ok.method == m].run_id) for m in order}
    scores = {m: s for m, s in scores.items() if len(s)}
    means = {m: summary_of(stats, task, m, "score").mean for m in scores}
    verdict.best, verdict.against_best = tied_for_best(scores, means)

    rows = baselines[(baselines.task == task) & baselines.score.notna()]
    probe = rows[rows.baseline == PROBE]
    rows = rows[rows.baseline != PROBE]  # the probe is a yardstick for the diagnostics, not a baseline to beat
    if len(probe):
        verdict.probe = float(probe.score.iloc[0])
        reference = per_example(baseline_answers, [probe.run_id.iloc[0]])
        verdict.below_probe = {m: compare(reference, s).above for m, s in scores.items() if len(reference)}
    if len(rows):
        top = rows.loc[pd.to_numeric(rows.score).idxmax()]
        verdict.baseline = (str(top.baseline), float(top.score))
        reference = per_example(baseline_answers, [top.run_id])
        verdict.above_baseline = {m: compare(s, reference) for m, s in scores.items() if len(reference)}

    names = [m for m in order if m in scores]
    cells = {a: {b: _difference(compare(scores[a], scores[b])) if a != b else "" for b in names} for a in names}
    verdict.pairwise = pd.DataFrame.from_dict(cells, orient="index", columns=names)
    verdict.pairwise.index.name = "row − column"
    verdict.reasons = {m: diagnose(verdict, results, stats, m) + dev_curve(verdict, ok, curves, m)
                       for m in verdict.not_above()}
    verdict.left_out = left_out(results, task, order)
    verdict.sentences = _sentences(verdict, stats, means)
    return verdict


def left_out(results: pd.DataFrame, task: str, order: list[str]) -> dict[str, str]:
    """Method -> why some of its runs on ``task`` are not in its means: each status other than ok
    (failed, oom, diverged, timeout), in how many of its runs, and the first such run's error."""
    df = results[results.task == task]
    out = {}
    for method in order:
        runs = df[df.method == method]
        parts = []
        for status in [s for s in STATUSES if s != "ok"] + sorted(set(runs.status) - set(STATUSES)):
            bad = runs[runs.status == status]
            if len(bad):
                error = next((str(x).strip() for x in bad.error if isinstance(x, str) and x.strip()), "")
                parts.append(f"{status} in {len(bad)} of {len(runs)} runs" + (f": {error}" if error else ""))
        if parts:
            out[method] = "; ".join(parts)
    return out


def diagnose(v: TaskVerdict, results: pd.DataFrame, stats: pd.DataFrame, method: str) -> list[str]:
    """Why ``method`` may not be above the best baseline, as far as the diagnostics tell: its dev
    loss at (or above) the class prior, its loss still falling, its answers outside the format,
    its score below the linear probe, the base looking past the positions it prepends. Empty when
    none of them fires."""
    out = []
    loss, prior = (summary_of(stats, v.task, method, k).mean for k in ("eval_loss", "class_prior_loss"))
    if math.isfinite(loss) and math.isfinite(prior) and loss >= 0.9 * prior:
        where = "at" if loss <= 1.1 * prior else "above"
        out.append(f"dev loss {fmt.number(loss)} {where} the class prior {fmt.number(prior)}")
    flagged, n = still_learning(results, v.task, method)
    if flagged:
        out.append(f"training loss still falling ({flagged} of {n} seeds)")
    share = summary_of(stats, v.task, method, "format_share").mean
    if math.isfinite(share) and share < FORMAT_MIN:
        out.append(f"answers outside the format ({100 * share:.0f}% well-formed)")
    if v.below_probe.get(method):
        out.append(f"below the linear probe ({fmt.number(v.probe)})")
    got, uniform = (summary_of(stats, v.task, method, k).mean
                    for k in ("prepended_attention_share", "prepended_uniform_share"))
    if math.isfinite(got) and math.isfinite(uniform) and got < uniform / 5:  # the base looks past what it prepends
        out.append(f"the answer position gives its prepended positions {100 * got:.1f}% of its attention "
                   f"(uniform: {100 * uniform:.0f}%)")
    return out


def dev_curve(v: TaskVerdict, ok: pd.DataFrame, curves: pd.DataFrame | None, method: str) -> list[str]:
    """With ``--eval-every``: does ``method``'s dev score (the mean over its ok seeds at each
    evaluation) ever rise above the best baseline and the linear probe, and at which step first;
    and its peak. Empty without dev scores. The yardsticks are test scores, the curve's points dev
    ones: a point within a few hundredths of one says little on a small dev split."""
    if curves is None or not len(curves) or v.baseline is None:
        return []
    dev = curves[(curves.split == "dev") & curves.run_id.isin(ok[ok.method == method].run_id) & curves.score.notna()]
    if not len(dev):
        return []
    mean = dev.groupby("step").score.mean()
    said = []
    for name, value in v.yardsticks():
        above = mean[mean > value]
        said.append(f"the {name}'s {fmt.number(value)} " + (f"first at step {int(above.index[0])}" if len(above)
                                                            else "at no step"))
    seeds = dev.run_id.nunique()
    return [f"dev score ({'one seed' if seeds == 1 else f'mean of {seeds} seeds'}, every evaluation) above {' and '.join(said)}; "
            f"its peak {fmt.number(mean.max())} at step {int(mean.idxmax())} of {int(mean.index.max())}"]


def _difference(c: Comparison) -> str:
    if not math.isfinite(c.diff):
        return fmt.MISSING
    return f"{c.diff:+.3f}{'*' if c.differs else ''}"


def _cost(stats: pd.DataFrame, task: str, method: str) -> str:
    params = summary_of(stats, task, method, "trainable_params")
    pct = summary_of(stats, task, method, "trainable_pct")
    memory = summary_of(stats, task, method, "peak_memory_bytes")
    seconds = summary_of(stats, task, method, "train_seconds")
    parts = []
    if params.n:
        parts.append(f"{fmt.integer(params.mean)} trainable parameters ({fmt.number(pct.mean)}%)")
    if memory.n:
        parts.append(f"{fmt.nbytes(memory.mean)} peak memory")
    if seconds.n:
        parts.append(f"{fmt.number(seconds.mean)} s of training")
    return ", ".join(parts)


def _sentences(v: TaskVerdict, stats: pd.DataFrame, means: dict[str, float]) -> list[str]:
    gone = ([f"Left out of the means, runs that did not finish ok: "
             f"{'; '.join(f'{m} ({why})' for m, why in v.left_out.items())}."] if v.left_out else [])
    if not v.best:
        return [f"{v.task}: no method finished ok, so there is no verdict."] + gone
    score = lambda m: fmt.number(means[m])  # noqa: E731
    if len(v.best) == 1:
        runner = min(v.against_best.values(), key=lambda c: c.p_two_sided, default=None)
        head = (f"{v.task}: {v.best[0]} is best ({v.score_name} {score(v.best[0])}"
                + (f"; every other method is below it, paired test p ≤ {max(c.p_two_sided for c in v.against_best.values()):.3g})"
                   if runner else ")"))
    else:
        ps = [v.against_best[m].p_two_sided for m in v.best[1:]]
        if all(v.against_best[m].diff == 0 for m in v.best[1:]):  # p is 1 by construction: nothing was tested
            why = "the same mean score on the same test examples, so no test can tell them apart"
        else:
            why = f"no difference at 95% confidence, paired test p {'= 1' if min(ps) >= 1 else f'≥ {min(ps):.2g}'}"
        head = (f"{v.task}: {', '.join(v.best[:-1])} and {v.best[-1]} are tied for best ({v.score_name} "
                f"{', '.join(score(m) for m in v.best)}; {why})")
    out = [head + "."]
    costs = [f"{m}: {_cost(stats, v.task, m)}" for m in v.best if _cost(stats, v.task, m)]
    if costs:
        out.append(("Its cost: " if len(v.best) == 1 else "Their costs: ") + "; ".join(costs) + ".")
    if v.baseline:
        name, value = v.baseline
        below = v.not_above()
        if below:
            why = [f"{m} ({'; '.join(v.reasons.get(m) or ['no diagnostic fired'])})" for m in below]
            out.append(f"Not above the best baseline ({name}, {fmt.number(value)}) at 95% confidence: "
                       f"{', '.join(why)}.")
        else:
            out.append(f"Every method is above the best baseline ({name}, {fmt.number(value)}) at 95% confidence.")
    return out + gone


NOTE = (f"Verdicts and ties: per task, every pair of methods is compared on the same test examples with a paired "
        f"sign-flip permutation test on the examples' own scores (each the mean over the method's ok seeds); a "
        f"difference with p ≥ {ALPHA} is no difference. 'Tied for best' are the methods not different from the best "
        f"by mean. 'vs baseline' says whether a method is above the best baseline (the untrained base model or the "
        f"task's trivial answer) at 95% confidence, one-sided; 'vs probe' whether it is below the linear probe "
        f"(the same test the other way), which is a yardstick, not a baseline to beat. For a method not above the "
        f"best baseline the verdict names what the diagnostics found: dev loss at or above the class prior (within "
        f"10%, or more), training loss still falling, answers outside the format, below the linear probe. Means are "
        f"over a method's runs that finished ok; the verdict names the others (failed, out of memory, diverged, "
        f"timeout) and why, as the first such run's error says. The "
        f"pairwise table gives row minus column, * where the difference is significant. With many methods some "
        f"differences pass by chance; read them with that in mind.")
