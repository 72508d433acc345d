"""Sweeps, baselines, significance and choice scoring: settings chosen on dev only, baselines that
equal an independent computation, paired tests with known answers, tuning runs kept out of the
means."""
import json

import numpy as np
import pandas as pd
import pytest
import report_fixture as fx
from conftest import ROOT, leitai, plugin_env

from suite.config import sweep
from suite.config.sources import build_config, parse_sweep, sweep_from_toml
from suite.errors import UsageError
from suite.report import significance

SMALL = ["--max-steps", "4", "--batch-size", "4", "--task-size", "32", "--infer-prompts", "0",
         "--side-corpus", "none", "-q"]


# ---------------------------------------------------------------- grids and choices


def test_sweep_specs_toml_and_grids(tmp_path, registry):
    assert parse_sweep(["lr", "lora.r=4,16", "lora.lr=1e-4,3e-4"]) == {
        "keys": ["lr"], "grids": {"lora": {"r": [4, 16], "lr": [1e-4, 3e-4]}}}
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\nkeys = ["lr"]\n[sweep.lora]\nr = [4, 8]\n')
    cfg = build_config({"sweep": ["lora.r=2,3"]}, str(path))
    assert cfg.sweep == {"keys": ["lr"], "grids": {"lora": {"r": [2, 3]}}}
    lora, prompt = registry.methods["lora"], registry.methods["prompt-tuning"]
    # --sweep lr: the declared grid, by default the default lr times 0.1 .. 10
    lr = prompt.defaults["lr"]
    assert sweep.method_grid(prompt, cfg.sweep) == {"lr": [float(f"{lr * f:.3g}") for f in (0.1, 0.3, 1, 3, 10)]}
    assert sweep.method_grid(lora, cfg.sweep) == {"lr": [0.0001, 0.0003, 0.001, 0.003, 0.01], "r": [2, 3]}
    assert len(sweep.combinations(sweep.method_grid(lora, cfg.sweep))) == 10
    assert sweep.method_grid(lora, sweep.empty()) is None
    with pytest.raises(UsageError, match="method 'lora' has no setting 'depth'"):
        sweep.method_grid(lora, parse_sweep(["lora.depth=1,2"]))
    with pytest.raises(UsageError, match="--sweep takes"):
        parse_sweep(["lora.r="])
    with pytest.raises(UsageError, match=r"\[sweep.lora\] must map"):
        sweep_from_toml({"lora": {"r": 4}}, "s.toml")
    assert sweep.label({"lr": 3e-4, "r": 16}) == "lr0.0003-r16"


def tuning_record(lr, score, loss, status="ok", seed=0):
    return {"phase": "tune", "status": status, "config": {"params": {"lr": lr, "r": 4}},
            "metrics": {"dev_score": score, "eval_loss": loss}, "seed": seed}


def test_choose_by_dev_score_then_dev_loss():
    records = [tuning_record(1e-3, 0.6, 1.0), tuning_record(1e-2, 0.7, 2.0), tuning_record(1e-1, 0.7, 1.5),
               tuning_record(1.0, None, None, status="diverged")]
    setting, evidence = sweep.choose(records, ["lr"])
    assert setting == {"lr": 1e-1} and evidence["by"] == "dev score"  # tie on score: lower dev loss
    # the mean over tuning seeds decides
    records = [tuning_record(1e-3, 0.9, 1.0), tuning_record(1e-3, 0.1, 1.0, seed=1), tuning_record(1e-2, 0.6, 1.0),
               tuning_record(1e-2, 0.6, 1.0, seed=1)]
    assert sweep.choose(records, ["lr"])[0] == {"lr": 1e-2}
    # no dev score (nan): dev loss alone
    records = [tuning_record(1e-3, float("nan"), 1.0), tuning_record(1e-2, float("nan"), 0.5)]
    assert sweep.choose(records, ["lr"])[0] == {"lr": 1e-2}
    assert sweep.choose([tuning_record(1e-3, None, None, status="failed")], ["lr"])[0] is None


def test_grid_steps_and_edges():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]  # log-spaced: the next value by the grid's mean ratio (√10)
    assert sweep.step_beyond(lrs, True, 1.0) == 0.0316 and sweep.step_beyond(lrs, False, 1e-6) == 3.16e-5
    assert sweep.step_beyond([4, 8, 12], True, 100) == 16 and sweep.step_beyond([4, 8, 16], True, 100) == 32
    assert sweep.step_beyond([0.3, 0.6], True, 1.0) == 1.0  # one step overshoots: held at the bound
    assert sweep.step_beyond([0.3, 1.0], True, 1.0) is None  # at the bound already
    # an extended grid continues the declared grid's step, without compounding its rounding
    assert sweep.step_beyond([0.01, 0.0316, 0.1, 0.316], True, 10.0, [0.01, 0.0316, 0.1]) == 1.0
    grid = {"lr": [1e-3, 1e-2], "r": [4, 8], "targets": ["q", "v"]}
    assert sweep.edges(grid, {"lr": 1e-2, "r": 4, "targets": "v"}) == ["lr", "r"]  # only numeric grids have edges
    assert sweep.extend(grid, {"lr": 1e-2, "r": 4, "targets": "v"}, {"lr": (1e-6, 1.0)}) == {"lr": [0.1]}
    assert sweep.extend({"lr": lrs}, {"lr": 1e-3}, {"lr": (1e-6, 1.0)}) == {}  # the best is inside
    # constructed tuning records whose best is the grid's top value: the choice says so
    records = [tuning_record(lr, score, 1.0) for lr, score in ((1e-3, 0.5), (3e-3, 0.6), (1e-2, 0.7))]
    setting, _ = sweep.choose(records, ["lr"])
    assert sweep.extend({"lr": [1e-3, 3e-3, 1e-2]}, setting, {"lr": (1e-6, 1.0)}) == {"lr": [0.0316]}


class Scripted:
    """An executor whose tuning runs score by a known function of their setting (no training):
    the dev score falls with the distance of log10(lr) from ``best``'s, and rises with ``r``."""

    def __init__(self, best: float):
        self.best, self.ran = best, []

    def map(self, cells, out):
        import math

        from suite.atomic import write_json_atomic
        from suite.cell.records import new_record, record_path

        for cell in cells:
            score = -abs(math.log10(cell.params["lr"] / self.best)) + cell.params["r"] / 100
            record = {**new_record(cell), "status": "ok", "metrics": {"dev_score": score, "eval_loss": -score}}
            write_json_atomic(record_path(out, cell.run_id), record)
            self.ran.append(cell.run_id)
            yield cell, record


@pytest.mark.parametrize("best", [0.3, 10.0, 1e-5])
def test_sweeps_extend_a_grid_whose_best_is_at_its_edge(tmp_path, registry, best):
    from tqdm import tqdm

    from suite.shootout import runner

    config = build_config({"methods": ["lora"], "tasks": ["zh-sentiment"], "out": str(tmp_path),
                           "sweep": ["lora.lr=1e-3,3e-3,1e-2", "lora.r=4,8"], "baselines": False}).fill_defaults(registry)

    def bracket():
        plan = runner.resolve(config, registry)
        plan.methods["lora"].bounds = {"r": (1, 16)}  # this shootout's instance: r may grow to 16
        executor = Scripted(best)
        runner._execute(executor, runner.tuning_cells(config, plan), tmp_path, tqdm(disable=True),
                        runner.Outcome(tmp_path, 0, 0, {}))
        runner.bracket(executor, config, plan, tmp_path, tqdm(disable=True), runner.Outcome(tmp_path, 0, 0, {}))
        return executor.ran, runner.choose_settings(tmp_path, config, plan)[("lora", "zh-sentiment")]

    ran, tuning = bracket()
    lrs = sorted({json.loads(p.read_text())["config"]["params"]["lr"] for p in tmp_path.glob("runs/*/record.json")})
    assert tuning["setting"]["r"] == 16 and tuning["extended"]["r"] == [16]  # r doubled once, to its bound
    if best == 0.3:  # up by √10 until 0.316 is inside: 0.0316, 0.1, 0.316, 1
        assert lrs == [1e-3, 3e-3, 1e-2, 0.0316, 0.1, 0.316, 1.0]
        assert tuning["setting"]["lr"] == 0.316 and tuning["edge"] == ["r"]
    elif best == 10.0:  # up to the default bound, 1: still at the edge, marked
        assert lrs[-1] == 1.0 and tuning["setting"]["lr"] == 1.0 and tuning["edge"] == ["lr", "r"]
    else:  # down: 3.16e-4, 1e-4, 3.16e-5, 1e-5, 3.16e-6
        assert lrs[:2] == [3.16e-6, 1e-5] and tuning["setting"]["lr"] == 1e-5 and tuning["edge"] == ["r"]
    assert tuning["tried"] == len(lrs) * 3 == len(ran)  # r: 4, 8 and 16 at every lr
    assert len(ran) == len(set(ran))  # no cell ran twice
    again, same = bracket()  # the same shootout again on the same directory (--resume): nothing runs, the same choice
    assert again == [] and same == tuning


#: LoRA with a narrow lr bound: a sweep of lr 1e-3, 2e-3 (whose best is at an edge whatever the
#: runs say) is one step from the bound on either side, so it grows by exactly one value
BOUNDED = """
from plugins.lora import LoRA
from suite import hookimpl


class Bounded(LoRA):
    name = "lora-bounded"
    default = False
    bounds = {"lr": (5e-4, 4e-3)}


@hookimpl
def register_methods(register):
    register(Bounded())
"""


# ---------------------------------------------------------------- paired tests


def test_paired_test_known_answers():
    ids = [f"e{i}" for i in range(64)]
    same = pd.Series(np.random.default_rng(1).random(64), index=ids)
    c = significance.compare(same, same.copy())
    assert c.diff == 0 and c.p_two_sided == 1.0 and not c.differs and not c.above
    always = pd.Series(1.0, index=ids)
    half = pd.Series([1.0, 0.0] * 32, index=ids)
    c = significance.compare(always, half)
    assert c.diff == 0.5 and c.p_two_sided < 0.001 and c.differs and c.above
    assert not significance.compare(half, always).above
    # a small difference on few examples is no difference
    noisy = pd.Series([1.0, 0.0, 1.0, 0.0], index=ids[:4])
    assert not significance.compare(noisy, pd.Series([1.0, 0.0, 0.0, 0.0], index=ids[:4])).differs
    best, against = significance.tied_for_best({"a": always, "b": half, "c": always.copy()},
                                               {"a": 1.0, "b": 0.5, "c": 1.0})
    assert best == ["a", "c"] and against["b"].differs


def test_tuning_records_never_enter_the_main_means(tmp_path):
    from suite.report import write_report

    records = fx.records()
    for lr, score in ((1e-4, 0.0), (1e-1, 1.0)):  # tuning runs of lora with extreme scores and costs
        r = fx.record("zh-demo", "lora", 0, score=None, dev=0.1, memory=9e9)
        r.update(run_id=f"zh-demo__lora__tune-lr{lr}__s0", phase="tune")
        r["config"]["params"] = {"lr": lr}
        r["metrics"]["dev_score"] = score
        records.append(r)
    with_tuning = fx.write(tmp_path / "a", records)
    without = fx.write(tmp_path / "b", fx.records())
    write_report([with_tuning], with_tuning)
    write_report([without], without)
    results = pd.read_csv(with_tuning / "results.csv")
    assert (results.phase == "tune").sum() == 2  # recorded ...
    table = (with_tuning / "summary.md").read_text().split("## zh-demo ")[1].split("\n## ")[0]
    plain = (without / "summary.md").read_text().split("## zh-demo ")[1].split("\n## ")[0]
    lora = next(line for line in table.splitlines() if line.startswith("| lora "))
    assert lora == next(line for line in plain.splitlines() if line.startswith("| lora "))  # ... never in the means
    assert "9.00 GB" not in table


# ---------------------------------------------------------------- end to end


def sentiment_file(path, registry, flip_test: bool):
    """A user file of zh-sentiment reviews; ``flip_test`` swaps the label of every record that the
    file task's hash puts in the test split (the train and dev records stay the same)."""
    from suite.data.tasks import normalise, split_of

    task = registry.tasks["zh-sentiment"]
    examples = [e for split in task.splits({"train": 160, "dev": 30, "test": 30}).values() for e in split]
    swap = {"正面": "负面", "负面": "正面"}
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            prompt = normalise(e.instruction) + "\n" + normalise(e.input)
            output = swap[e.output] if flip_test and split_of(prompt) == "test" else e.output
            f.write(json.dumps({"instruction": e.instruction, "input": e.input, "output": output},
                               ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, registry):
    """The same sweep on a file and on the file with its test labels permuted."""
    d = tmp_path_factory.mktemp("sweep")
    env = plugin_env(d, "bounded", BOUNDED, ROOT)
    outs = {}
    for flip in (False, True):
        data = sentiment_file(d / f"reviews-{flip}.jsonl", registry, flip)
        out = d / f"out-{flip}"
        proc = leitai("run", "--methods", "lora-bounded", "--tasks", f"file:{data}?score=accuracy", "--sweep",
                      "lora-bounded.lr=1e-3,2e-3", "--out", out, *SMALL, "--workers", "2",
                      "--task-size", "full", env=env)  # every test record: the same ones on both files
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "1 runs (1 ok), 0 already done, 3 tuning runs, 1 baseline runs" in proc.stdout
        outs[flip] = out
    return outs


def test_permuting_test_references_changes_no_choice(sweeps):
    tuned = {}
    for flip, out in sweeps.items():
        records = [json.loads(p.read_text()) for p in out.glob("runs/*/record.json")]
        tune = sorted((r["config"]["params"]["lr"], r["metrics"]["dev_score"], r["metrics"]["eval_loss"])
                      for r in records if r["phase"] == "tune")
        final = next(r for r in records if r["phase"] == "final")
        tuned[flip] = tune, final["config"]["tuning"]["setting"], final["config"]["params"]["lr"]
        assert final["config"]["tuning"]["tried"] == 3  # the grid grew by one value
    assert tuned[False] == tuned[True]  # same dev figures, same choice: test labels were never read
    # the test labels did change: the same model's choices are right on one file where wrong on the other
    choice = {flip: pd.read_csv(out / "results.csv").query("phase == 'final'").choice_accuracy.iloc[0]
              for flip, out in sweeps.items()}
    assert choice[False] + choice[True] == pytest.approx(1.0)


def test_report_shows_the_tuning(sweeps):
    out = sweeps[False]
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Verdict" in md and "lora-bounded is best" in md
    # the grid's best was at an edge: one value added beyond it, up to the bound; marked if still at an edge
    records = [json.loads(p.read_text()) for p in out.glob("runs/*/record.json")]
    lrs = sorted(r["config"]["params"]["lr"] for r in records if r["phase"] == "tune")
    tuning = next(r for r in records if r["phase"] == "final")["config"]["tuning"]
    assert tuning["extended"]["lr"] in ([5e-4], [4e-3]) and lrs == sorted([1e-3, 2e-3] + tuning["extended"]["lr"])
    chosen = tuning["setting"]["lr"]
    assert tuning["edge"] == (["lr"] if chosen in (lrs[0], lrs[-1]) else [])
    assert (f"lr {chosen:g} (edge)" in md) == bool(tuning["edge"])
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "setting" in header and "tried" in header and "tuning train s" in header and "vs baseline" in header
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Sensitivity to the swept settings" in html and "<svg" in html
    results = pd.read_csv(out / "results.csv")
    assert sorted(results.phase) == ["final", "tune", "tune", "tune"]
    assert results[results.phase == "tune"].score.isna().all() and results[results.phase == "tune"].dev_score.notna().all()


def test_baselines_equal_an_independent_computation(sweeps, registry):
    """The trivial (majority) baseline and the untrained base model's answers, scored again here
    from the task file and the model, without the arena's evaluation code."""
    import torch

    from suite.data.user_files import resolve_task
    from suite.models.loading import prepare_tokenizer

    out = sweeps[False]
    base = pd.read_csv(out / "baselines.csv").set_index("baseline")
    record = json.loads(next(out.glob("runs/*__baseline__s0/record.json")).read_text())
    task = resolve_task(record["task"], registry)
    splits = task.splits(record["config"]["task_sizes"])
    labels = [e.output for e in splits["train"]]
    majority = max(sorted(set(labels)), key=labels.count)
    refs = [e.output for e in splits["test"]]
    assert base.loc["majority label", "score"] == pytest.approx(sum(r == majority for r in refs) / len(refs))

    model, tok = registry.models["tiny-zh"].load()
    tok = prepare_tokenizer(tok)
    answers = {}
    for g in record["generations"]:
        ids = tok(g["prompt"], return_tensors="pt").input_ids
        with torch.no_grad():
            new = model.generate(ids, max_new_tokens=record["metrics"]["max_new_tokens"], do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        answers[g["example_id"]] = tok.decode(new, skip_special_tokens=True).strip()
        assert answers[g["example_id"]] == g["output"]
    expected = sum(answers[e.id] == e.output for e in splits["test"]) / len(refs)
    assert base.loc["base model", "score"] == pytest.approx(expected)


def test_choice_accuracy_equals_an_independent_log_likelihood(registry):
    import torch

    from suite.data import prepared
    from suite.measures.task_scores import choice_accuracy
    from suite.models.loading import prepare_tokenizer

    model, tok = registry.models["tiny-zh"].load()
    tok = prepare_tokenizer(tok)
    torch.manual_seed(0)
    with torch.no_grad():  # move the model off its pretrained point, so its choices vary
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    task = registry.tasks["zh-sentiment"]
    data = prepared.prepare(task, {"train": 16, "dev": 4, "test": 24}, 256, tok)
    refs = [e.output for e in data.test]
    right = 0
    for prompt, ref in zip(data.test_prompts, refs):
        lls = []
        for choice in task.choices:
            answer = tok(choice, add_special_tokens=False).input_ids + [tok.eos_token_id]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            lls.append(sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer)))
        right += task.choices[int(np.argmax(lls))] == ref
    got = choice_accuracy(model, tok, data.test_prompts, task.choices, refs, "cpu", batch_size=5)
    assert got == pytest.approx(right / len(refs))
