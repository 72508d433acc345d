"""Sharded cells (--shard fsdp over --gpus-per-cell processes; gloo on the CPU), pure bf16 and 8-bit
AdamW: what each process holds, planned and measured alike; the same training as one process with
the same batch; the saved result reloads in one process; a dead rank ends its cell, not the
shootout; and the placement of cells on GPUs."""
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CELLS_ONLY, MISBEHAVING, leitai

RUN = ["--max-steps", "5", "--batch-size", "8", "--task-size", "32", *CELLS_ONLY, "-q"]
COMPONENTS = ("weights_bytes", "grads_bytes", "optimizer_bytes")


def _records(out: Path) -> dict:
    return {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in out.glob("runs/*/record.json")}


def _train_losses(record: dict) -> np.ndarray:
    return np.array([c["loss"] for c in record["curve"] if c["split"] == "train"])


@pytest.fixture(scope="module")
def shootouts(tmp_path_factory):
    """Every built-in method sharded over two processes, and full, lora, adalora and lst in one
    process too (lora and adalora without dropout: its masks are drawn per process). AdaLoRA
    keeps its trained parameters whole on every process (Method.shards_trained), so its
    gradients are averaged by the core, not by FSDP."""
    out = tmp_path_factory.mktemp("sharded")
    args = ["--set", "lora.dropout=0", "--set", "adalora.dropout=0", *RUN]
    one = leitai("run", "--methods", "full,lora,lst,adalora", *args, "--out", out / "one")
    two = leitai("run", "--methods", "all", *args, "--gpus-per-cell", "2", "--shard", "fsdp", "--out", out / "two",
                 timeout=1200)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    return _records(out / "one"), _records(out / "two"), out / "two"


def test_every_method_trains_sharded_and_records_each_process(shootouts):
    """``--methods all`` sharded: every built-in method trains (AdaLoRA, whose penalty and budget
    read its matrices whole, failed until it kept them whole), and its record says how."""
    from suite.plugins import registry

    _, sharded, _ = shootouts
    assert sorted(sharded) == sorted(registry().methods)
    for name, record in sharded.items():
        assert record["status"] == "ok", (name, record.get("error"))
        m = record["metrics"]
        assert m["processes"] == 2 and m["shard"] == "fsdp" and record["config"]["shard"] == "fsdp"
        assert set(m["memory_per_process"]) >= set(COMPONENTS) and len(m["peak_memory_per_device"]) == 2


def test_each_process_holds_half_of_full_fine_tuning(shootouts):
    one, sharded, _ = shootouts
    whole = sum(one["full"]["metrics"][k] for k in COMPONENTS)
    per_process = sum(sharded["full"]["metrics"][k] for k in COMPONENTS)  # the largest process's
    assert per_process <= 0.55 * whole, (per_process, whole)


def test_the_planner_predicts_each_process_exactly(shootouts):
    """Weights, gradients and optimiser state of the largest process (the first: FSDP gives it
    the first and largest chunk of every parameter), and what the first process's first
    micro-batch keeps for backward (the record's own figure is the largest process's, whose
    share of the batch may be longer). The activations agree within 256 bytes of 15 to 75 MB
    (seen: 96 and 192 bytes, the size of a small index tensor that the meta trace holds in a
    storage of its own in a cell of two processes; one process sharded agrees to the byte). Every
    built-in method."""
    _, sharded, _ = shootouts
    for name, record in sharded.items():
        plan, m = record["plan"], record["metrics"]
        assert {k: plan[k] for k in COMPONENTS} == {k: m[k] for k in COMPONENTS}, name
        first = {k: v[0] for k, v in m["memory_per_process"].items()}
        assert abs(plan["activation_bytes"] - first["activation_bytes"]) <= 256, (name, plan, first)
        assert m["activation_bytes"] == max(m["memory_per_process"]["activation_bytes"])


def test_sharded_training_is_one_processs_with_the_same_batch(shootouts):
    """Each process computes its half of every batch, its loss weighted by its share of the step's
    answer tokens, so the step is the whole batch's: full fine-tuning and LoRA agree with one
    process to float32 rounding (rtol 1e-5 at every step: the halves' gradients are summed in
    another order), and so does AdaLoRA, whose rank budget is moved by those gradients. LST's
    training is chaotic at its learning rate: rounding-level differences grow (--grad-accum 2 in
    one process alone moves its 20th-step loss by 5%), so for it only the first two steps are
    compared."""
    one, sharded, _ = shootouts
    for name in ("full", "lora", "adalora"):
        np.testing.assert_allclose(_train_losses(sharded[name]), _train_losses(one[name]), rtol=1e-5)
    np.testing.assert_allclose(_train_losses(sharded["lst"])[:2], _train_losses(one["lst"])[:2], rtol=1e-6)


def test_the_sharded_result_reloads_in_one_process_with_the_recorded_answers(shootouts):
    from suite.cell.spec import Cell
    from suite.data.prepared import prepare
    from suite.measures.generation import greedy_generate
    from suite.models.loading import prepare_tokenizer
    from suite.plugins import registry

    _, sharded, out = shootouts
    reg = registry()
    for name in ("full", "lora", "lst", "adalora"):
        record = sharded[name]
        cell = Cell.from_json((out / "runs" / record["run_id"] / "cell.json").read_text())
        method = reg.method(name, cell.params)
        base, tokenizer = reg.models["tiny-zh"].load()
        tokenizer = prepare_tokenizer(tokenizer)
        model = method.load(base, out / "runs" / record["run_id"] / "adapter", dict(cell.params))
        data = prepare(reg.tasks["zh-sentiment"], cell.task_sizes, cell.max_len, tokenizer)
        ids = greedy_generate(model, data.test_prompts[:4], data.max_new_tokens, data.stop_ids, tokenizer.pad_token_id,
                              "cpu")
        answers = [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
        assert answers == [g["output"] for g in record["generations"][:4]], name


def test_a_rank_killed_ends_its_cell_and_the_shootout_goes_on(tmp_path):
    """kill -9 of one process of a sharded cell: the launcher ends the other, the cell is failed
    (no hang in a collective), no process is left, and the next cell runs."""
    from conftest import start

    markers = tmp_path / "m"
    markers.mkdir()
    out = tmp_path / "out"
    driver = start("run", "--methods", "hangs,bitfit", *RUN, "--gpus-per-cell", "2", "--shard", "fsdp", "--out", out,
                   env={**MISBEHAVING, "UNRULY_DIR": str(markers)})
    deadline = time.time() + 300
    pids = {}
    while len(pids) < 2:
        assert time.time() < deadline and driver.poll() is None, driver.stderr.read() if driver.poll() is not None else ""
        pids = {p.name: int(p.read_text()) for p in markers.glob("hangs*.pid")}
        time.sleep(0.2)
    killed = time.monotonic()
    os.kill(pids["hangs1.pid"], signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr[-2000:]
    records = _records(out)
    assert records["hangs"]["status"] == "failed" and records["bitfit"]["status"] == "ok", records["hangs"].get("error")
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids.values())  # the other rank too
    assert time.monotonic() - killed < 120  # ended by the launcher, not by a 30-minute watchdog


def test_pure_bf16_and_8_bit_adamw_planned_and_measured_alike(tmp_path):
    """--optimizer adamw8bit keeps about 2 bytes of state per trainable parameter (two uint8
    states, a float32 maximum per block of 256, 32-bit state for parameters under 4,096 values);
    --trainable-dtype bfloat16 halves the weights and gradients of full fine-tuning. Planned and
    measured agree to the byte."""
    out = tmp_path / "o"
    proc = leitai("run", "--methods", "full", "--optimizer", "adamw,adamw8bit", "--trainable-dtype", "float32,bfloat16",
                  *RUN, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {p.parent.name.split("__", 2)[2]: json.loads(p.read_text()) for p in out.glob("runs/*/record.json")}
    assert set(runs) == {"s0", "adamw8bit__s0", "bf16-trainables__s0", "bf16-trainables__adamw8bit__s0"}
    for record in runs.values():
        assert record["status"] == "ok" and {k: record["plan"][k] for k in COMPONENTS} == \
            {k: record["metrics"][k] for k in COMPONENTS}
    m, eight, bf16 = (runs[k]["metrics"] for k in ("s0", "adamw8bit__s0", "bf16-trainables__s0"))
    assert 2.0 <= eight["optimizer_bytes"] / m["trainable_params"] <= 2.1
    assert bf16["weights_bytes"] * 2 == m["weights_bytes"] and bf16["grads_bytes"] * 2 == m["grads_bytes"]
    assert bf16["trainable_dtype"] == "bfloat16" and m["trainable_dtype"] == "float32"
    table = pd.read_csv(out / "results.csv")
    assert set(table.method) == {"full", "full + adamw8bit", "full @ bf16 trainables", "full @ bf16 trainables + adamw8bit"}


@pytest.mark.parametrize("options, given, message", [
    ({"devices": "0,1,2,3"}, set(), None),  # four workers, derived
    ({"devices": "0,1,2,3", "workers": 8}, {"workers"}, "--workers 8 needs 8 devices, --devices gives 4"),
    ({"devices": "0,1", "workers": 1}, {"workers"}, None),
    ({"workers": 4}, {"workers"}, "--workers 4 without --devices would put every cell on the first GPU"),
])
def test_placement_on_gpus(options, given, message, monkeypatch):
    import argparse

    from plugins.executors.local_executor import LocalExecutor
    from suite.errors import UsageError
    from suite.shootout.executors import ExecutorSettings

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # a machine that shows four GPUs
    settings = ExecutorSettings(options=argparse.Namespace(**{"workers": 1, "devices": "", **options}),
                                given=frozenset(given), cold_start=True)
    if message:
        with pytest.raises(UsageError, match=message):
            LocalExecutor(settings)
    else:
        executor = LocalExecutor(settings)
        assert executor.workers == (4 if not given else options["workers"])
        assert [s["CUDA_VISIBLE_DEVICES"] for s in executor.slots] == options["devices"].split(",")[: executor.workers]


def test_sharding_needs_processes_in_one_line(tmp_path):
    proc = leitai("run", "--methods", "lora", "--shard", "fsdp", "--out", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.strip() == ("leitai: error: --shard fsdp shards a cell over its processes: "
                                                            "give --gpus-per-cell 2 or more")
