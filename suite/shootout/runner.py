"""The shootout: every method × task × seed cell, each in its own process, then the report.

Records are the only results: a cell is done when ``runs/<run_id>/record.json`` exists.
``--resume`` skips those cells; an interrupted shootout keeps everything that finished.
Everything a user can get wrong (names, data files, the model, every setting, the output
directory) is checked here, in the parent, before any cell starts; the output directory is
locked while the shootout runs (:mod:`suite.shootout.outdir`).
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cell import checkpoint
from ..cell.records import DamagedRecord, load_record, read_record, read_records, record_path, record_paths, run_dir, set_aside
from ..cell.spec import Cell
from ..config import sweep, variants
from ..config.settings import FAIR_SETTINGS, ShootoutConfig
from ..errors import UsageError
from ..models import quantize


def run_id(method: str, task: str, seed: int, tune: str = "", variant: str = "") -> str:
    """``task__method__s0``; a tuning run's id names its setting: ``task__method__tune-lr1e-03__s0``;
    a variant (:func:`suite.config.variants.slug`) comes after the method: ``task__method__replay-zh-news-side-0.3__s0``.
    A name longer than :data:`NAME_CHARS` (a ``file:`` task's paths) keeps its end and a digest of the whole."""
    return (f"{_safe(task)}__{_safe(method)}__{variant + '__' if variant else ''}"
            f"{'tune-' + tune + '__' if tune else ''}s{seed}")


#: the longest task or method name a run id holds as it is (run ids are directory names)
NAME_CHARS = 80


def _safe(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    if len(safe) <= NAME_CHARS:
        return safe
    return f"{hashlib.sha1(name.encode()).hexdigest()[:10]}-{safe[-(NAME_CHARS - 11):].lstrip('-.')}"


@dataclass
class Lineup:
    """A shootout's lineup: its names resolved against the plugins and checked, before any cell runs."""

    tasks: dict  # name -> Task
    methods: dict  # name -> Method
    params: dict  # method -> its defaults with the user's overrides
    grids: dict  # method -> what its sweep tries ({setting: values}), or None
    #: (method, task) -> {setting: values} added beyond a grid's edge (:func:`bracket`)
    extended: dict = field(default_factory=dict)

    def grid(self, method: str, task: str) -> dict | None:
        """What ``method``'s sweep tries on ``task``: its grid and the values added to it there."""
        if not self.grids[method]:
            return None
        more = self.extended.get((method, task), {})
        return {k: list(v) + more.get(k, []) for k, v in self.grids[method].items()}


def resolve(config: ShootoutConfig, registry) -> Lineup:
    """Every name and setting of ``config`` checked against the plugins; one-line UsageErrors.

    Tasks are resolved here, in the parent, so a user's data file (``file:PATH``) is read and
    validated before any cell starts: bad data stops the shootout with one line. So is the
    model (:func:`suite.models.loading.model_config`: a missing local path, or a hub id with no local
    copy when offline), and every method's settings: a finite positive ``lr``, then the
    method's own :meth:`~suite.methods.method.Method.check_params` on a weightless stand-in of the
    model.
    """
    from ..data.tasks import check_splits
    from ..data.user_files import FileTask, resolve_task
    from ..measures import retention
    from ..methods.method import check_params, method_params
    from ..models.loading import check_attention, model_config, stand_in

    tasks = {name: resolve_task(name, registry) for name in config.tasks}
    for name, task in tasks.items():  # leitai's own tasks are big; a file: task checked its splits when read
        if not isinstance(task, FileTask) and not _shipped(registry, name):
            check_splits(task, config.sizes_for(task))
        for line in getattr(task, "overlap", []):  # a user's own splits that share prompts
            print(f"leitai: warning: {name}: {line}", file=sys.stderr)
    methods = {name: registry.method(name, config.method_overrides.get(name)) for name in config.methods}
    unknown = set(config.method_overrides) - set(config.methods)
    if unknown:
        raise UsageError(f"settings given for method(s) not in this shootout: {', '.join(sorted(unknown))}")
    params = {}
    try:
        for name, method in methods.items():
            params[name] = method_params(method, config.method_overrides.get(name))
        sweep.check(config.sweep, methods)
        grids = {name: sweep.method_grid(method, config.sweep) for name, method in methods.items()}
        base = model_config(config.model, registry, config.trust_remote_code)
        check_attention(base, config.attn_implementation, config.device, config.trust_remote_code)
        build = (lambda: stand_in(base, config.trust_remote_code)) if base is not None else None
        for name, method in methods.items():
            check_params(method, params[name], config.method_overrides.get(name), build)
            for setting in sweep.combinations(grids[name]) if grids[name] else []:  # each one a tuning run tries
                check_params(method, {**params[name], **setting}, setting, build)
    except ValueError as e:
        raise UsageError(str(e)) from None
    quantize.check(variants.values(config.quantize), methods)
    if retention.parse(config.retention) and not config.baselines:
        raise UsageError("--retention scores the base model in the baseline cells, and --no-baselines drops them")
    retention.check(config.retention, config.retention_include)  # the harness, its tasks, their local data
    return Lineup(tasks, methods, params, grids)


def _shipped(registry, task: str) -> bool:
    """Whether leitai itself registers ``task`` (rather than a plugin)."""
    plugin = registry.plugins.get(registry.origin.get(("tasks", task)))
    return plugin is not None and plugin.source.startswith("leitai ")


def _cell(config: ShootoutConfig, lineup: Lineup, variant: dict | None = None, **identity) -> Cell:
    """A cell of ``config`` with the dimensions' values of ``variant`` (none: all off)."""
    settings = {**config.run_settings(), **(variant or variants.off())}
    return Cell(task_sizes=config.sizes_for(lineup.tasks[identity["task"]]), **identity, **settings)


def baseline_cells(config: ShootoutConfig, lineup: Lineup) -> list[Cell]:
    """One cell per task that scores the untrained base model and the task's trivial answers (and
    one per value of a dimension that changes the base, :func:`suite.config.variants.baseline_combinations`); the
    first task's also score the base's retention (``--retention``)."""
    if not config.baselines:
        return []
    return [_cell(config, lineup, variant, run_id=run_id(sweep.BASELINE, task, 0, variant=_slug(config, variant)),
                  method=sweep.BASE_MODEL, task=task, seed=0, params={}, phase=sweep.BASELINE,
                  base_retention=i == 0)  # the base's retention once per base: it does not depend on the task
            for i, task in enumerate(config.tasks) for variant in variants.baseline_combinations(config)]


def tuning_cells(config: ShootoutConfig, lineup: Lineup) -> list[Cell]:
    """Every setting of every swept method on every task and variant, with the tuning seeds."""
    return [
        _cell(config, lineup, variant, run_id=run_id(name, task, seed, sweep.label(setting), _slug(config, variant)),
              method=name, task=task, seed=seed, params={**lineup.params[name], **setting}, phase=sweep.TUNE)
        for task in config.tasks for name in config.methods if lineup.grids[name]
        for variant in variants.every(config)
        for setting in sweep.combinations(lineup.grid(name, task)) for seed in config.tune_seeds
    ]


def _slug(config: ShootoutConfig, variant: dict) -> str:
    return variants.slug({**config.run_settings(), **variant})


def _name(config: ShootoutConfig, method: str, variant: dict) -> str:
    """What the report calls ``method`` at ``variant`` (the key its tuning is chosen under)."""
    return variants.display(method, {**config.run_settings(), **variant})


def final_cells(config: ShootoutConfig, lineup: Lineup, chosen: dict | None = None) -> list[Cell]:
    """Every method × variant (:mod:`suite.config.variants`: each ``--replay`` setting) × task × seed,
    with the method's params (and, for swept methods, the setting ``chosen[(name, task)]``
    holds: ``{"setting": ..., ...}`` from :func:`choose_settings`; the name is the method's
    with its variant's label)."""
    cells = []
    for task in config.tasks:
        for name in config.methods:
            for variant in variants.every(config):
                tuning = (chosen or {}).get((_name(config, name, variant), task))
                params = {**lineup.params[name], **((tuning or {}).get("setting") or {})}
                cells += [_cell(config, lineup, variant, run_id=run_id(name, task, seed, variant=_slug(config, variant)),
                                method=name, task=task, seed=seed, params=params, tuning=tuning)
                          for seed in config.seeds]
    return cells


def cells_of(config: ShootoutConfig, registry) -> list[Cell]:
    """The final cells of a shootout without a sweep (each method at its params)."""
    return final_cells(config, resolve(config, registry))


def choose_settings(out: Path, config: ShootoutConfig, lineup: Lineup) -> dict:
    """``{(name, task): tuning}`` for every swept method (``name``: the method with its variant's
    label, :func:`suite.config.variants.display`): the setting its tuning runs chose on dev
    (:func:`suite.config.sweep.choose`), how many were tried and the evidence, from the records;
    ``edge`` lists the settings whose choice lies at an edge of the grid tried, ``extended`` the
    values added beyond the declared grid (:func:`bracket`)."""
    chosen = {}
    by_key: dict[tuple, list] = {}
    for record in read_records(out):
        if record.get("phase") == sweep.TUNE:
            by_key.setdefault((variants.record_name(record), record["task"]), []).append(record)
    for task in config.tasks:
        for method in config.methods:
            grid = lineup.grid(method, task)
            if not grid:
                continue
            for name in [_name(config, method, variant) for variant in variants.every(config)]:
                setting, evidence = sweep.choose(by_key.get((name, task), []), sorted(grid))
                chosen[(name, task)] = {"setting": setting, "keys": sorted(grid), "tried": len(sweep.combinations(grid)),
                                        "edge": sweep.edges(grid, setting), **evidence}
                if lineup.extended.get((method, task)):
                    chosen[(name, task)]["extended"] = lineup.extended[(method, task)]
    return chosen


def bracket(executor, config: ShootoutConfig, lineup: Lineup, out: Path, bar, outcome: Outcome) -> None:
    """Sweeps that bracket their optimum: while a (method, task)'s best setting lies at an edge
    of a numeric grid, add the next value beyond it (:func:`suite.config.sweep.extend`, up to the
    method's bound) and run the new tuning cells. They are ordinary cells whose run ids name
    their settings, and the choices are read from the records alone: ``--resume`` and every
    executor take the same steps and redo nothing."""
    from ..config.sweep import sweep_bounds

    if not any(lineup.grids.values()):
        return
    for _ in range(sweep.MAX_ROUNDS):
        before = {cell.run_id for cell in tuning_cells(config, lineup)}
        chosen = choose_settings(out, config, lineup)
        for task in config.tasks:
            for method in (m for m in config.methods if lineup.grids[m]):
                for variant in variants.every(config):  # a value one variant needs, every variant tries
                    setting = chosen[(_name(config, method, variant), task)]["setting"]
                    more = sweep.extend(lineup.grid(method, task), setting, sweep_bounds(lineup.methods[method]),
                                        lineup.grids[method])
                    for key, values in more.items():
                        added = lineup.extended.setdefault((method, task), {}).setdefault(key, [])
                        added.extend(v for v in values if v not in added)
        new = [cell for cell in tuning_cells(config, lineup) if cell.run_id not in before]
        if not new:
            return
        bar.total = (bar.total or 0) + len(new)
        _execute(executor, new, out, bar, outcome)


@dataclass
class Outcome:
    out_dir: Path
    ran: int  # final runs run now
    skipped: int  # final runs finished before (--resume)
    statuses: dict  # of the final runs run now
    tuning: int = 0  # tuning runs run now
    baselines: int = 0  # baseline cells run now


def run_shootout(config: ShootoutConfig, registry, executor=None, progress: bool = True) -> Outcome:
    """Check everything, lock the output directory, then run the baselines and tuning runs, the
    final runs (each swept method at the setting its tuning chose), and write the report.
    ``--resume`` skips finished cells."""
    from ..memory.plan import check_budget
    from . import outdir
    from .executors import make_executor
    from .warm import single_threaded_driver

    with single_threaded_driver():  # no torch thread pool for a process forked from this one to inherit
        resolved = resolve(config, registry)
        check_budget(config, resolved, final_cells(config, resolved))  # --memory: cells that would not fit, before any runs
        executor = executor or make_executor(config, registry, progress)
        try:
            # before the directory's lock is taken and any thread starts: the local executor forks
            # its warm-start server from this process, which has imported torch for the checks above
            getattr(executor, "prepare", lambda: None)()
            out = outdir.prepare(config.out)
            with outdir.locked(out):
                return _run_locked(config, resolved, executor, out, progress)
        finally:
            getattr(executor, "close", lambda: None)()


def _run_locked(config: ShootoutConfig, resolved: Lineup, executor, out: Path, progress: bool) -> Outcome:
    from tqdm.auto import tqdm

    from ..report import write_report

    existing = record_paths(out)
    if existing and not config.resume:
        raise UsageError(f"{out} already holds {len(existing)} finished runs; pass --resume or choose another --out")
    first = baseline_cells(config, resolved) + tuning_cells(config, resolved)
    finals = final_cells(config, resolved)  # their ids; their settings wait for the tuning
    set_aside_damaged(existing, {cell.run_id for cell in first + finals})
    outcome = Outcome(out, 0, 0, {})
    bar = tqdm(total=len(first) + len(finals), desc="shootout", unit="cell", disable=not progress)
    try:
        _execute(executor, first, out, bar, outcome)
        bracket(executor, config, resolved, out, bar, outcome)  # grids whose best lies at an edge grow
        cells = final_cells(config, resolved, choose_settings(out, config, resolved))
        _execute(executor, cells, out, bar, outcome)
    finally:
        bar.close()
        write_report([out], out)  # also after Ctrl-C: what finished is reported
    return outcome


def _execute(executor, cells: list[Cell], out: Path, bar, outcome: Outcome) -> None:
    """Run the cells that have no record yet, or a checkpoint (a cell ended from outside: it goes
    on from there, :mod:`suite.cell.checkpoint`), through the executor, counting what happens."""
    todo = []
    for cell in cells:
        done, path = read_record(out, cell.run_id), checkpoint.latest(run_dir(out, cell.run_id))
        if path is not None:
            differs = checkpoint.differences(path, cell)
            then = (f"its checkpoint ({path.name}) was written with other settings ({', '.join(differs)}): it starts "
                    "over" if differs else f"it goes on from its checkpoint after step {checkpoint.step_of(path)}")
            print(f"leitai: {cell.run_id}: did not finish; {then}", file=sys.stderr)
        if done is None or path is not None:
            todo.append(cell)
            continue
        _check_same_settings(out, cell, done)
        outcome.skipped += cell.phase == sweep.FINAL
        bar.update(1)
    results = executor.map(todo, out)
    with contextlib.closing(results):  # a stop here, too, stops the executor's cells at once
        for cell, record in results:
            _count(cell, record, bar, outcome)


def _count(cell: Cell, record: dict, bar, outcome: Outcome) -> None:
    if cell.phase == sweep.FINAL:
        outcome.ran += 1
        outcome.statuses[record["status"]] = outcome.statuses.get(record["status"], 0) + 1
    elif cell.phase == sweep.TUNE:
        outcome.tuning += 1
    else:
        outcome.baselines += 1
    bar.set_postfix_str(f"{cell.run_id}: {record['status']}")
    bar.update(1)


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
