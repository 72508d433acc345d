"""The diagnostics that tell a handicapped method from a weak one (suite/measures/diagnostics.py): the
linear probe equals an independent logistic regression, the still-learning test fires on a
falling curve and not on a flat noisy one, the answer-format share on constructed answers."""
import math
import random

import numpy as np
import pytest

from suite.measures import diagnostics


def test_probe_equals_an_independent_logistic_regression(registry):
    import torch
    from sklearn.linear_model import LogisticRegression

    from suite.data import prepared
    from suite.models.loading import prepare_tokenizer

    model, tok = registry.models["tiny-zh"].load()
    tok = prepare_tokenizer(tok)
    task = registry.tasks["zh-sentiment"]
    data = prepared.prepare(task, {"train": 96, "dev": 4, "test": 48}, 256, tok)
    probe = diagnostics.probe_baseline(task, model, data, tok.pad_token_id, "cpu", batch_size=7)

    def features(prompts):  # one prompt at a time, no padding: the last layer at the last prompt token
        with torch.no_grad():
            return np.stack([model(input_ids=torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0, -1].double()
                             .numpy() for p in prompts])

    train = [(e.prompt, a) for e, a in zip(data.train, data.train_answers) if a in task.choices]
    x, x_test = features([p for p, _ in train]), features(data.test_prompts)
    mean, std = x.mean(0), x.std(0)
    x, x_test = (x - mean) / std, (x_test - mean) / std
    y = np.array([task.choices.index(a) for _, a in train])
    # sklearn: ½‖w‖² + C·Σ CE; ours: mean CE + λ/2·‖W‖², and with two classes W's columns are ±w/2
    c = (2 if len(task.choices) == 2 else 1) / (diagnostics.PROBE_L2 * len(y))
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x, y)
    expected = [task.choices[i] for i in reference.predict(x_test)]
    refs = [e.output for e in data.test]
    assert probe["choice_accuracy"] == pytest.approx(np.mean([a == r for a, r in zip(expected, refs)]), abs=1 / len(refs))
    agree = np.mean([g["output"] == e for g, e in zip(probe["generations"], expected)])
    assert agree >= 1 - 1 / len(refs)  # at most one answer on the boundary may differ
    # the fitted model itself: probabilities agree with sklearn's
    w, b = diagnostics.fit_probe(torch.tensor(x), torch.tensor(y), len(task.choices))
    ours = torch.softmax(torch.tensor(x_test) @ w + b, 1).numpy()
    assert np.abs(ours - reference.predict_proba(x_test)).max() < 1e-4
    assert probe["score"] == pytest.approx(probe["choice_accuracy"])  # zh-sentiment scores answer accuracy
    assert 0.0 < probe["choice_accuracy"] <= 1.0


def test_t_distribution_tail():
    from scipy import stats

    for df in (1, 2, 3, 4, 7, 10, 31, 200):
        for t in (-3.1, -0.4, 0.0, 0.7, 2.5):
            assert diagnostics.t_sf(t, df) == pytest.approx(stats.t.sf(t, df), abs=1e-9)


def test_still_learning_fires_on_a_falling_curve_not_on_a_flat_one():
    rng = random.Random(0)
    steps = 200

    def fired(curve, n=100):  # the share of n noisy draws of a curve the test flags
        return sum(diagnostics.learning_tail([v + rng.gauss(0, 0.05) for v in curve])["still_learning"]
                   for _ in range(n)) / n

    falling = [2.0 * math.exp(-i / 150) for i in range(steps)]
    flat = [0.7] * steps
    early = [2.0 * math.exp(-i / 10) + 0.3 for i in range(steps)]  # fell, then flat
    assert fired(falling) >= 0.95
    assert fired(flat) <= 0.1 and fired(early) <= 0.1  # a 5% test: chance alone fires it about 1 in 20
    one = diagnostics.learning_tail(falling)
    assert one["still_learning"] is True and one["tail_slope"] < 0 and one["tail_slope_p"] < 1e-6
    # a significant but tiny fall (0.1% over the tail) is not worth more steps
    tiny = diagnostics.learning_tail([1.0 - 1e-5 * i + rng.gauss(0, 1e-5) for i in range(steps)])
    assert tiny["tail_slope_p"] < 0.05 and tiny["still_learning"] is False
    assert diagnostics.learning_tail([1.0, 0.9, 0.8]) == {}  # too few steps to say


def test_divergence_fires_only_past_its_threshold():
    """A run diverged when its training loss ends, or its dev loss is, more than DIVERGED_ABOVE
    (20%) above where it started; at the threshold, below it, or without a reference it did not."""
    above = diagnostics.DIVERGED_ABOVE
    assert above == 0.2  # the documented figure (docs/faults.md, the status column in docs/records.md)
    assert diagnostics.divergence(6.0, 6.0 * (1 + above)) is None  # at the threshold: not past it
    assert diagnostics.divergence(6.0, 2.0, 6.0 * (1 + above), 6.0) is None
    assert diagnostics.divergence(6.0, 0.2, 0.2, 6.8) is None  # a run that learned
    assert diagnostics.divergence(6.0, 6.3, 6.9, 6.8) is None  # one that learned nothing (lr 1e-9 ends ~4% up)
    assert diagnostics.divergence(6.112, 15.04) == ("training loss rose from 6.112 (step 1) to 15.04 (the mean of the "
                                                    "last 10% of the steps), more than 20% above")
    assert diagnostics.divergence(6.0, 2.0, 11.6, 6.8) == "dev loss 11.6, more than 20% above the untrained base model's 6.8"
    assert diagnostics.divergence(6.0, 7.3, 11.6, 6.8).startswith("training loss rose")  # the training loss first
    # a short run: one step against another is batch noise, the dev loss alone decides
    assert diagnostics.DIVERGED_MIN_STEPS == 20  # the documented figure (docs/diagnostics.md)
    assert diagnostics.divergence(5.629, 6.852, 6.45, 6.40, steps=2) is None  # seen: --max-steps 2, batches of 4
    assert diagnostics.divergence(5.629, 6.852, 6.45, 6.40, steps=20).startswith("training loss rose")
    assert diagnostics.divergence(6.0, 7.3, 11.6, 6.8, steps=2).startswith("dev loss 11.6")
    assert diagnostics.divergence(None, None, 11.6, None) is None  # no reference: no verdict
    assert diagnostics.divergence(6.0, 2.0, math.nan, 6.8) is None  # no dev answer tokens: no dev loss to judge
    assert diagnostics.divergence(6.0, 2.0, math.inf, 6.8).startswith("dev loss inf")


def test_answer_format_share():
    choices = ("正面", "负面")
    got = diagnostics.answer_format(["正面", " 负面 ", "", "还行", "正面", "负面负面", "负面", "正面"], choices)
    assert got == {"format_share": 5 / 8, "format_learned": True}
    assert diagnostics.answer_format(["", "", "正面", "好"], choices) == {"format_share": 0.25, "format_learned": False}
    assert diagnostics.answer_format(["任何", "", ""], None)["format_share"] == pytest.approx(1 / 3)
    assert diagnostics.answer_format([], choices) == {}


def test_report_names_the_reasons_and_marks_the_edge(tmp_path):
    """Constructed records of a task with a probe baseline: a method that learned, and one with
    every symptom (loss at the class prior, still learning, answers outside the format, below the
    probe) whose sweep chose the top of its grid at the bound. The report's files say each."""
    import pandas as pd
    import report_fixture as fx

    from suite.report import write_report

    task, ids = "zh-diag", [f"ex{i}" for i in range(1, 21)]
    reference = {i: "正面" if int(i[2:]) % 2 else "负面" for i in ids}

    def generations(answers):
        return [{"example_id": i, "prompt": f"评论{i}", "reference": reference[i], "output": answers[i],
                 "example_score": float(answers[i] == reference[i])} for i in ids]

    def run(method, seed, answers, loss, flags):
        r = fx.record(task, method, seed, score=sum(answers[i] == reference[i] for i in ids) / len(ids), dev=loss,
                      extra={"class_prior_loss": 0.35, "choice_accuracy": 0.5, **flags})
        r["generations"] = generations(answers)
        return r

    majority = {i: "正面" for i in ids}
    probe = {i: reference[i] if i != "ex2" else "正面" for i in ids}  # 19 of 20 right
    baseline = {"run_id": f"{task}__baseline__s0", "method": "base model", "task": task, "seed": 0, "phase": "baseline",
                "status": "ok", "model": "tiny-zh", "config": {}, "env": fx.env(),
                "metrics": {"score": 0.0, "score_name": "accuracy", "eval_loss": 3.0, "choice_accuracy": 0.5},
                "generations": generations({i: "" for i in ids}),
                "trivial": {"kind": "majority", "score": 0.5, "generations": generations(majority)},
                "probe": {"kind": "probe", "score": 0.95, "choice_accuracy": 0.95, "generations": generations(probe)}}
    stuck = {i: "" if int(i[2:]) % 4 else "正面" for i in ids}  # 5 of 20 well-formed
    tuning = {"setting": {"lr": 1.0}, "keys": ["lr"], "tried": 3, "edge": ["lr"], "extended": {"lr": [1.0]},
              "by": "dev score", "settings": [{"setting": {"lr": lr}, "dev_score": s, "dev_loss": 1.0, "runs": 1, "ok": 1}
                                              for lr, s in ((0.1, 0.1), (0.316, 0.2), (1.0, 0.3))]}
    records = [baseline]
    for seed in (0, 1):
        records.append(run("good", seed, dict(reference), 0.1, {"format_share": 1.0, "format_learned": True,
                                                                "still_learning": False, "tail_slope": 0.0}))
        r = run("stuck", seed, stuck, 0.36, {"format_share": 0.25, "format_learned": False,
                                             "still_learning": seed == 0, "tail_slope": -0.01})
        r["config"]["tuning"] = tuning
        records.append(r)
    for lr, s in ((0.1, 0.1), (0.316, 0.2), (1.0, 0.3)):
        t = fx.record(task, "stuck", 0, score=None, dev=1.0)
        t.update(run_id=f"{task}__stuck__tune-lr{lr:g}__s0", phase="tune")
        t["config"]["params"] = {"lr": lr}
        t["metrics"]["dev_score"] = s
        records.append(t)
    out = fx.write(tmp_path, records)
    write_report([out], out)

    baselines = pd.read_csv(out / "baselines.csv").set_index("baseline")
    assert baselines.loc["linear probe", "score"] == 0.95 and baselines.loc["linear probe", "choice_accuracy"] == 0.95
    results = pd.read_csv(out / "results.csv")
    final = results[results.phase == "final"].set_index(["method", "seed"])
    assert (final.probe_score == 0.95).all()
    assert final.loc[("stuck", 0), "still_learning"] and not final.loc[("stuck", 1), "still_learning"]
    assert final.loc[("stuck", 0), "format_share"] == 0.25
    md = (out / "summary.md").read_text(encoding="utf-8")
    # the verdict: the majority label is the best baseline (the probe is a yardstick, not a baseline to beat)
    assert ("Not above the best baseline (majority label, 0.500) at 95% confidence: stuck (dev loss 0.360 at the "
            "class prior 0.350; training loss still falling (1 of 2 seeds); answers outside the format (25% "
            "well-formed); below the linear probe (0.950)).") in md
    lines = md.split("\n| method", 1)[1].split("\n\n")[0].splitlines()  # the task's table
    header = [c.strip() for c in ("| method" + lines[0]).split("|")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")] for line in lines[2:]}
    stuck_row, good_row = dict(zip(header, rows["stuck"])), dict(zip(header, rows["good"]))
    assert stuck_row["vs probe"] == "below" and good_row["vs probe"] == "not below"
    assert stuck_row["answer format"] == "0.250 not learned" and good_row["answer format"] == "1.00"
    assert stuck_row["still learning"] == "yes (1/2)" and good_row["still learning"] == "no"
    assert stuck_row["setting"] == "lr 1 (edge)" and stuck_row["choice accuracy"] == "0.500"
    assert "baseline: linear probe" in rows
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "still learning: 1" in html  # the loss curve's legend
    assert "stuck [edge: lr]" in html  # the sensitivity figure's legend, and its label at the choice
