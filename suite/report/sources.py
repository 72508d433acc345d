"""Where a report's records come from: one shootout directory, or several merged.

Merging rules (``leitai report A B --out M``):

- A run id names one (task, method, seed) cell, so the same run id in two directories is two
  measurements of one cell. Counting both would pass one seed off as two, and picking one
  would be a silent choice: it is an error that names both files.
- The merged directory gets a copy of every merged ``record.json`` under ``M/runs/``, so it is
  a shootout directory of its own (``leitai report M`` rebuilds it) that satisfies the output
  contract. Adapter weights are not copied; they stay where they were trained.
- ``M`` may be one of the inputs, or a directory whose ``runs/`` hold nothing but copies of
  the inputs' records (a rebuild of an earlier merge). Anything else there is an error: a
  report must describe exactly the runs in its directory.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import atomic_path
from ..cell.records import load_record, record_path, record_paths
from ..errors import UsageError


def collect(dirs: list[Path]) -> dict[str, tuple[Path, dict]]:
    """``{run_id: (record path, record)}`` over ``dirs``, in run-id order; duplicates are an error."""
    found: dict[str, tuple[Path, dict]] = {}
    for d in dirs:
        for path in record_paths(d):
            record = load_record(path)
            if record is None:  # gone since the listing
                continue
            rid = record["run_id"]
            if rid in found and found[rid][0].resolve() != path.resolve():
                raise UsageError(
                    f"run {rid} is in both {found[rid][0]} and {path}; a cell must be merged once "
                    "(remove one, or report the directories separately)"
                )
            found[rid] = (path, record)
    return dict(sorted(found.items()))


def gather(dirs: list[Path], out: Path) -> list[dict]:
    """The records of ``dirs``, copied into ``out/runs`` where ``out`` is not one of them."""
    out = Path(out)
    found = collect(dirs)
    inputs = {Path(d).resolve() for d in dirs}
    if out.resolve() not in inputs:
        for rid_path in sorted(out.glob("runs/*/record.json")):
            rid = rid_path.parent.name
            if rid not in found or rid_path.read_bytes() != found[rid][0].read_bytes():
                raise UsageError(
                    f"{rid_path}: {out} already holds runs that are not in the directories being reported; "
                    "choose an empty --out"
                )
        for rid, (path, _) in found.items():
            target = record_path(out, rid)
            if target.resolve() != path.resolve() and not target.exists():
                with atomic_path(target) as tmp:  # a reader sees the whole record or none
                    shutil.copyfile(path, tmp)
    return [record for _, record in found.values()]
