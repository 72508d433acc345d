"""The ``local`` executor: cells on this machine, ``--workers`` at a time, each in its own process.

With ``--devices 0,1,...`` every cell gets GPUs of its own (``CUDA_VISIBLE_DEVICES`` is set
for the child before CUDA initialises); on CPU the cores are divided among the workers
(each child's torch thread count), so parallel cells do not fight over cores.
"""
from __future__ import annotations

import queue
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from suite import hookimpl
from suite.errors import UsageError
from suite.executors import Executor, cpu_count, run_cell_process, thread_env


class LocalExecutor(Executor):
    name = "local"
    description = "this machine, --workers cells at a time (GPUs from --devices, else CPU cores shared out)"

    def __init__(self, settings):
        super().__init__(settings)
        s = settings
        per_cell = max(1, s.gpus_per_cell)
        if s.devices:
            if len(s.devices) < per_cell:
                raise UsageError(f"--gpus-per-cell {per_cell} needs at least that many --devices")
            most = len(s.devices) // per_cell
            if s.workers > most:
                raise UsageError(f"--workers {s.workers} needs {s.workers * per_cell} devices, --devices gives {len(s.devices)}")
        self.slots = [self._slot_env(i) for i in range(max(1, s.workers))]

    def _slot_env(self, i: int) -> dict:
        s = self.settings
        env = {} if s.progress and s.workers == 1 else {"LEITAI_PROGRESS": "0"}
        if s.devices:
            per_cell = max(1, s.gpus_per_cell)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(s.devices[i * per_cell : (i + 1) * per_cell])
        else:
            env.update(thread_env(s.cpus_per_cell or cpu_count() // max(1, s.workers) // max(1, s.gpus_per_cell)))
        return env

    def map(self, cells, out_dir: Path):
        free: queue.Queue = queue.Queue()
        for env in self.slots:
            free.put(env)

        def run(cell):
            env = free.get()
            try:
                return run_cell_process(cell, Path(out_dir) / "runs" / cell.run_id, env, self.settings.gpus_per_cell)
            finally:
                free.put(env)

        pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="leitai-cell")
        pending = {pool.submit(run, cell): cell for cell in cells}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    cell = pending.pop(fut)
                    yield cell, fut.result()
        finally:  # also on Ctrl-C: nothing new starts; running children got the signal too
            pool.shutdown(wait=True, cancel_futures=True)


@hookimpl
def register_executors(register):
    register(LocalExecutor)
