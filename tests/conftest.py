import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LEITAI_PROGRESS", "0")
# tokenised task data is cached per test session, not in the user's cache
os.environ["LEITAI_CACHE_DIR"] = tempfile.mkdtemp(prefix="leitai-test-cache-")
atexit.register(shutil.rmtree, os.environ["LEITAI_CACHE_DIR"], ignore_errors=True)


def _own_cores() -> None:
    """Under ``pytest -n N`` (pytest-xdist, pyproject.toml's addopts), give each worker its own
    share of the cores (CPU affinity, which its subprocesses inherit and leitai's executors read
    as the machine's cores), so that two workers' torch thread pools never wait on each other's
    cores: on a busy core a small op's threads wait for one another for milliseconds each."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cores, index, count = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw")), int(count)
    share = cores[index::count] or [cores[index % len(cores)]]
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(len(share))  # before torch is imported


_own_cores()

#: the modules by their time under ``pytest -n auto`` (``--durations=0``, summed per module),
#: longest first: a worker takes a whole module at a time (``--dist loadfile``, in this order:
#: ``--no-loadscope-reorder`` in pyproject.toml), so a long one left for last would keep one
#: worker busy while the others idle
SLOWEST_FIRST = ("test_sharding.py", "test_checkpoint.py", "test_warm.py", "test_ray_executor.py", "test_runner.py",
                 "test_faults.py", "test_export.py", "test_forgetting_inference.py", "test_processes.py",
                 "test_executors.py", "test_sweep.py", "test_user_files.py", "test_replay.py", "test_retention.py",
                 "test_architecture.py", "test_tasks.py", "test_train.py", "test_kit.py", "test_tiny_zh.py",
                 "test_prediction.py", "test_quantize.py")


def pytest_collection_modifyitems(items):
    """Put :data:`SLOWEST_FIRST`'s modules first, in that order; the rest keep theirs."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


#: a shootout of the cells alone: no baseline cell, no forgetting, no inference timing (each costs
#: a process or seconds per cell; tests/config/test_sweep.py and test_forgetting_inference.py check them)
CELLS_ONLY = ["--no-baselines", "--side-corpus", "none", "--infer-prompts", "0"]

#: the environment that loads tests/misbehaving.py as a plugin in a subprocess
MISBEHAVING = {"LEITAI_PLUGINS": "misbehaving", "PYTHONPATH": str(ROOT / "tests")}


def plugin_env(directory: Path, module: str, source: str, *path: Path) -> dict:
    """Write plugin ``module`` (its ``source``) to ``directory`` and return the environment
    under which a ``leitai`` subprocess loads it (``path``: more directories for its imports)."""
    (Path(directory) / f"{module}.py").write_text(source, encoding="utf-8")
    return {"LEITAI_PLUGINS": module, "PYTHONPATH": os.pathsep.join(map(str, (directory, *path)))}


def leitai(*args, env=None, cwd=None, timeout=600):
    """Run the ``leitai`` command line in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "suite.cli", *map(str, args)], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout,
    )


def foreign_lines(stderr: str, runs: list[str]) -> list[str]:
    """The lines of a shootout's ``stderr`` that are not leitai's: its own start with ``leitai: ``,
    the shootout's bar or a cell's bar (of which at least one must have come through: run it
    with ``LEITAI_PROGRESS=1``)."""
    cells = tuple(f"{run}: " for run in runs)
    lines = [line for line in re.split(r"[\r\n]", stderr) if line.strip()]
    assert any(line.startswith(cells) for line in lines)  # a cell's own bar came through
    return [line for line in lines if not line.startswith(("leitai: ", "shootout: ", *cells))]


def start(*args, env: dict) -> subprocess.Popen:
    """``leitai ARGS`` in the background, in a process group of its own (as a shell runs it),
    with Ctrl-C handled as in a terminal (:func:`catch_ctrl_c`)."""
    return subprocess.Popen([sys.executable, "-m", "suite.cli", *map(str, args)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=catch_ctrl_c)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each cell is a process of its own, so accelerate's process-wide state (its mixed
    precision above all) is set once per process. Tests that build an ``Accelerator`` in this
    process must not hand theirs to the next test: bfloat16 autocast left behind by one
    changes another's losses, and a cell run in-process refuses a different precision."""
    yield
    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state(reset_partial_state=True)


def built_in_methods() -> list[str]:
    """Every method the leitai distribution itself registers."""
    from suite.plugins import load_registry

    reg = load_registry()
    return sorted(n for n in reg.methods if reg.plugins[reg.origin[("methods", n)]].source.startswith("leitai "))


@pytest.fixture(scope="session")
def registry():
    from suite.plugins import load_registry

    return load_registry()


def catch_ctrl_c() -> None:
    """In the child before exec: SIGINT handled by default, as in a terminal. A shell runs a
    background job (``cmd &``, as some CI runners do) with SIGINT ignored, which its children
    inherit, and Python then installs no KeyboardInterrupt for it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
