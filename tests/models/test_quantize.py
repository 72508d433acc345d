"""``--quantize``: bitsandbytes 4- and 8-bit bases (docs/quantize.md)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tomllib
import torch
from conftest import CELLS_ONLY, ROOT, leitai

from suite.cli import app
from suite.config import variants
from suite.errors import UsageError
from suite.models import quantize

bnb = pytest.importorskip("bitsandbytes", reason="the quantize extra: pip install -e '.[quantize]'")


def test_the_quantize_extra_pins_the_range_the_code_names_and_the_installed_version_is_in_it():
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert extras["quantize"] == ["bitsandbytes" + ",".join(quantize.BNB_RANGE)]
    assert version("bitsandbytes") in SpecifierSet(",".join(quantize.BNB_RANGE))
    assert "quantize" in (ROOT / "tox.ini").read_text() and ".[test,ray,quantize,eval]" in (ROOT / ".ci/run").read_text()


def test_importing_suite_then_peft_prints_nothing_on_stderr():
    # bitsandbytes' import-time warning about the optional `kernels` package (suite/quiet.py)
    # would be a second line on the stderr of every leitai process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", "import suite, peft, bitsandbytes; print(bitsandbytes.__version__)"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("args, line", [
    (["--methods", "full", "--quantize", "nf4"],
     "leitai: error: method 'full' cannot run on a quantized base (--quantize nf4): full fine-tuning trains every "
     "base weight, and 4- or 8-bit weights cannot train"),
    (["--methods", "lora,loha", "--quantize", "none,int8"],
     "leitai: error: method 'loha' cannot run on a quantized base (--quantize int8): peft cannot put LoHa on a "
     "bitsandbytes 4- or 8-bit layer"),
    (["--methods", "dora", "--quantize", "nf4,int8"], "leitai: error: method 'dora' cannot run on a quantized base "
     "(--quantize int8): peft's DoRA reads an 8-bit weight in a way that drops its scales on the CPU (peft 0.21, "
     "bitsandbytes 0.50), so the next forward pass fails"),
    (["--quantize", "nf8"], "leitai: error: --quantize takes none, nf4, fp4 or int8 (or a comma-separated list of "
     "them), not 'nf8'"),
])
def test_what_cannot_run_on_a_quantized_base_stops_before_anything_runs(tmp_path, capsys, args, line):
    out = tmp_path / "out"
    assert app.main(["run", *args, "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err.strip() == line
    assert not out.exists()


def test_without_bitsandbytes_one_line_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed: find_spec None, import fails
    assert app.main(["run", "--methods", "lora", "--quantize", "none,nf4", "--out", str(tmp_path / "o"), "-q"]) == 2
    assert capsys.readouterr().err.strip() == ("leitai: error: --quantize nf4 needs bitsandbytes, which is not "
                                               "installed: pip install -e '.[quantize]' in leitai's clone")
    quantize.require("none")  # a float base needs nothing


def test_a_toml_list_and_the_flag_give_the_same_setting(tmp_path):
    from suite.config.sources import build_config

    toml = tmp_path / "c.toml"
    toml.write_text('quantize = ["none", "nf4"]\n', encoding="utf-8")
    assert variants.values(build_config({}, str(toml)).quantize) == ["none", "nf4"]
    assert build_config({"quantize": "int8, nf4,int8"}).quantize == "int8,nf4"
    toml.write_text('quantize = "q4"\n', encoding="utf-8")
    with pytest.raises(UsageError, match=rf"^{toml}: --quantize takes none"):
        build_config({}, str(toml))


def _lora_on(q: str, registry):
    from suite.measures.resources import count_parameters
    from suite.models import loading

    base, _ = loading.load_base(loading.resolve("tiny-zh", registry), torch.float32, q, torch.device("cpu"))
    base = quantize.prepare(base, gradient_checkpointing=False)
    total = count_parameters(base)
    method = registry.method("lora")
    torch.manual_seed(0)
    return base, total, method, method.apply(base, dict(method.defaults))


@pytest.mark.parametrize("q, layer", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantized_layers_trainable_count_by_hand_and_a_base_that_does_not_change_in_training(registry, q, layer):
    from suite.measures.resources import count_parameters

    base, total, method, model = _lora_on(q, registry)
    layers = {type(m).__name__ for m in model.modules()}
    assert layer in layers and "Linear" in layers  # the output head stays float
    assert total == 5_690_112  # the float model's count: packed 4-bit weights count two to a byte
    # by hand: r x (in + out) for each adapted layer, read from the layers peft wrapped
    r = method.defaults["r"]
    wrapped = [m.base_layer for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert {type(w).__name__ for w in wrapped} == {layer} and len(wrapped) == 8  # q and v of 4 layers
    assert count_parameters(model, trainable_only=True) == sum(r * (w.in_features + w.out_features) for w in wrapped)
    # an inference pass first, as the cell's probe and forgetting measurement make before training
    ids = torch.randint(5, 500, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(input_ids=ids)
    frozen = [(n, p, p.detach().clone()) for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is not None for p in trainable)
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(a, p) for a, p in zip(start, trainable))  # every adapter tensor trained
    changed = [n for n, p, before in frozen if not torch.equal(p.detach(), before)]
    assert not changed and any(p.dtype in (torch.uint8, torch.int8) for _, p, _ in frozen)


def test_lora_on_float_and_nf4_bases_one_shootout_one_table_and_resume(tmp_path):
    out = tmp_path / "out"
    common = ["run", "--methods", "lora", "--quantize", "none,nf4", "--max-steps", "2", "--task-size", "16",
              *CELLS_ONLY, "--out", out, "-q"]
    proc = leitai(*common)
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["zh-sentiment__lora__nf4__s0", "zh-sentiment__lora__s0"]  # the float run's id as before
    r = pd.read_csv(out / "results.csv").set_index("method")
    assert list(r.index) == ["lora", "lora @ nf4"] and (r.status == "ok").all()
    assert list(r.quantize) == ["none", "nf4"]
    assert r.weights_dtype["lora"] == "float32" and "nf4" in r.weights_dtype["lora @ nf4"].split("+")
    assert r.weights_bytes["lora @ nf4"] < 0.6 * r.weights_bytes["lora"]
    assert r.trainable_params["lora @ nf4"] == r.trainable_params["lora"]
    assert r.total_params["lora @ nf4"] == r.total_params["lora"]
    record = json.loads((out / "runs" / "zh-sentiment__lora__nf4__s0" / "record.json").read_text(encoding="utf-8"))
    assert record["config"]["quantize"] == "nf4"
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| lora @ nf4 " in summary and "vs float base" in summary and "runs differ in the setting" not in summary
    # --resume: the same list finds both finished and runs nothing
    again = leitai(*common, "--resume")
    assert again.returncode == 0 and "0 runs (nothing new), 2 already done" in again.stdout, again.stderr


def test_resume_refuses_a_finished_cell_that_ran_on_another_base(tmp_path):
    from suite.cell.spec import Cell
    from suite.shootout.runner import _check_same_settings

    cell = Cell(run_id="t__lora__s0", method="lora", task="t", seed=0, params={"lr": 1.0}, task_sizes=None,
                quantize="none")
    record = {"config": {"params": {"lr": 1.0}, "quantize": "int8"}}
    with pytest.raises(UsageError, match=r"was run with quantize='int8', this shootout asks for 'none'"):
        _check_same_settings(Path(tmp_path), cell, record)
    _check_same_settings(Path(tmp_path), cell, {"config": {"params": {"lr": 1.0}}})  # records from before --quantize


def test_merged_inference_on_a_quantized_base_is_not_applicable_where_merging_changes_the_model():
    from suite.measures.inference import inference_costs

    class Method:
        name, mergeable = "m", True

        def merge(self, model):
            raise NotImplementedError("no merge into Linear4bit")

    from suite.testing import tiny_model

    model = tiny_model("llama")
    out = inference_costs(Method(), model, lambda: model, [[3, 4, 5]], 3, 0, _null,
                          rtol=1e-4, quantized=True)
    assert out["infer_ms_per_token_merged"] is None and out["infer_overhead_merged"] is None
    assert out["infer_merged_not_applicable"].startswith("cannot merge into a quantized layer (NotImplementedError")
    with pytest.raises(NotImplementedError):  # a float base: a method that declares it merges must
        inference_costs(Method(), model, lambda: model, [[3, 4, 5]], 3, 0, _null, rtol=1e-4)


def _null():
    from contextlib import nullcontext

    return nullcontext()


def test_quantize_is_a_variants_dimension_beside_replay_and_the_baselines_run_on_each_base(registry):
    from suite.config.sources import build_config
    from suite.shootout.runner import baseline_cells, final_cells, resolve

    cfg = build_config({"methods": "lora", "quantize": "none,nf4", "replay": "none,zh-news-side:0.3"})
    cfg = cfg.fill_defaults(registry)
    plan = resolve(cfg, registry)
    assert [(c.run_id, variants.display(c.method, vars(c))) for c in final_cells(cfg, plan)] == [
        ("zh-sentiment__lora__s0", "lora"),  # a float base's id and name as before the flag
        ("zh-sentiment__lora__nf4__s0", "lora @ nf4"),
        ("zh-sentiment__lora__replay-zh-news-side-0.3__s0", "lora + replay 0.3"),
        ("zh-sentiment__lora__replay-zh-news-side-0.3__nf4__s0", "lora + replay 0.3 @ nf4"),
    ]
    # the baselines score the untrained base: once per base precision, never with replay (training only)
    assert [(c.run_id, c.quantize, c.replay) for c in baseline_cells(cfg, plan)] == [
        ("zh-sentiment__baseline__s0", "none", "none"), ("zh-sentiment__baseline__nf4__s0", "nf4", "none")]
    nf4_only = build_config({"methods": "lora", "quantize": "nf4"}).fill_defaults(registry)
    assert [c.quantize for c in baseline_cells(nf4_only, resolve(nf4_only, registry))] == ["nf4"]  # no float base loaded


def test_the_report_names_each_base_and_compares_a_quantized_run_with_its_float_base(tmp_path):
    from report_fixture import record, write

    from suite.report import write_report

    def on(q, r):
        r["config"]["quantize"] = q
        if q != "none":
            r["run_id"] = r["run_id"].replace("__s", f"__{q}__s")
        return r

    extra = {"train_seconds": 21.0, "weights_bytes": 100_000,  # per step 1.05 s against the float base's 0.525
             "weights_dtype": "float32+nf4"}
    records = [on("none", record("zh-demo", "lora", s, score=0.6 + 0.1 * s, dev=2.0, memory=m,
                                 extra={"weights_dtype": "float32"}))
               for s, m in ((0, 50e6), (1, 70e6))]
    records += [on("nf4", record("zh-demo", "lora", s, score=0.5, dev=2.1, memory=15e6, extra=extra)) for s in (0, 1)]
    for q, score, probe in (("none", 0.3, 0.8), ("nf4", 0.2, 0.1)):  # a baseline record on each base
        b = on(q, record("zh-demo", "base model", 0, score=score, dev=3.0))
        b["run_id"] = b["run_id"].replace("base model", "baseline")
        b["phase"] = "baseline"
        b["trivial"] = {"kind": "majority", "score": 0.5, "generations": []}
        b["probe"] = {"score": probe, "choice_accuracy": probe, "generations": []}
        records.append(b)
    out = write(tmp_path / "out", records)
    results = write_report([out], out)
    assert sorted(set(results.method)) == ["lora", "lora @ nf4"]
    assert set(results.plain_method) == {"lora"} and sorted(set(results.quantize)) == ["nf4", "none"]
    assert set(results.probe_score) == {0.8}  # the float base's probe
    summary = (out / "summary.md").read_text(encoding="utf-8")
    table = summary.split("## zh-demo (accuracy)")[1].strip().split("\n\n")[0]  # the task's table
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
             if line.startswith("| ")]
    rows = {cells[0]: dict(zip(lines[0], cells)) for cells in lines[1:]}
    # weights 100k/400k; memory 15M against the mean of 50M and 70M; 1.05 s a step against 0.525
    assert rows["lora @ nf4"]["vs float base"] == "weights ×0.250, memory ×0.250, s/step ×2.00"
    assert rows["lora"]["vs float base"] == "–" and rows["lora"]["s/step"] == "0.525"
    assert rows["lora @ nf4"]["s/step"] == "1.05"
    assert rows["lora"]["base"] == "float32" and rows["lora @ nf4"]["base"] == "float32+nf4"
    baselines = [name for name in rows if name.startswith("baseline: ")]
    assert sorted(baselines) == ["baseline: base model", "baseline: base model @ nf4", "baseline: linear probe",
                                 "baseline: majority label"]  # the trivial answers and the probe once
