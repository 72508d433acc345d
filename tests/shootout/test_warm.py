"""Warm starts (suite.shootout.warm): a cell forked from the server gives what a cold cell gives, the
server never initialises CUDA, and a cell killed with -9, or a server that dies, does not stop
the cells after it."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import CELLS_ONLY, MISBEHAVING, leitai

from suite.shootout.processes import run_cell_process, thread_env
from suite.shootout.warm import WarmServer

SMALL = ["--max-steps", "4", "--batch-size", "4", "--task-size", "16", *CELLS_ONLY, "-q"]
COMPARED = ["first_train_loss", "final_train_loss", "eval_loss", "score", "trainable_params"]


def test_warm_and_cold_cells_agree(tmp_path):
    """The same spec warm and cold: identical losses and scores, and the same peak memory
    within the noise of the RSS measure (lora at 4 steps measured 78 and 98 MB warm, 78 and 79 MB
    cold: the allocator reuses memory freed before training, more or less of it run to run)."""
    runs = {}
    for way, extra in (("warm", []), ("cold", ["--cold-start"])):
        out = tmp_path / way
        proc = leitai("run", "--methods", "lora", "--out", out, *SMALL, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        record = json.loads(next(out.glob("runs/*/record.json")).read_text())
        assert record["status"] == "ok" and record["env"]["cell_start"] == way, record.get("traceback")
        runs[way] = pd.read_csv(out / "results.csv").set_index("run_id")
    warm, cold = runs["warm"], runs["cold"]
    pd.testing.assert_frame_equal(warm[COMPARED], cold[COMPARED])
    peak_warm, peak_cold = warm.peak_memory_bytes.iloc[0], cold.peak_memory_bytes.iloc[0]
    # run-to-run noise of one cell's peak RSS is up to ~35 MB here (the same LoRA cell: 291, 309, 324 MB in
    # three runs); counting the server's shared pages would add hundreds of MB
    assert abs(peak_warm - peak_cold) <= max(48 << 20, 0.25 * peak_cold), (peak_warm, peak_cold)


@pytest.fixture
def hanging_cell(tmp_path, monkeypatch):
    """The ``hangs`` method's cell (tests/misbehaving.py), its pid file, and the ``lora`` cell."""
    from suite.config.sources import build_config
    from suite.plugins import load_registry
    from suite.shootout.runner import final_cells, resolve

    markers = tmp_path / "markers"
    markers.mkdir()
    for key, value in {**MISBEHAVING, "UNRULY_DIR": str(markers)}.items():
        monkeypatch.setenv(key, value)
    reg = load_registry()
    config = build_config({"methods": "hangs,lora", "max_steps": 2, "batch_size": 4, "task_size": "16",
                           "baselines": False, "side_corpus": "none", "infer_prompts": 0,
                           "out": str(tmp_path / "out")}).fill_defaults(reg)
    cells = {c.method: c for c in final_cells(config, resolve(config, reg))}
    return cells, markers / "hangs.pid"


def _in_thread(fn, *args):
    result = {}
    thread = threading.Thread(target=lambda: result.update(record=fn(*args)), daemon=True)
    thread.start()
    return thread, result


def _wait_for(path: Path, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    pid = int(path.read_text())
    path.unlink()
    return pid


def test_server_is_clean_and_outlives_its_cells(hanging_cell, tmp_path):
    cells, pid_file = hanging_cell
    env = {"LEITAI_PROGRESS": "0", **thread_env(1)}
    server = WarmServer(fork=False)  # a fresh process (this one, a pytest-xdist worker, has threads)
    server.start()
    try:
        state = server.query()  # asked in the server process itself
        assert state["cuda_initialized"] is False and not state["plugins_registered"]
        assert state["python_threads"] == 1  # no thread of its own to fork under
        assert state["forked"] is False

        # kill -9 of a warm cell: that cell's failed record with its reason; the server lives on
        thread, result = _in_thread(run_cell_process, cells["hangs"], tmp_path / "a", env, 1, server)
        cell_pid = _wait_for(pid_file)
        os.kill(cell_pid, signal.SIGKILL)
        thread.join(timeout=120)
        record = result["record"]
        assert record["status"] == "failed"
        assert record["error"].startswith("cell process killed by SIGKILL (kill -9")
        assert server.query()["pid"] == state["pid"]

        # the server killed under a running cell: the cell runs again on a new server
        thread, result = _in_thread(run_cell_process, cells["hangs"], tmp_path / "b", env, 1, server)
        first = _wait_for(pid_file)
        os.kill(state["pid"], signal.SIGKILL)
        second = _wait_for(pid_file)  # the same cell again, forked from a new server
        assert second != first and server.starts == 2
        os.kill(second, signal.SIGKILL)
        thread.join(timeout=120)
        assert result["record"]["status"] == "failed"

        # and the next cell runs, warm, and is none the worse
        record = run_cell_process(cells["lora"], tmp_path / "c", env, 1, server)
        assert record["status"] == "ok", record.get("traceback")
        assert record["env"]["cell_start"] == "warm" and record["env"]["torch_threads"] == 1
        assert server.query()["cuda_initialized"] is False
    finally:
        server.close()


def test_a_driver_without_threads_forks_its_server():
    """A driver with no thread but its main one (``leitai run`` once it has checked the settings,
    and so imported torch) forks the server from itself instead of starting one that imports
    everything again; the forked server is as clean as a fresh one."""
    script = (
        "import json, os, torch\n"
        "from suite.plugins import registry\n"
        "from suite.shootout.warm import WarmServer\n"
        "registry()\n"  # the driver has registered its plugins; the server must not keep them
        "server = WarmServer()\n"
        "server.start()\n"
        "print(json.dumps({**server.query(), 'driver': os.getpid()}))\n"
        "server.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads(proc.stdout.splitlines()[-1])
    assert state["forked"] is True and state["pid"] != state["driver"]
    assert state["cuda_initialized"] is False and state["python_threads"] == 1 and not state["plugins_registered"]


def test_every_method_warm_at_two_threads(tmp_path):
    """``leitai run --methods all`` as a user on two cores runs it: warm cells at two threads
    each, and a driver whose torch has two threads. peft builds BOFT's and FourierFT's buffers
    on the CPU while the driver checks their settings; had that started a thread pool in the
    driver, every cell forked after it would hang in its first parallel operation (issue 36)."""
    out = tmp_path / "all"
    env = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}  # the driver's own torch, not a test worker's one thread
    proc = leitai("run", "--methods", "all", "--cpus-per-cell", "2", "--max-steps", "1", "--batch-size", "4",
                  "--task-size", "16", *CELLS_ONLY, "-q", "--out", out, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warm starts off" not in proc.stderr and "not safe" not in proc.stderr, proc.stderr
    records = [json.loads(p.read_text()) for p in out.glob("runs/*/record.json")]
    from suite.plugins import registry

    assert sorted(r["method"] for r in records) == sorted(registry().methods)
    for r in records:
        assert r["status"] == "ok", (r["method"], r.get("error"))
        assert r["env"]["cell_start"] == "warm" and r["env"]["torch_threads"] == 2, (r["method"], r["env"])


def test_a_server_forked_after_a_thread_pool_is_replaced(tmp_path):
    """A driver that ran a parallel torch operation before forking its server (a plugin that
    computes at import, say): the server's fork probe finds that a cell forked from it would
    hang, a fresh server replaces it with one line saying why, and the cell runs warm."""
    script = (
        "import json, torch\n"
        "torch.set_num_threads(2); torch.ones(1 << 20).mul_(2).sum()\n"  # the driver's pool is started
        "from suite.shootout.warm import WarmServer\n"
        "server = WarmServer()\n"
        "server.start()\n"
        "first = server.query()\n"
        "job = server.spawn('-', {}, __import__('os').open('/dev/null', 1))\n"  # a bad spec: it exits 1, warm
        "print(json.dumps({'first': first, 'code': job.wait(), 'then': server.query()}))\n"
        "server.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.splitlines()[-1])
    assert found["first"]["forked"] is True
    assert "hung in its first parallel torch operation" in proc.stderr and "starting a fresh one" in proc.stderr
    assert found["code"] == 1 and found["then"]["forked"] is False


def test_the_watchdog_ends_a_cell_without_progress(tmp_path):
    """A cell that stops making progress (the ``hangs`` method blocks in ``apply``) is ended
    after ``--stall-timeout`` and recorded timeout with why and where it stopped; the next cell runs."""
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out"
    began = time.monotonic()
    proc = leitai("run", "--methods", "hangs,bitfit", *SMALL, "--stall-timeout", "15s", "--out", out,
                  env={**MISBEHAVING, "UNRULY_DIR": str(markers)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - began < 200  # not the 600 s the method sleeps
    results = pd.read_csv(out / "results.csv").set_index("method")
    assert results.loc["bitfit", "status"] == "ok"
    assert results.loc["hangs", "status"] == "timeout"
    error = results.loc["hangs", "error"]
    assert "--stall-timeout: ended by the watchdog (last: applying the method)" in error, error
    record = json.loads((out / "runs" / "zh-sentiment__hangs__s0" / "record.json").read_text())
    assert record["progress"]["phase"] == "applying the method"
    pid = int((markers / "hangs.pid").read_text())
    assert not Path(f"/proc/{pid}").exists()  # no process left behind


#: a plugin package whose modules a cell edits: ``ed-first`` rewrites ``helpers`` and ``lazy`` (to
#: VERSION 2, reached through a name version 1 does not have) after it has read version 1;
#: ``lazy`` is imported by each cell, after the fork
EDITED = {
    "__init__.py": (
        "import os\n"
        "from pathlib import Path\n"
        "from plugins.methods.bitfit import BitFit\n"
        "from suite import hookimpl\n"
        "from .helpers import VERSION  # noqa: F401  (the server holds this module)\n"
        "\n"
        "class Edited(BitFit):\n"
        "    def __init__(self, name):\n"
        "        self.name = name\n"
        "\n"
        "    def apply(self, model, params):\n"
        "        if not any(p.is_meta for p in model.parameters()):\n"
        "            from .lazy import version\n"
        "            Path(os.environ['EDIT_DIR'], self.name).write_text(version())\n"
        "            if self.name == 'ed-first':\n"
        "                here = Path(__file__).parent\n"
        "                (here / 'helpers.py').write_text(\"VERSION = '1'\\nRENAMED = '2'\\n\")\n"
        "                (here / 'lazy.py').write_text('from .helpers import RENAMED\\n\\n\\ndef version():\\n    return RENAMED\\n')\n"
        "        return super().apply(model, params)\n"
        "\n"
        "@hookimpl\n"
        "def register_methods(register):\n"
        "    register(Edited('ed-first'))\n"
        "    register(Edited('ed-second'))\n"
    ),
    "helpers.py": "VERSION = '1'\n",
    "lazy.py": "from .helpers import VERSION\n\n\ndef version():\n    return VERSION\n",
}


def test_a_shootout_outlives_an_edit_of_a_plugin(tmp_path):
    """The first cell of a warm shootout edits its plugin's modules; the server the second cell
    would be forked from still holds the old ones (forked from the driver, which loaded the
    plugin). It forks nothing: the driver says why in one line and starts a fresh server, and the
    second cell runs the new code. Without that, the second cell would run the old ``apply`` with
    the new ``lazy`` and fail with ``ImportError: cannot import name 'RENAMED'``."""
    package = tmp_path / "src" / "edplug"
    package.mkdir(parents=True)
    for name, text in EDITED.items():
        (package / name).write_text(text, encoding="utf-8")
    versions = tmp_path / "versions"
    versions.mkdir()
    out = tmp_path / "out"
    proc = leitai("run", "--methods", "ed-first,ed-second", *SMALL, "--out", out,
                  env={"LEITAI_PLUGINS": "edplug", "PYTHONPATH": str(tmp_path / "src"), "EDIT_DIR": str(versions)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = pd.read_csv(out / "results.csv").set_index("method")
    assert list(results.status) == ["ok", "ok"], results.error.tolist()
    assert (versions / "ed-first").read_text() == "1" and (versions / "ed-second").read_text() == "2"
    lines = proc.stderr.splitlines()
    # lazy.py changed too, but the server never imported it
    assert lines == [f"leitai: {package / 'helpers.py'} changed on disk since the warm-start server imported it; "
                     "the next cell starts from a fresh server"], proc.stderr
    record = json.loads((out / "runs" / "zh-sentiment__ed-second__s0" / "record.json").read_text())
    assert record["env"]["cell_start"] == "warm"
