"""The Ray executor: workers that die mid-cell, cells that keep failing, and an interrupted
shootout resumed (a module of its own: its shootouts start Ray clusters, the longest tests,
which a pytest-xdist worker should take first)."""
import os
import signal
import time

import pandas as pd
import pytest
from conftest import CELLS_ONLY, MISBEHAVING, leitai, start

ray = pytest.importorskip("ray", reason="the ray extra is not installed (CI installs it)")

# these shootouts are about where cells run, not what a cell measures
SMALL = ["--max-steps", "3", "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "-q"]


@pytest.fixture(scope="module")
def unruly(tmp_path_factory):
    """tests/misbehaving.py's cluster-like methods, counting their attempts in ``markers``."""
    markers = tmp_path_factory.mktemp("markers")
    return {**MISBEHAVING, "UNRULY_DIR": str(markers)}, markers


def test_ray_retries_a_dead_worker_and_records_failures_once(tmp_path, unruly):
    env, markers = unruly
    out = tmp_path / "ray"
    proc = leitai("run", "--executor", "ray", "--max-retries", "1", "--methods", "lora,dies-once,dies-always",
                  "--out", out, *SMALL, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = pd.read_csv(out / "results.csv").set_index("method")
    assert len(r) == 3 and len(list(out.glob("runs/*/record.json"))) == 3
    assert r.loc["lora", "status"] == "ok"
    assert r.loc["dies-once", "status"] == "ok"  # retried after its worker died ...
    assert (markers / "dies-once").read_text() == "xx"  # ... exactly once more
    assert r.loc["dies-always", "status"] == "failed"
    assert r.loc["dies-always", "error"].startswith("ray: ") and "after 1 retries" in r.loc["dies-always", "error"]
    assert (markers / "dies-always").read_text() == "xx"  # first try + 1 retry
    assert not list(out.glob("runs/.*"))  # no staging left behind


def test_interrupted_ray_shootout_resumes_without_redoing(tmp_path, unruly):
    env, markers = unruly
    out = tmp_path / "int"
    proc = start("run", "--executor", "ray", "--methods", "lora,hangs", "--out", out, *SMALL, env=env)
    deadline = time.time() + 300
    lora = out / "runs" / "zh-sentiment__lora__s0" / "record.json"
    while not (lora.exists() and (markers / "hangs").exists()) and time.time() < deadline:
        time.sleep(1)
    assert lora.exists(), "the fast cell never finished"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    _, err = proc.communicate(timeout=600)  # Ray shuts down slowly on a loaded machine
    assert proc.returncode == 130, err[-2000:]
    assert "finished runs are kept" in err
    assert not (out / "runs" / "zh-sentiment__hangs__s0" / "record.json").exists()
    stamp = lora.stat().st_mtime_ns
    again = leitai("run", "--executor", "ray", "--methods", "lora,hangs", "--out", out, "--resume", *SMALL,
                   env={**env, "UNRULY_NO_HANG": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 runs (1 ok), 1 already done" in again.stdout
    assert lora.stat().st_mtime_ns == stamp
    assert set(pd.read_csv(out / "results.csv").status) == {"ok"}
