"""The shootout: every method × task × seed cell, each in its own process, then the report.

Records are the only results: a cell is done when ``runs/<run_id>/record.json`` exists.
``--resume`` skips those cells; an interrupted shootout keeps everything that finished.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .cell import Cell
from .config import ShootoutConfig
from .errors import UsageError
from .records import read_record, record_path


def run_id(method: str, task: str, seed: int) -> str:
    safe = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")  # noqa: E731
    return f"{safe(task)}__{safe(method)}__s{seed}"


def plan(config: ShootoutConfig, registry) -> list[Cell]:
    """The cells of a shootout, after checking every name and setting against the plugins.

    Tasks are resolved here, in the parent, so a user's data file (``file:PATH``) is read and
    validated before any cell starts: bad data stops the shootout with one line.
    """
    from .methods import method_params, resolve_method
    from .tasks import resolve_task

    cells = []
    tasks = {name: resolve_task(name, registry) for name in config.tasks}
    unknown = set(config.method_overrides) - set(config.methods)
    if unknown:
        raise UsageError(f"settings given for method(s) not in this shootout: {', '.join(sorted(unknown))}")
    methods = {name: resolve_method(name, registry, config.method_overrides.get(name)) for name in config.methods}
    for task in config.tasks:
        for name in config.methods:
            try:
                params = method_params(methods[name], config.method_overrides.get(name))
            except ValueError as e:
                raise UsageError(str(e)) from None
            for seed in config.seeds:
                cells.append(
                    Cell(
                        run_id=run_id(name, task, seed), method=name, task=task, seed=seed,
                        model=config.model, params=params, steps=config.max_steps,
                        batch_size=config.batch_size, max_len=config.max_len,
                        task_sizes=config.sizes_for(tasks[task]), device=config.device,
                        trust_remote_code=config.trust_remote_code, warmup=config.warmup,
                        weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                        log_every=config.log_every, eval_batch_size=config.eval_batch_size,
                        side_corpus=config.side_corpus, side_corpus_size=config.side_corpus_size,
                        infer_prompts=config.infer_prompts, infer_new_tokens=config.infer_new_tokens,
                        gradient_checkpointing=config.gradient_checkpointing,
                    )
                )
    return cells


@dataclass
class Outcome:
    out_dir: Path
    ran: int
    skipped: int
    statuses: dict


def make_executor(config: ShootoutConfig, registry, progress: bool = True):
    """The executor plugin named by ``--executor``, built with the shootout's settings."""
    from .executors import ExecutorSettings

    if config.executor not in registry.executors:
        raise UsageError(f"unknown executor {config.executor!r} (known: {', '.join(sorted(registry.executors))})")
    settings = ExecutorSettings(
        workers=config.workers, devices=[d.strip() for d in config.devices.split(",") if d.strip()] or None,
        gpus_per_cell=config.gpus_per_cell, cpus_per_cell=config.cpus_per_cell or None,
        address=config.ray_address or None, max_retries=config.max_retries, progress=progress,
    )
    return registry.executors[config.executor](settings)


def run_shootout(config: ShootoutConfig, registry, executor=None, progress: bool = True) -> Outcome:
    from tqdm.auto import tqdm

    from .report import write_report

    cells = plan(config, registry)
    executor = executor or make_executor(config, registry, progress)
    out = Path(config.out)
    existing = list(out.glob("runs/*/record.json")) if out.exists() else []
    if existing and not config.resume:
        raise UsageError(f"{out} already holds {len(existing)} finished runs; pass --resume or choose another --out")
    todo = []
    for cell in cells:
        done = read_record(out, cell.run_id)
        if done is not None:
            _check_same_settings(out, cell, done)
            continue
        todo.append(cell)
    out.mkdir(parents=True, exist_ok=True)
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
    recorded = record.get("config", {})
    if not recorded.get("params"):
        return  # a failed cell recorded before its settings were known
    mine = vars(cell)
    for key in ("params", "steps", "batch_size", "max_len", "task_sizes", "model"):
        if key in recorded and recorded[key] != mine[key]:
            raise UsageError(
                f"--resume: {record_path(out, cell.run_id)} was run with {key}={recorded[key]!r}, "
                f"this shootout asks for {mine[key]!r}; use another --out"
            )
