"""Is one method better than another on a task? Paired tests over the same test examples.

Every method (and every baseline) answers the same test examples; each answer has its own
score (:meth:`suite.Task.example_scores`). A method's score on an example is the mean over its
seeds that finished ok (pooled over seeds), so two methods are compared example by example on
the differences ``d_i = a_i - b_i``. The test is a paired sign-flip permutation test: under "no
difference" each ``d_i`` is as likely to have either sign, so the observed mean difference is
compared with the means of ``d_i`` under :data:`RESAMPLES` random sign flips (a fixed seed, so a
report rebuilds identically). Two-sided for "A differs from B", one-sided for "A is above the
baseline". A difference whose p-value is not below :data:`ALPHA` is reported as no difference.

Where a task's score is a corpus-level figure (micro F1, BLEU), the per-example scores are its
per-example form, so the test speaks about that; for accuracy and exact match they are the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .frames import answer_key

RESAMPLES = 10_000
ALPHA = 0.05
SEED = 0


@dataclass(frozen=True)
class Comparison:
    """A against B on the examples both answered."""

    n: int  # shared examples
    diff: float  # mean of a_i - b_i
    p_two_sided: float
    p_greater: float  # one-sided: A above B

    @property
    def differs(self) -> bool:
        return self.p_two_sided < ALPHA

    @property
    def above(self) -> bool:
        return self.diff > 0 and self.p_greater < ALPHA


def per_example(generations: pd.DataFrame, run_ids) -> pd.Series:
    """``answer key -> score`` (:func:`~suite.report.frames.answer_key`): each test answer's
    score, averaged over the runs ``run_ids``."""
    rows = generations[generations.run_id.isin(list(run_ids))]
    if rows.empty or "example_score" not in rows:
        return pd.Series(dtype=float)
    scores = pd.to_numeric(rows.example_score, errors="coerce")
    return scores.groupby(answer_key(rows)).mean().dropna().sort_index()


def sign_flip(d: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """p-values of the paired sign-flip test on differences ``d``: two-sided and "mean > 0"."""
    d = np.asarray(d, dtype=float)
    if len(d) == 0:
        return math.nan, math.nan
    observed = d.mean()
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(resamples, len(d)))
    means = (signs * d).mean(axis=1)
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    two = (np.count_nonzero(np.abs(means) >= abs(observed) - tol) + 1) / (resamples + 1)
    greater = (np.count_nonzero(means >= observed - tol) + 1) / (resamples + 1)
    return float(min(two, 1.0)), float(min(greater, 1.0))


def compare(a: pd.Series, b: pd.Series) -> Comparison:
    """A against B on the examples both have (``per_example`` series)."""
    shared = a.index.intersection(b.index)
    d = (a.loc[shared] - b.loc[shared]).to_numpy(dtype=float)
    two, greater = sign_flip(d)
    return Comparison(len(shared), float(d.mean()) if len(d) else math.nan, two, greater)


def tied_for_best(scores: dict[str, pd.Series], means: dict[str, float]) -> tuple[list[str], dict[str, Comparison]]:
    """The methods no worse than the best by mean score at :data:`ALPHA`, and each method's
    comparison with that best one."""
    ranked = sorted((m for m in means if math.isfinite(means[m])), key=lambda m: (-means[m], m))
    if not ranked:
        return [], {}
    best = ranked[0]
    against = {m: compare(scores[best], scores[m]) for m in ranked[1:] if len(scores.get(m, ())) and len(scores[best])}
    return [best] + [m for m in ranked[1:] if m in against and not against[m].differs], against
