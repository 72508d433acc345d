"""The shootout: every method × task × seed cell, each in its own process, then the report.

Records are the only results: a cell is done when ``runs/<run_id>/record.json`` exists.
``--resume`` skips those cells; an interrupted shootout keeps everything that finished.
Everything a user can get wrong (names, data files, the model, every setting, the output
directory) is checked here, in the parent, before any cell starts; the output directory is
locked while the shootout runs (:mod:`suite.outdir`).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .cell import Cell
from .errors import UsageError
from .records import DamagedRecord, load_record, read_record, record_path, record_paths, set_aside
from .settings import FAIR_SETTINGS, ShootoutConfig


def run_id(method: str, task: str, seed: int) -> str:
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")  # noqa: E731
    return f"{safe(task)}__{safe(method)}__s{seed}"


def plan(config: ShootoutConfig, registry) -> list[Cell]:
    """The cells of a shootout, after checking every name and setting against the plugins.

    Tasks are resolved here, in the parent, so a user's data file (``file:PATH``) is read and
    validated before any cell starts: bad data stops the shootout with one line. So is the
    model (:func:`suite.models.model_config`: a missing local path, or a hub id with no local
    copy when offline), and every method's settings: a finite positive ``lr``, then the
    method's own :meth:`~suite.methods.Method.check_params` on a weightless stand-in of the
    model.
    """
    from .methods import check_params, method_params
    from .models import model_config, stand_in
    from .userdata import resolve_task

    tasks = {name: resolve_task(name, registry) for name in config.tasks}
    methods = {name: registry.get("methods", name) for name in config.methods}
    unknown = set(config.method_overrides) - set(config.methods)
    if unknown:
        raise UsageError(f"settings given for method(s) not in this shootout: {', '.join(sorted(unknown))}")
    params = {}
    try:
        for name, method in methods.items():
            params[name] = method_params(method, config.method_overrides.get(name))
        base = model_config(config.model, registry, config.trust_remote_code)
        build = (lambda: stand_in(base, config.trust_remote_code)) if base is not None else None
        for name, method in methods.items():
            check_params(method, params[name], config.method_overrides.get(name), build)
    except ValueError as e:
        raise UsageError(str(e)) from None
    settings = config.run_settings()
    return [
        Cell(run_id=run_id(name, task, seed), method=name, task=task, seed=seed, params=params[name],
             task_sizes=config.sizes_for(tasks[task]), **settings)
        for task in config.tasks for name in config.methods for seed in config.seeds
    ]


@dataclass
class Outcome:
    out_dir: Path
    ran: int
    skipped: int
    statuses: dict


def run_shootout(config: ShootoutConfig, registry, executor=None, progress: bool = True) -> Outcome:
    """Check everything, lock the output directory, run the cells not yet done, write the report."""
    from . import outdir
    from .executors import make_executor

    cells = plan(config, registry)
    executor = executor or make_executor(config, registry, progress)
    out = outdir.prepare(config.out)
    with outdir.locked(out):
        return _run_locked(config, cells, executor, out, progress)


def _run_locked(config: ShootoutConfig, cells: list[Cell], executor, out: Path, progress: bool) -> Outcome:
    from tqdm.auto import tqdm

    from .report import write_report

    existing = record_paths(out)
    if existing and not config.resume:
        raise UsageError(f"{out} already holds {len(existing)} finished runs; pass --resume or choose another --out")
    set_aside_damaged(existing, {cell.run_id for cell in cells})
    todo = []
    for cell in cells:
        done = read_record(out, cell.run_id)
        if done is not None:
            _check_same_settings(out, cell, done)
            continue
        todo.append(cell)
    statuses: dict[str, int] = {}
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="shootout", unit="cell", disable=not progress)
    try:
        for cell, record in executor.map(todo, out):
            statuses[record["status"]] = statuses.get(record["status"], 0) + 1
            bar.set_postfix_str(f"{cell.run_id}: {record['status']}")
            bar.update(1)
    finally:
        bar.close()
        write_report([out], out)  # also after Ctrl-C: what finished is reported
    return Outcome(out, len(todo), len(cells) - len(todo), statuses)


def set_aside_damaged(paths: list[Path], planned: set[str]) -> None:
    """``--resume``: move each damaged record among ``paths`` aside, with one warning line naming
    it; its cell, when it is one of the ``planned`` run ids, then runs again."""
    for path in paths:
        try:
            load_record(path)
        except DamagedRecord as e:
            moved = set_aside(path)
            then = "its cell runs again" if path.parent.name in planned else "its cell is not in this shootout"
            print(f"leitai: warning: {e}; moved to {moved.name}, {then}", file=sys.stderr)


def truncation_warnings(records: list[dict], max_len: int) -> list[str]:
    """One line per task whose examples did not fit ``max_len`` tokens and were truncated
    (the counts are the same for every method of a task: same data, same tokenizer)."""
    worst: dict[str, dict] = {}
    for r in records:
        m = r.get("metrics", {})
        if m.get("truncated_examples") or m.get("truncated_eval_examples"):
            if r["task"] not in worst or m.get("truncated_examples", 0) > worst[r["task"]].get("truncated_examples", 0):
                worst[r["task"]] = m
    return [
        f"{task}: {m.get('truncated_examples', 0)} of {m.get('train_examples', '?')} training examples and "
        f"{m.get('truncated_eval_examples', 0)} dev/test examples were longer than --max-len {max_len} tokens "
        "and were truncated"
        for task, m in sorted(worst.items())
    ]


def _check_same_settings(out: Path, cell: Cell, record: dict) -> None:
    """``--resume`` keeps a finished cell only if it ran with this shootout's settings: the
    method's params and every fair setting (the list the report compares too)."""
    recorded = record.get("config", {})
    if not recorded.get("params"):
        return  # a failed cell recorded before its settings were known
    mine = vars(cell)
    for key in ("params",) + FAIR_SETTINGS:
        if key in recorded and recorded[key] != mine[key]:
            raise UsageError(
                f"--resume: {record_path(out, cell.run_id)} was run with {key}={recorded[key]!r}, "
                f"this shootout asks for {mine[key]!r}; use another --out"
            )
