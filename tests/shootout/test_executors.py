"""Executors: the local pool with workers, and a cell spread over two processes (Ray's
executor: tests/plugins/test_ray_executor.py)."""
import json

import pandas as pd
from conftest import CELLS_ONLY, leitai

from suite.shootout.processes import cpu_count

# these shootouts are about where cells run, not what a cell measures
SMALL = ["--max-steps", "3", "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "-q"]


def losses(out):
    r = pd.read_csv(out / "results.csv").set_index("run_id")
    return r[["status", "first_train_loss", "final_train_loss", "eval_loss"]]


def test_local_workers_give_the_same_results(tmp_path):
    one = leitai("run", "--methods", "lora", "--seeds", "2", "--workers", "1", "--out", tmp_path / "w1", *SMALL)
    two = leitai("run", "--methods", "lora", "--seeds", "2", "--workers", "2", "--out", tmp_path / "w2", *SMALL)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    a, b = losses(tmp_path / "w1"), losses(tmp_path / "w2")
    assert (a.status == "ok").all() and a.index.equals(b.index)
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)
    threads = [json.loads(p.read_text())["env"]["torch_threads"] for p in (tmp_path / "w2").glob("runs/*/record.json")]
    assert threads == [max(1, cpu_count() // 2)] * 2  # the cores were shared out


def test_cell_over_two_processes(tmp_path):
    proc = leitai("run", "--methods", "lora", "--gpus-per-cell", "2", "--out", tmp_path / "ddp", *SMALL)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(next((tmp_path / "ddp").glob("runs/*/record.json")).read_text())
    assert record["status"] == "ok", record.get("traceback")
    assert record["metrics"]["processes"] == 2 and len(record["metrics"]["peak_memory_per_device"]) == 2


def test_bad_executor_settings_are_one_line(tmp_path):
    for args, message in [(["--executor", "slurm"], "unknown executor 'slurm'"),
                          (["--workers", "3", "--devices", "0,1"], "--workers 3 needs 3 devices"),
                          (["--workers", "0"], "workers must be a positive whole number")]:
        proc = leitai("run", "--out", tmp_path / "x", *args, *SMALL)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
