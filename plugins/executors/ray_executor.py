"""The ``ray`` executor (the ``ray`` extra: ``pip install -e '.[ray]'``): every cell a Ray task.

``--executor ray`` joins the cluster at ``--ray-address`` (or starts a local one). Each cell
asks for ``--gpus-per-cell`` GPUs when the cluster has GPUs, else ``--cpus-per-cell`` CPUs
(default 1), and runs in a fresh process on the worker, in a scratch directory. The record and
the run's files come back to the driver, which alone writes the shootout directory (record
last, atomically). A worker that dies mid-cell is retried ``--max-retries`` times; a cell
whose worker keeps dying is recorded ``failed`` with the reason. Ctrl-C and SIGTERM cancel
what is still queued or running; finished runs stay.

Cells start cold here: each Ray task starts ``python -m suite.cell`` in a process of its own.
Ray reuses its worker processes, but a worker has imported Ray and runs its gRPC threads, so
forking cells from it is not safe, and running the cell in the worker itself would let one
cell's peak memory and crash reach the next (docs/warm-start.md).
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from suite import Executor, UsageError, hookimpl
from suite.atomic import write_json_atomic
from suite.cell.records import failed_record, run_dir
from suite.cell.spec import Cell
from suite.shootout.processes import run_cell_process, thread_env
from suite.stopping import reinstall

FORWARDED = ("LEITAI_PLUGINS", "PYTHONPATH", "HF_HUB_OFFLINE", "HF_HOME")


def _run_remote(cell_json: str, processes: int, threads: int):
    """Runs on a Ray worker: the cell in a process of its own; returns its record and files."""
    cell = Cell.from_json(cell_json)
    with tempfile.TemporaryDirectory(prefix="leitai-ray-") as tmp:
        directory = run_dir(tmp, cell.run_id)
        env = {"LEITAI_PROGRESS": "0", **(thread_env(threads) if threads else {})}
        record = run_cell_process(cell, directory, env, processes)
        files = {
            str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "record.json"
        }
    return record, files


def write_run(out_dir: Path, run_id: str, record: dict, files: dict[str, bytes]) -> None:
    """The driver's side: the run's files into ``out_dir/runs/<run_id>``, the record last."""
    target_dir = run_dir(out_dir, run_id)
    staging = target_dir.with_name(f".{run_id}.incoming")
    shutil.rmtree(staging, ignore_errors=True)
    for rel, data in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    target_dir.mkdir(parents=True, exist_ok=True)
    if staging.exists():
        for entry in staging.iterdir():
            target = target_dir / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            entry.replace(target)
        shutil.rmtree(staging)
    write_json_atomic(target_dir / "record.json", record)


class RayExecutor(Executor):
    name = "ray"
    description = "a Ray cluster (--ray-address, or a local one): one Ray task per cell, retried if its worker dies"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--ray-address", default="", metavar="HOST:PORT",
                            help="an existing Ray cluster (default: start a local one)")
        parser.add_argument("--max-retries", type=int, default=2, metavar="N",
                            help="re-runs of a cell whose worker died (default: 2)")

    def __init__(self, settings):
        super().__init__(settings)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install -e '.[ray]' in leitai's clone") from None

    def map(self, cells, out_dir: Path):
        import ray

        s, o = self.settings, self.settings.options
        started = not ray.is_initialized()
        if started:
            env = {k: os.environ[k] for k in FORWARDED if k in os.environ}
            ours = signal.getsignal(signal.SIGTERM)
            ray.init(address=o.ray_address or None, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env} if env else None)
            reinstall(ours)  # SIGTERM stops like Ctrl-C (ray.init puts in a handler that exits silently)
        use_gpus = ray.cluster_resources().get("GPU", 0) > 0
        cpus = s.cpus_per_cell or 1
        resources = {"num_gpus": s.gpus_per_cell, "num_cpus": 1} if use_gpus else {"num_cpus": cpus * s.gpus_per_cell}
        task = ray.remote(max_retries=o.max_retries, retry_exceptions=False)(_run_remote).options(**resources)
        pending = {task.remote(cell.to_json(), s.gpus_per_cell, 0 if use_gpus else cpus): cell for cell in cells}
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ref)
                try:
                    record, files = ray.get(ref)
                except ray.exceptions.RayError as e:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    record, files = failed_record(
                        cell, f"ray: {type(e).__name__} after {o.max_retries} retries: {reason}", str(e)), {}
                write_run(out_dir, cell.run_id, record, files)
                yield cell, record
        finally:  # Ctrl-C or an error: cancel what has not finished
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


@hookimpl
def register_executors(register):
    register(RayExecutor)
