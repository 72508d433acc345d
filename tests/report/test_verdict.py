"""What the verdict says of a method's dev curve (--eval-every): whether its dev score, the mean
over its seeds at each evaluation, ever rose above the best baseline and the linear probe, and
where; the figure draws both yardsticks."""
import pandas as pd

from suite.report.figures import dev_curves
from suite.report.verdict import TaskVerdict, dev_curve


def _curves(points: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"run_id": run, "step": 50 * (i + 1), "split": "dev", "loss": 1.0, "score": s, "seconds": 10.0 * (i + 1)}
            for run, scores in points.items() for i, s in enumerate(scores)]
    train = [{"run_id": run, "step": 1, "split": "train", "loss": 2.0, "score": None, "seconds": None} for run in points]
    return pd.DataFrame(rows + train)


OK = pd.DataFrame({"run_id": ["a0", "a1", "b0"], "method": ["a", "a", "b"], "task": "t", "status": "ok"})
VERDICT = TaskVerdict("t", "accuracy", baseline=("majority label", 0.5), probe=0.65)


def test_the_dev_curve_crossings_are_named_with_the_first_step():
    # a: means 0.45, 0.55 (above the majority label first at step 100), 0.60, 0.70 (above the probe at 200)
    curves = _curves({"a0": [0.4, 0.5, 0.6, 0.7], "a1": [0.5, 0.6, 0.6, 0.7], "b0": [0.5, 0.5, 0.5, 0.5]})
    (said,) = dev_curve(VERDICT, OK, curves, "a")
    assert said == ("dev score (mean of 2 seeds, every evaluation) above the majority label's 0.500 first at step 100 "
                    "and the linear probe's 0.650 first at step 200; its peak 0.700 at step 200 of 200")
    (said,) = dev_curve(VERDICT, OK, curves, "b")  # at the majority label is not above it
    assert said.startswith("dev score (one seed, every evaluation) above the majority label's 0.500 at no step "
                           "and the linear probe's 0.650 at no step")


def test_no_dev_curve_says_nothing():
    assert dev_curve(VERDICT, OK, _curves({}), "a") == []
    assert dev_curve(VERDICT, OK, None, "a") == []


def test_the_figure_draws_the_yardsticks():
    curves = _curves({"a0": [0.4, 0.5, 0.6, 0.7], "a1": [0.5, 0.6, 0.6, 0.7]})
    svg = dev_curves("t", OK, curves, ["a"], {"a": "#1f77b4"}, "accuracy",
                     (("majority label", 0.5), ("linear probe", 0.65)))
    assert "majority label 0.500 (test)" in svg and "linear probe 0.650 (test)" in svg
