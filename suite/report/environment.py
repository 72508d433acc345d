"""What the compared runs ran on, and warnings when they differ where a comparison cares.

Two kinds of difference make a comparison suspect: the software and machine (leitai version
and commit, torch/transformers/peft/accelerate, device, dtype), and the shootout settings
within a task (model, steps, batch size...). Both are read from the records alone.
"""
from __future__ import annotations

import json

import pandas as pd

from ..config import variants
from ..config.settings import FAIR_SETTINGS

#: environment fields shown in the footer, as (column, where in ``record["env"]``)
ENV_FIELDS = (
    ("leitai", ("versions", "leitai")),
    ("commit", ("git_commit",)),
    ("torch", ("versions", "torch")),
    ("transformers", ("versions", "transformers")),
    ("peft", ("versions", "peft")),
    ("accelerate", ("versions", "accelerate")),
    ("device", ("device",)),
    ("device name", ("device_name",)),
    ("dtype", ("dtype",)),
)


def _get(d: dict, path: tuple):
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def environment_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run that recorded its environment (a cell that failed early has none)."""
    rows = []
    for r in records:
        env = r.get("env") or {}
        if not env:
            continue
        row = {"run_id": r["run_id"], "method": variants.record_name(r), "task": r.get("task")}
        row.update({name: _text(_get(env, path)) for name, path in ENV_FIELDS})
        row["commit"] = _short(row["commit"])
        rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", "method", "task"] + [n for n, _ in ENV_FIELDS])


def _short(commit: str) -> str:
    """12 hex digits name a commit unambiguously in practice; keep the ``-dirty`` mark."""
    sha, dirty = (commit[:-6], "-dirty") if commit.endswith("-dirty") else (commit, "")
    return sha[:12] + dirty if len(sha) == 40 else commit


def _text(v) -> str:
    return "–" if v is None or v == "" else str(v)


def environments(records: list[dict]) -> pd.DataFrame:
    """The distinct environments, each with how many runs and which methods used it."""
    env = environment_frame(records)
    fields = [n for n, _ in ENV_FIELDS]
    if env.empty:
        return pd.DataFrame(columns=fields + ["runs", "methods"])
    grouped = env.groupby(fields, sort=True, dropna=False)
    table = grouped.agg(runs=("run_id", "size"), methods=("method", lambda m: ", ".join(sorted(set(m)))))
    return table.reset_index()


def _spread(values: pd.Series) -> str:
    counts = values.value_counts()
    return "; ".join(f"{v} ({n} run{'s' if n != 1 else ''})" for v, n in sorted(counts.items()))


def warnings(records: list[dict]) -> list[str]:
    """Plain-text warnings about differences between the runs being compared."""
    out = []
    env = environment_frame(records)
    for name, _ in ENV_FIELDS:
        if not env.empty and env[name].nunique() > 1:
            out.append(f"runs differ in {name}: {_spread(env[name])}")
    dirty = env[env["commit"].str.endswith("-dirty")] if not env.empty else env
    if len(dirty):
        out.append(f"{len(dirty)} run(s) ran from a leitai checkout with uncommitted changes (commit ends in -dirty)")
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r.get("task"), []).append(r)
    for task in sorted(by_task, key=str):
        configs = [r.get("config") or {} for r in by_task[task]]
        for key in [k for k in FAIR_SETTINGS if k not in variants.SETTINGS]:  # dimensions differ on purpose
            values = pd.Series([_canon(c[key]) for c in configs if key in c], dtype=object)
            if values.nunique() > 1:
                out.append(f"task {task}: runs differ in the setting {key}: {_spread(values)}")
        params: dict[str, set] = {}
        for r in by_task[task]:
            if r.get("phase") == "tune":
                continue  # tuning runs try other settings on purpose
            p = (r.get("config") or {}).get("params")
            if p:
                params.setdefault(variants.record_name(r), set()).add(_canon(p))
        for method in sorted(m for m, ps in params.items() if len(ps) > 1):
            out.append(f"task {task}: the seeds of {method} ran with different method settings")
    return out


def _canon(v) -> str:
    """Settings as comparable text (dicts with sorted keys)."""
    return json.dumps(v, sort_keys=True, ensure_ascii=False) if isinstance(v, (dict, list)) else _text(v)
