"""``--retention``: general-ability retention through lm-evaluation-harness (suite/measures/retention.py),
on the offline fixture beside this file (retention_tasks/: C-Eval's CSV layout, a harness task config)."""
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import tomllib
import torch
from conftest import ROOT, foreign_lines, leitai

from suite.cli import app
from suite.measures import retention

lm_eval = pytest.importorskip("lm_eval", reason="the eval extra: pip install -e '.[eval]'")

TASKS = Path(__file__).parent / "retention_tasks"
SPEC = "lm-eval:zh-idiom-completion,zh-idiom-last"


def test_the_eval_extra_pins_the_version_the_code_names_and_it_is_installed_and_in_ci():
    from importlib.metadata import version

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert extras["eval"] == [f"lm-eval=={retention.PINNED}"]
    assert version("lm_eval") == retention.PINNED
    assert ".[test,ray,quantize,eval]" in (ROOT / ".ci/run").read_text()
    assert ".[test,ray,quantize,eval]" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def base():
    from plugins.models.tiny_zh import TinyZh

    model, tokenizer = TinyZh().load()
    return model, tokenizer


def test_the_fixture_is_above_chance_and_what_the_pin_is_for(base):
    """What leitai relies on in the pinned harness: its HFLM takes a model in memory, and its samples
    give each question's ``acc`` in document order; the fixture is in C-Eval's CSV layout."""
    model, tokenizer = base
    model.train()  # as a trained model comes out of the training loop: measured in eval mode, then given back
    got = retention.measure(model, tokenizer, SPEC, str(TASKS))
    assert model.training
    assert got["harness"] == f"lm-eval {retention.PINNED}"
    for name in ("zh-idiom-completion", "zh-idiom-last"):
        t = got["tasks"][name]
        assert t["questions"] == 100 and set(t["correct"]) <= {0, 1}
        assert t["accuracy"] == sum(t["correct"]) / 100 > 0.25 + 0.2  # chance: 0.25, four choices
    for csv in TASKS.glob("*_val.csv"):
        assert list(pd.read_csv(csv).columns) == ["id", "question", "A", "B", "C", "D", "answer"]


def test_a_method_that_prepends_positions_is_scored_on_the_real_positions_only(base):
    from peft import PromptTuningConfig, get_peft_model

    model, _ = base
    tuned = get_peft_model(type(model)(model.config), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full = tuned(input_ids=ids).logits
        aligned = retention.Aligned(tuned)(ids).logits
    assert full.shape[1] == 9 and aligned.shape[1] == 4
    assert torch.equal(aligned, full[:, -4:])


@pytest.fixture(scope="module")
def shootout(tmp_path_factory):
    out = tmp_path_factory.mktemp("retention") / "out"
    proc = leitai("run", "--methods", "full,lora", "--retention", SPEC, "--retention-include", TASKS,
                  "--max-steps", "5", "--task-size", "16", "--side-corpus", "none", "--infer-prompts", "0",
                  "--out", out, env={"LEITAI_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr
    # the harness's and datasets' bars and lines stay quiet (suite/measures/retention.py, _quiet)
    assert foreign_lines(proc.stderr, sorted(p.name for p in (out / "runs").iterdir())) == []
    return out


def _records(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text(encoding="utf-8")) for p in (out / "runs").glob("*/record.json")}


def test_records_hold_each_task_before_and_after_and_each_question(shootout):
    records = _records(shootout)
    base = records["zh-sentiment__baseline__s0"]["retention"]["tasks"]
    for run in ("zh-sentiment__full__s0", "zh-sentiment__lora__s0"):
        r = records[run]
        assert r["config"]["retention"] == SPEC and r["config"]["retention_include"] == str(TASKS.resolve())
        tasks = r["retention"]["tasks"]
        assert set(tasks) == set(base) == {"zh-idiom-completion", "zh-idiom-last"}
        assert all(len(t["correct"]) == t["questions"] == 100 for t in tasks.values())
        assert r["metrics"]["retention_accuracy"] == sum(sum(t["correct"]) for t in tasks.values()) / 200
    results = pd.read_csv(shootout / "results.csv").set_index("plain_method")
    for method in ("full", "lora"):
        row, r = results.loc[method], records[f"zh-sentiment__{method}__s0"]
        before = sum(sum(t["correct"]) for t in base.values()) / 200
        assert row.retention_base_accuracy == pytest.approx(before)
        assert row.retention_change == pytest.approx(row.retention_accuracy - before)
        per_task = json.loads(row.retention_tasks)
        assert per_task["zh-idiom-last"] == {"before": base["zh-idiom-last"]["accuracy"],
                                            "after": r["retention"]["tasks"]["zh-idiom-last"]["accuracy"]}
    answered = pd.read_csv(shootout / "retention.csv")
    assert len(answered) == 3 * 200 and set(answered.correct) <= {0, 1}
    from suite.report.columns import undocumented_columns

    assert undocumented_columns(results.reset_index().columns) == []


def test_the_base_accuracy_equals_a_direct_simple_evaluate_call_on_the_same_model(shootout):
    from lm_eval.tasks import TaskManager

    from plugins.models.tiny_zh import HERE

    base = _records(shootout)["zh-sentiment__baseline__s0"]["retention"]["tasks"]
    direct = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={HERE},dtype=float32", device="cpu",
                                     tasks=sorted(base), task_manager=TaskManager(include_path=str(TASKS)),
                                     batch_size=32, log_samples=True, bootstrap_iters=0)
    for name, t in base.items():
        assert t["accuracy"] == direct["results"][name]["acc,none"]
        assert t["correct"] == [int(s["acc"]) for s in sorted(direct["samples"][name], key=lambda s: s["doc_id"])]


def test_the_report_shows_retention_beside_forgetting_with_paired_tests(shootout):
    summary = (shootout / "summary.md").read_text(encoding="utf-8")
    header = [c.strip() for c in summary.split("## zh-sentiment")[1].split("\n")[2].split("|")]
    assert header[header.index("forgetting") + 1] == "retention Δ"
    table = summary.split("### Retention")[1]
    assert "| base model" in table and "vs base" in table and "(p = " in table
    verdict = summary.split("## Verdict")[1].split("## ")[0]
    assert "retention (lm-eval zh-idiom-completion, zh-idiom-last; 200 questions; the base model answers" in verdict
    html = (shootout / "report.html").read_text(encoding="utf-8")
    assert "<h3>Retention</h3>" in html and "retention lost (accuracy)" in html  # the Pareto figure's panel


@pytest.mark.parametrize("args, line", [
    (["--retention", "lm-eval:no-such-task", "--retention-include", TASKS],
     f"leitai: error: --retention: lm-eval {retention.PINNED} knows no task 'no-such-task' or in {TASKS.resolve()}"),
    (["--retention", "lm-eval:zh-idiom-last", "--retention-include", "no/such/dir"],
     f"leitai: error: --retention-include {Path('no/such/dir').resolve()}: no such directory (task configs in the "
     "harness's YAML format)"),
    (["--retention", "zh-idiom-last"],
     "leitai: error: --retention takes none or lm-eval:TASK[,TASK...] (lm-evaluation-harness task names), not "
     "'zh-idiom-last'"),
    (["--retention", "lm-eval:zh-idiom-last", "--retention-include", TASKS, "--no-baselines"],
     "leitai: error: --retention scores the base model in the baseline cells, and --no-baselines drops them"),
])
def test_bad_retention_settings_stop_before_any_cell_in_one_line(tmp_path, capsys, args, line):
    out = tmp_path / "out"
    assert app.main(["run", "--methods", "lora", *map(str, args), "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err.strip() == line
    assert not out.exists()


def test_a_missing_local_dataset_is_refused_naming_its_config(tmp_path, capsys):
    (tmp_path / "tasks").mkdir()
    config = tmp_path / "tasks" / "mine.yaml"
    config.write_text((TASKS / "zh_idiom_last.yaml").read_text(encoding="utf-8")
                      .replace("task: zh-idiom-last", "task: mine")
                      .replace("custom_dataset: !function loader.load\n", "dataset_path: csv\n")
                      .replace("val: idiom_last_val.csv", f"val: {tmp_path}/gone/ceval_val.csv"), encoding="utf-8")
    out = tmp_path / "out"
    assert app.main(["run", "--methods", "lora", "--retention", "lm-eval:mine", "--retention-include",
                     str(tmp_path / "tasks"), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"leitai: error: --retention: harness task 'mine' ({config}) cannot load its data here: ")
    assert "\n" not in err and not out.exists()


def test_without_the_eval_extra_one_line_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name == "lm_eval":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    out = tmp_path / "out"
    assert app.main(["run", "--methods", "lora", "--retention", "lm-eval:zh-idiom-last", "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err.strip() == ("leitai: error: --retention needs lm-evaluation-harness (leitai[eval]), "
                                               "which is not installed: pip install -e '.[eval]' in leitai's clone")


def test_the_default_run_does_not_touch_the_harness(registry):
    """Without --retention nothing of the harness is imported, checked or run: the default
    shootout's cells, scores and time stay as they were."""
    from suite.config.settings import ShootoutConfig
    from suite.shootout.runner import final_cells, resolve

    before = {m for m in sys.modules if m.split(".")[0] == "lm_eval"}
    config = ShootoutConfig(methods=["lora"], max_steps=1).fill_defaults(registry)
    assert config.retention == "none" and config.retention_include == ""
    cells = final_cells(config, resolve(config, registry))
    assert all(c.retention == "none" for c in cells)
    assert {m for m in sys.modules if m.split(".")[0] == "lm_eval"} == before
