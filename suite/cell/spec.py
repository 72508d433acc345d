"""What one shootout cell is: :class:`Cell`, the spec the runner writes to ``cell.json`` and
``python -m suite.cell`` reads back.

It lives apart from :mod:`suite.cell.run` so that the driver, whose executors hand cells out,
imports the spec without the run's imports (torch, transformers, the measures).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..config.settings import RunSettings


@dataclass(kw_only=True)
class Cell(RunSettings):
    """One (method, task, seed) of a shootout, with every run setting (:class:`RunSettings`)."""

    run_id: str
    method: str
    task: str
    seed: int
    params: dict  # the method's hyper-parameters, defaults merged with overrides
    task_sizes: dict | None  # per-split caps for the task (None: all of it)
    #: "final" (scored on test), "tune" (a sweep's setting, scored on dev) or "baseline" (the
    #: untrained base model and the task's trivial answers; no method)
    phase: str = "final"
    #: for a final run of a swept method: the setting its tuning chose, how many it tried and
    #: the dev figures of each (see :func:`suite.shootout.runner.choose_settings`)
    tuning: dict | None = None
    #: a baseline cell that also scores the base's retention (``--retention``): one per base of a
    #: shootout, the first task's (:func:`suite.shootout.runner.baseline_cells`)
    base_retention: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        return cls(**json.loads(text))
