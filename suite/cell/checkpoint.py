"""Checkpoints inside a cell (``--checkpoint-every``): what a run needs to go on after its process
died, so that ``--resume`` continues it from there rather than from its first step.

A checkpoint is a directory ``checkpoint-<step>`` in the run's directory, written as
``checkpoint-<step>.tmp`` and renamed once complete (a process killed while writing leaves no
half checkpoint); the one before it is then removed. It holds:

- ``trainable.pt`` and ``optimizer.pt`` (one process, or data parallel: every process holds the
  same), or ``state/`` (a sharded cell: torch's distributed checkpoint, each process writing its
  own shards of the trainable parameters and of the optimiser's state);
- ``loop.pt``: the step, the schedule's state, the losses and training seconds so far;
- ``rank-<N>.pt``: each process's random states, its count of tokens, the dev curve so far
  (with ``--keep best``, the best point's parameters: in a sharded cell, the process's shards),
  the model's buffers (LST's ladder statistics, set at its first training step) and the method's
  own state (:meth:`suite.Method.training_state`: AdaLoRA's importance scores and rank pattern);
- ``cell.json``: the cell it was written for. A checkpoint of another cell's settings (another
  ``--max-steps``, learning rate, world size...) is not used: the cell starts over and says why.

The data position is the step: every batch of a run is drawn before its first step, from its
seed. So a resumed run is the uninterrupted one, exactly on the CPU (the tests compare every
step's loss and the final parameters).

A cell that finishes (:data:`FINISHED`) removes its checkpoints before writing its record. One
that does not (killed, past its ``--cell-timeout``, a lost machine or rank, an error) keeps them,
and ``--resume`` runs it again from the last one (:func:`last_step`).
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..config.settings import FAIR_SETTINGS, parse_checkpoint_every
from ..progress import beat
from .spec import Cell

PREFIX = "checkpoint-"
#: the statuses of a cell that ran to its end: its checkpoints are of no more use
FINISHED = ("ok", "diverged")
#: what must agree for a checkpoint to continue a cell: the cell itself, what it trains on and how
#: (the fair settings), and what shapes its training beyond them
SAME = ("method", "task", "seed", "params", "phase", "tuning", "shard", "eval_every") + FAIR_SETTINGS


def latest(run_dir: Path) -> Path | None:
    """The run's newest complete checkpoint, or None."""
    done = [p for p in Path(run_dir).glob(PREFIX + "*") if p.is_dir() and p.name[len(PREFIX):].isdigit()]
    return max(done, key=step_of, default=None)


def step_of(path: Path) -> int:
    """The step a complete checkpoint was written after."""
    return int(path.name[len(PREFIX):])


def last_step(run_dir: Path) -> int | None:
    """The step of the run's newest checkpoint; None: it has none (it finished, or never wrote one)."""
    path = latest(run_dir)
    return None if path is None else step_of(path)


def differences(path: Path, cell: Cell, world: int | None = None) -> list[str]:
    """The settings of ``cell`` (and its number of processes, ``world``) that checkpoint ``path``
    was not written with: it cannot continue that cell."""
    written = json.loads((Path(path) / "cell.json").read_text(encoding="utf-8"))
    return [k for k, v in _identity(cell, world).items() if written.get(k) != v]


def remove_all(run_dir: Path) -> None:
    """Every checkpoint of the run, complete or not (the cell ended on its own)."""
    for path in Path(run_dir).glob(PREFIX + "*"):
        shutil.rmtree(path, ignore_errors=True)


class Checkpoints:
    """One cell's checkpoints: when they are due, writing them, and reading the last one back.

    ``dev``: the run's :class:`suite.cell.train.DevCurve`; ``method``: the method whose own state
    (:meth:`suite.Method.training_state`) goes into each checkpoint."""

    def __init__(self, cell: Cell, run_dir: Path, accelerator, method, dev):
        self.cell, self.run_dir, self.accelerator, self.method, self.dev = cell, Path(run_dir), accelerator, method, dev
        self.steps, self.seconds = parse_checkpoint_every(cell.checkpoint_every)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.last_written = time.perf_counter()
        self.writing = 0.0  # seconds spent writing, kept out of the training seconds
        self.resumed_from: int | None = None

    # -- when ---------------------------------------------------------------------------
    def due(self, step: int, steps: int, read_back: bool) -> bool:
        """After ``step`` steps of ``steps``: is a checkpoint due? Every N steps, or, by time, at a
        step whose losses were just read back (the processes of a cell then agree on the time:
        the first one's clock decides). Never after the last step."""
        if step >= steps:
            return False
        if self.steps:
            return step % self.steps == 0
        if not self.seconds or not read_back:
            return False
        import torch

        due = torch.tensor([float(time.perf_counter() - self.last_written >= self.seconds)],
                           device=self.accelerator.device)  # NCCL broadcasts from the GPU
        if self.world > 1:
            torch.distributed.broadcast(due, 0)
        return bool(due.item())

    # -- writing --------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, schedule, result) -> None:
        """Write the checkpoint after ``step`` steps (every process of the cell calls this)."""
        import torch

        began = time.perf_counter()
        beat("writing a checkpoint", step)
        tmp = self.run_dir / f"{PREFIX}{step}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        unwrapped = self.accelerator.unwrap_model(model)
        if _sharded(unwrapped):
            import torch.distributed.checkpoint as dcp

            dcp.save(_sharded_state(unwrapped, optimizer), checkpoint_id=str(tmp / "state"))
        elif self.rank == 0:  # every process holds the same
            torch.save({n: p.detach().cpu() for n, p in unwrapped.named_parameters() if p.requires_grad},
                       tmp / "trainable.pt")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"rng": _rng_state(), "buffers": {n: b.detach().cpu() for n, b in unwrapped.named_buffers()},
                    "method": self.method.training_state(unwrapped), "tokens": result.tokens,  # this process's
                    "dev": self.dev.state()}, tmp / f"rank-{self.rank}.pt")  # a sharded best point: its shards
        if self.rank == 0:
            torch.save({"step": step, "schedule": schedule.state_dict(), "losses": result.losses,
                        "replay_losses": result.replay_losses,
                        "seconds": result.seconds, "answer_head": result.answer_head,
                        "writing": self.writing}, tmp / "loop.pt")
            (tmp / "cell.json").write_text(json.dumps(_identity(self.cell, self.world), ensure_ascii=False))
        self._barrier()
        if self.rank == 0:  # complete: it replaces the one before
            before, target = latest(self.run_dir), self.run_dir / f"{PREFIX}{step}"
            if target.exists():  # one of the same step, left by a run whose checkpoint was not used
                shutil.rmtree(target)
            tmp.rename(target)
            if before is not None and before != target:
                shutil.rmtree(before, ignore_errors=True)
        self._barrier()
        self.last_written = time.perf_counter()
        self.writing += self.last_written - began

    # -- reading back ---------------------------------------------------------------------
    def restore(self, model, optimizer, schedule, result) -> int:
        """Put the last checkpoint back into the model, optimiser, schedule, ``result`` and the dev
        curve; the step to go on from (0: none to use)."""
        import torch

        path = latest(self.run_dir)
        for stale in self.run_dir.glob(PREFIX + "*.tmp"):  # a checkpoint its process did not finish
            if self.rank == 0:
                shutil.rmtree(stale, ignore_errors=True)
        if path is None:
            return 0
        differs = differences(path, self.cell, self.world)
        if differs:  # the driver said so (suite.shootout.runner._execute), but for the number of processes
            self._barrier()  # every process has read it
            if self.rank == 0:
                if differs == ["processes"]:
                    print(f"leitai: {self.cell.run_id}: its checkpoint ({path.name}) was written by a cell of "
                          f"another number of processes: starting over", file=sys.stderr)
                remove_all(self.run_dir)
            self._barrier()
            return 0
        unwrapped = self.accelerator.unwrap_model(model)
        if _sharded(unwrapped):
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import set_state_dict

            state = _sharded_state(unwrapped, optimizer)
            dcp.load(state, checkpoint_id=str(path / "state"))
            keys = set_state_dict(unwrapped, _inner(optimizer), model_state_dict=state["model"],
                                  optim_state_dict=state["optim"], options=_options())
            missing = sorted({n for n, p in unwrapped.named_parameters() if p.requires_grad} & set(keys.missing_keys))
            if missing or keys.unexpected_keys:
                raise RuntimeError(f"{path}: the checkpoint does not fit the model (missing {missing[:3]}, "
                                   f"unexpected {keys.unexpected_keys[:3]})")
        else:
            saved = torch.load(path / "trainable.pt", map_location="cpu")
            with torch.no_grad():
                for name, p in unwrapped.named_parameters():
                    if name in saved:
                        p.copy_(saved.pop(name))
            if saved:
                raise RuntimeError(f"{path}: parameters not in the model: {sorted(saved)[:3]}")
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        loop = torch.load(path / "loop.pt", map_location="cpu", weights_only=False)
        own = torch.load(path / f"rank-{self.rank}.pt", map_location="cpu", weights_only=False)
        schedule.load_state_dict(loop["schedule"])
        result.losses, result.replay_losses = list(loop["losses"]), list(loop["replay_losses"])
        result.tokens, result.seconds, result.answer_head = own["tokens"], loop["seconds"], loop["answer_head"]
        self.writing = loop["writing"]
        self.dev.load_state(own["dev"])
        with torch.no_grad():  # what the modules keep besides parameters (LST's ladder statistics, set while training)
            for name, b in unwrapped.named_buffers():
                if name in own["buffers"]:
                    b.copy_(own["buffers"][name])
        self.method.load_training_state(unwrapped, own["method"])
        _set_rng_state(own["rng"])
        self.resumed_from = loop["step"]
        return loop["step"]

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed

            torch.distributed.barrier()


def _identity(cell: Cell, world: int | None) -> dict:
    fields = asdict(cell)
    return {k: fields[k] for k in SAME} | ({} if world is None else {"processes": world})


def _sharded(model) -> bool:
    from .sharding import sharded

    return sharded(model)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds torch's


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # the frozen base is loaded as it was, not saved; so loading is not strict, and restore checks
    # that every trained parameter came back
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def _sharded_state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, _inner(optimizer), options=_options())
    return {"model": weights, "optim": optim}


def _rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
