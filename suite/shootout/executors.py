"""Executors run a shootout's cells somewhere and hand back their records.

An executor is a plugin (``register_executors``): a subclass of :class:`Executor` whose
``map(cells, out_dir)`` runs every cell, each in a fresh process of its own, and yields
``(cell, record)`` as each finishes, once ``out_dir/runs/<run_id>/`` holds the run's files.
Where the cell ran (a local process pool, a Ray cluster, a Slurm job) is the executor's
business; the driver process alone writes the shootout directory. The pieces every executor
needs, starting a cell's process and turning a dead process into a ``failed`` record, are in
:mod:`suite.shootout.processes`.

An executor adds its own command-line options (``--workers`` for the local one, Ray's
``--ray-address``) with :meth:`Executor.add_arguments`, the way plugin commands do; a TOML
config may set them by the same names. They reach it as ``settings.options``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..cell.spec import Cell
from ..errors import UsageError


@dataclass
class ExecutorSettings:
    """What the core hands an executor: the shootout's resource requests and the executor's
    own options (its :meth:`Executor.add_arguments` flags, defaults filled in)."""

    gpus_per_cell: int = 1  # >1: the cell runs under torch's distributed launch with that many processes
    cpus_per_cell: int | None = None  # CPU threads per cell (None: the executor's default)
    progress: bool = True  # show each cell's step bar
    options: argparse.Namespace = field(default_factory=argparse.Namespace)
    cold_start: bool = False  # every cell in a fresh process (no warm-start server), as before suite.shootout.warm
    given: frozenset = frozenset()  # the executor's options the user gave (the rest are its defaults)
    device: str = "auto"  # where cells train (--device): auto, cpu or cuda


class Executor:
    """Base class for executors. Register subclasses through ``register_executors``."""

    #: the name users type after ``--executor``
    name: str = ""
    description: str = ""
    #: the executor used when no ``--executor`` is given (one registered executor sets this)
    default: bool = False

    @classmethod
    def add_arguments(cls, parser) -> None:
        """Add the executor's own options to ``parser`` (an argparse parser or group), with
        their defaults. Their names must not clash with the core's or another executor's;
        give them a prefix (``--ray-address``) unless they are generic."""

    def __init__(self, settings: ExecutorSettings):
        self.settings = settings

    def map(self, cells: list[Cell], out_dir: Path):
        """Run every cell; yield ``(cell, record)`` as each finishes.

        When a pair is yielded, ``out_dir/runs/<run_id>/record.json`` (written atomically, last)
        and the run's other files are in place. Ctrl-C and SIGTERM (a KeyboardInterrupt in the
        driver's main thread, :mod:`suite.stopping`) must cancel what is still running and leave
        finished runs intact.
        """
        raise NotImplementedError

    def prepare(self) -> None:
        """Get ready before any cell is listed. The runner calls it once, in the driver's main
        thread, after the shootout's settings are checked and before its output directory is
        locked or any thread is started: the moment to start what takes long and must not
        inherit the driver's threads or files (the local executor forks its warm-start server
        here). The default does nothing."""

    def close(self) -> None:
        """Release what :meth:`map` kept for later calls (the local executor's warm-start
        server); the runner calls it once the shootout's cells are done."""


def option_defaults(cls) -> dict:
    """An executor class's own options with their defaults (``{dest: default}``)."""
    parser = argparse.ArgumentParser(add_help=False)
    cls.add_arguments(parser)
    return vars(parser.parse_args([]))


def option_owners(registry) -> dict[str, str]:
    """Every executor option's name -> the executor that adds it."""
    owners: dict[str, str] = {}
    for name in sorted(registry.executors):
        try:
            dests = option_defaults(registry.executors[name])
        except Exception:  # a broken executor plugin: its options are unknown, it fails when chosen
            continue
        for dest in dests:
            owners.setdefault(dest, name)
    return owners


def make_executor(config, registry, progress: bool = True) -> Executor:
    """The executor plugin named by ``--executor``, built with the shootout's settings; an
    option of another executor is a one-line UsageError."""
    cls = registry.get("executors", config.executor)
    defaults = option_defaults(cls)
    owners = option_owners(registry)
    for dest in config.executor_options:
        if dest not in defaults:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} is an option of the {owners.get(dest, '?')} executor, not of {config.executor}")
    from .warm import cold_start_requested

    settings = ExecutorSettings(
        gpus_per_cell=config.gpus_per_cell, cpus_per_cell=config.cpus_per_cell or None, progress=progress,
        cold_start=config.cold_start or cold_start_requested(), given=frozenset(config.executor_options),
        device=config.device,
        options=argparse.Namespace(**{**defaults, **config.executor_options}),
    )
    return cls(settings)
