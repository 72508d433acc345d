"""The ``local`` executor: cells on this machine, ``--workers`` at a time, each in its own process.

With ``--devices 0,1,...`` every cell gets GPUs of its own (``CUDA_VISIBLE_DEVICES`` is set
for the child before CUDA initialises); on CPU the cores are divided among the workers
(each child's torch thread count), so parallel cells do not fight over cores.

Each cell is forked from a warm-start server that has imported torch and the core once
(:mod:`suite.shootout.warm`; ``--cold-start`` starts every cell fresh instead); a distributed cell
(``--gpus-per-cell`` > 1) starts cold under torchrun. Ctrl-C and SIGTERM stop every running
cell (:data:`suite.shootout.processes.RUNNING`) and keep the finished ones.
"""
from __future__ import annotations

import queue
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from suite import Executor, UsageError, hookimpl
from suite.cell.records import run_dir
from suite.shootout.processes import RUNNING, cpu_count, gpu_count, run_cell_process, thread_env


class LocalExecutor(Executor):
    name = "local"
    default = True
    description = "this machine, --workers cells at a time (GPUs from --devices, else CPU cores shared out)"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--workers", type=int, default=1, help="cells at once (default: 1)")
        parser.add_argument("--devices", default="", metavar="IDS",
                            help="GPU ids to share out among the workers, e.g. 0,1,2,3")

    def __init__(self, settings):
        super().__init__(settings)
        s, o = settings, settings.options
        if isinstance(o.workers, bool) or not isinstance(o.workers, int) or o.workers < 1:
            raise UsageError(f"--workers must be a positive whole number, not {o.workers!r}")
        self.devices = [d.strip() for d in str(o.devices).split(",") if d.strip()]
        per_cell = max(1, s.gpus_per_cell)
        # placement: as many workers as the devices hold cells, unless --workers says otherwise
        self.workers = o.workers if "workers" in s.given or not self.devices else max(1, len(self.devices) // per_cell)
        if self.devices:
            if s.device == "cpu":
                raise UsageError(f"--devices {o.devices} names GPUs, but --device cpu trains on the CPU")
            if len(self.devices) < per_cell:
                raise UsageError(f"--gpus-per-cell {per_cell} needs at least that many --devices")
            if self.workers > len(self.devices) // per_cell:
                raise UsageError(f"--workers {self.workers} needs {self.workers * per_cell} devices, "
                                 f"--devices gives {len(self.devices)}")
        elif self.workers > 1 and s.device != "cpu" and gpu_count():
            raise UsageError(f"--workers {self.workers} without --devices would put every cell on the first GPU: "
                             f"name the GPUs to share out (--devices 0,1,...), or train on the CPU (--device cpu)")
        self.slots = [self._slot_env(i) for i in range(self.workers)]
        self.warm = None
        if not s.cold_start and per_cell == 1:
            from suite.shootout.warm import WarmServer

            self.warm = WarmServer()

    def _slot_env(self, i: int) -> dict:
        s = self.settings
        env = {} if s.progress and self.workers == 1 else {"LEITAI_PROGRESS": "0"}
        if self.devices:
            per_cell = max(1, s.gpus_per_cell)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.devices[i * per_cell : (i + 1) * per_cell])
        else:
            env.update(thread_env(s.cpus_per_cell or cpu_count() // self.workers // max(1, s.gpus_per_cell)))
        return env

    def prepare(self):
        if self.warm is not None:
            self.warm.start()  # forked from the driver, whose imports it shares (suite.shootout.warm)

    def map(self, cells, out_dir: Path):
        free: queue.Queue = queue.Queue()
        for env in self.slots:
            free.put(env)
        RUNNING.resume()
        if self.warm is not None and cells:
            self.warm.start()  # it imports while the cells are queued

        def run(cell):
            env = free.get()
            try:
                return run_cell_process(cell, run_dir(out_dir, cell.run_id), env, self.settings.gpus_per_cell,
                                        self.warm)
            finally:
                free.put(env)

        pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="leitai-cell")
        pending = {pool.submit(run, cell): cell for cell in cells}
        finished = False
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    cell = pending.pop(fut)
                    yield cell, fut.result()
            finished = True
        finally:  # also on Ctrl-C or SIGTERM: nothing new starts, what runs is stopped
            for fut in pending:
                fut.cancel()
            if not finished:
                RUNNING.stop()
                if self.warm is not None:  # and no cell waiting for it starts one
                    self.warm.close()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self):
        if self.warm is not None:
            self.warm.close()


@hookimpl
def register_executors(register):
    register(LocalExecutor)
