"""The shootout end to end through the command line: output contract, resume, and cells that
fail, diverge or crash being recorded while the others finish."""
import json
import sys

import pandas as pd
import pytest
from conftest import MISBEHAVING, ROOT, leitai

from suite.report import RESULT_COLUMNS
from suite.report.columns import undocumented_columns

SMALL = ["--max-steps", "3", "--batch-size", "4", "--task-size", "16", "--side-corpus-size", "8", "-q"]

@pytest.fixture(scope="module")
def shootout(tmp_path_factory):
    out = tmp_path_factory.mktemp("shootout") / "out"
    proc = leitai("run", "--methods", "lora,full,raiser,nanner,crasher", "--out", out, *SMALL, env=MISBEHAVING)
    return out, proc


def test_shootout_writes_the_output_contract(shootout):
    out, proc = shootout
    assert proc.returncode == 0, proc.stderr[-2000:]
    check = __import__("subprocess").run(
        [sys.executable, str(ROOT.parent / "shared" / "tools" / "check_output.py"), str(out)],
        capture_output=True, text=True,
    )
    if (ROOT.parent / "shared").exists():
        assert check.returncode == 0, check.stdout
    results = pd.read_csv(out / "results.csv")
    assert set(RESULT_COLUMNS) <= set(results.columns)
    assert not undocumented_columns(results.columns), "describe them in suite.report.columns.COLUMNS"
    assert len(pd.read_parquet(out / "results.parquet")) == len(results) == 5
    ok = results[results.status == "ok"].set_index("method")
    assert set(ok.index) == {"lora", "full"}
    assert ok.loc["full", "trainable_params"] == ok.loc["full", "total_params"]
    assert 0 < ok.loc["lora", "trainable_params"] < ok.loc["lora", "total_params"]
    for col in ("peak_memory_bytes", "train_seconds", "tokens_per_second", "eval_loss", "score", "adapter_bytes"):
        assert ok[col].notna().all(), col
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves.split) == {"train", "dev"}
    gens = pd.read_csv(out / "generations.csv")
    assert set(gens.run_id) == set(ok.run_id) and len(gens) == ok.test_examples.sum() > 0
    assert (out / "runs" / ok.loc["lora", "run_id"] / "adapter" / "adapter_config.json").exists()
    record = json.loads((out / "runs" / ok.loc["lora", "run_id"] / "record.json").read_text())
    assert record["env"]["versions"]["transformers"] and record["env"]["device"] == "cpu"
    # what ran, as the method recorded it (Method.run_info): LoRA's targets, peft's default here
    assert record["method_info"] == {"peft_type": "LORA", "target_modules": ["q_proj", "v_proj"],
                                     "targets_from": "peft default for llama"}
    assert "zh-sentiment" in (out / "summary.md").read_text()
    # the task is tokenised once (the first cell), then read from the cache by the next
    assert ok["data_seconds"].notna().all() and str(ok.loc["full", "data_cached"]) == "True"


def test_failures_are_results_and_the_rest_finish(shootout):
    out, _ = shootout
    results = pd.read_csv(out / "results.csv").set_index("method")
    assert results.loc["raiser", "status"] == "failed"
    assert results.loc["raiser", "error"] == "RuntimeError: this method is broken on purpose"
    assert results.loc["nanner", "status"] == "diverged"
    assert "non-finite" in results.loc["nanner", "error"]
    assert results.loc["crasher", "status"] == "failed"
    assert results.loc["crasher", "error"].startswith("cell process exited with status 3")
    summary = (out / "summary.md").read_text()
    assert "raiser" in summary and "crasher" in summary


def test_resume_skips_finished_cells(shootout):
    out, _ = shootout
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/record.json")}
    again = leitai("run", "--methods", "lora,full,raiser,nanner,crasher", "--out", out, "--resume", *SMALL, env=MISBEHAVING)
    assert again.returncode == 0, again.stderr
    assert "0 runs (nothing new), 5 already done" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/record.json")} == stamps
    more = leitai("run", "--methods", "lora", "--seeds", "2", "--out", out, "--resume", *SMALL)
    assert "1 runs (1 ok), 1 already done" in more.stdout, more.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(pd.read_csv(out / "results.csv")) == 6


def test_refuses_to_mix_shootouts(shootout):
    out, _ = shootout
    proc = leitai("run", "--methods", "lora", "--out", out, *SMALL)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("leitai: error:") and "--resume" in proc.stderr
    changed = leitai("run", "--methods", "lora", "--out", out, "--resume", "--set", "lora.r=2", *SMALL)
    assert changed.returncode == 2 and "was run with params=" in changed.stderr


def test_resume_refuses_a_changed_fair_setting(shootout):
    """--resume compares the same settings as the report: a changed warmup is refused."""
    from suite.config.settings import FAIR_SETTINGS
    from suite.report.environment import FAIR_SETTINGS as REPORTED

    assert REPORTED is FAIR_SETTINGS and "warmup" in FAIR_SETTINGS
    out, _ = shootout
    proc = leitai("run", "--methods", "lora", "--out", out, "--resume", "--warmup", "0.2", *SMALL)
    assert proc.returncode == 2 and "was run with warmup=0.1, this shootout asks for 0.2" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--set", "lora.nope=1"], "method 'lora' has no setting 'nope'"),
        (["--set", "lora"], "--set takes METHOD.SETTING=VALUE"),
        (["--seeds", "x"], "--seeds takes a count"),
        (["--device", "tpu"], "--device takes auto, cpu or cuda"),
        (["--config", "/no/such.toml"], "/no/such.toml: cannot read config"),
    ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
    proc = leitai("run", "--out", tmp_path / "o", *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "o" / "runs").exists()


def test_generations_show_the_same_prompts_for_every_method(shootout):
    out, _ = shootout
    gens = pd.read_csv(out / "generations.csv")
    per_run = {run: tuple(zip(g.example_id, g.prompt, g.reference)) for run, g in gens.groupby("run_id")}
    assert len(per_run) >= 2 and len(set(per_run.values())) == 1  # every method and seed, the same sample


def test_gradient_checkpointing_keeps_less_for_backward(shootout, tmp_path):
    """A cell with ``--gradient-checkpointing`` trains and saves fewer bytes for backward than
    the same cell without it."""
    out, _ = shootout
    proc = leitai("run", "--methods", "lora", "--gradient-checkpointing", "--no-baselines", "--out", tmp_path / "gc", *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    gc = pd.read_csv(tmp_path / "gc" / "results.csv").iloc[0]
    results = pd.read_csv(out / "results.csv")
    plain = results[(results.method == "lora") & (results.seed == 0)].iloc[0]
    assert gc.status == "ok"
    assert gc.activation_bytes < plain.activation_bytes
    record = json.loads(next((tmp_path / "gc" / "runs").glob("*/record.json")).read_text())
    assert record["config"]["gradient_checkpointing"] is True


def test_the_docs_recipe_reloads_a_runs_adapter_and_gives_its_answer(shootout, tmp_path):
    """docs/records.md's "Reloading a trained adapter", run as written on this shootout's LoRA
    run: the reloaded model gives the run's own greedy answer to the first test prompt."""
    import re
    import subprocess

    out, _ = shootout
    text = (ROOT / "docs" / "records.md").read_text(encoding="utf-8")
    code = re.search(r"^```python\n(import json\n.*?)^```$", text, flags=re.S | re.M).group(1)
    run = next((out / "runs").glob("*__lora__s0"))
    assert 'Path("reports/mine/runs/zh-sentiment__lora__s0")' in code
    script = tmp_path / "reload.py"
    script.write_text(code.replace('"reports/mine/runs/zh-sentiment__lora__s0"', repr(str(run))), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    example_id, _, answer = done.stdout.splitlines()[-1].partition(" ")
    record = json.loads((run / "record.json").read_text(encoding="utf-8"))
    ran = {g["example_id"]: g["output"] for g in record["generations"]}
    assert answer.strip() == ran[example_id].strip()
