"""Tuning inside a shootout: which settings each method tries, and which one it keeps.

``leitai run --sweep lr`` tunes every method over the ``lr`` grid its plugin declares
(:func:`tuning_grid`); ``--sweep lora.lr=1e-4,3e-4 --sweep lora.r=4,16`` gives
explicit grids (a method tries the product of its grids); a TOML config says the same with a
``[sweep]`` table (``keys = ["lr"]``) and ``[sweep.METHOD]`` tables (``r = [4, 16]``).

Tuning cells are ordinary cells (``phase = "tune"``) that train with the tuning seeds and are
scored on the dev split only. Per (method, task) :func:`choose` keeps the setting with the best
mean dev score (the lower dev loss breaks ties, and decides alone for a task without a dev
score); the final cells then run it with every seed and are scored on test. Nothing here reads
test data.

A sweep brackets its optimum: where the best value of a numeric grid lies at the grid's first or
last value, :func:`extend` adds the next value beyond it by the grid's own step (times the grid's
ratio for a log-spaced grid, plus its difference for a linear one), up to the bound the method
declares (:func:`sweep_bounds`); the runner runs those tuning cells and chooses
again, until the best is inside the grid or the bound is reached. A choice still at an edge is
marked (:func:`edges`).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import re

from ..errors import UsageError
from ..methods.method import Method

#: a cell's phase: a tuning run (scored on dev), a final run (on test), or the task's baselines
TUNE, FINAL, BASELINE = "tune", "final", "baseline"
#: the name the untrained base model goes by in records and tables
BASE_MODEL = "base model"


def empty() -> dict:
    """No sweep: ``{"keys": [], "grids": {}}``."""
    return {"keys": [], "grids": {}}


def merge(first: dict, then: dict) -> dict:
    """``then`` (the command line) added to ``first`` (the TOML file); its grids win per key."""
    out = {"keys": list(dict.fromkeys(first["keys"] + then["keys"])),
           "grids": {m: dict(g) for m, g in first["grids"].items()}}
    for method, grid in then["grids"].items():
        out["grids"].setdefault(method, {}).update(grid)
    return out


def method_grid(method, sweep: dict) -> dict[str, list] | None:
    """What ``method`` tries: ``{setting: values}``, or None when the sweep leaves it at its settings.

    Explicit grids (``--sweep lora.r=4,16``) come first; each key of ``--sweep KEY`` adds the
    method's declared grid for it, if the method has that setting. An explicit grid for a
    setting the method does not have is a one-line error.
    """
    grid = {}
    declared = tuning_grid(method)
    for key in sweep["keys"]:
        if key in declared:
            grid[key] = declared[key]
    for key, values in sweep["grids"].get(method.name, {}).items():
        if key not in method.defaults:
            raise UsageError(f"--sweep {method.name}.{key}: method {method.name!r} has no setting {key!r} "
                             f"(settings: {', '.join(sorted(method.defaults))})")
        grid[key] = list(values)
    return grid or None


def check(sweep: dict, methods: dict) -> None:
    """Every swept name must mean something: a key some method declares a grid for, a method in
    the shootout."""
    for key in sweep["keys"]:
        if not any(key in tuning_grid(m) for m in methods.values()):
            raise UsageError(f"--sweep {key}: no method of this shootout declares a grid for {key!r}")
    extra = set(sweep["grids"]) - set(methods)
    if extra:
        raise UsageError(f"--sweep given for method(s) not in this shootout: {', '.join(sorted(extra))}")


def combinations(grid: dict[str, list]) -> list[dict]:
    """Every setting of a grid: the product of its values, in a fixed order."""
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def label(setting: dict) -> str:
    """A short, path-safe name for one setting, e.g. ``lr0.0003-r16`` (a digest when long)."""
    def value(v):
        if isinstance(v, float):
            return f"{v:g}"
        return re.sub(r"[^A-Za-z0-9.]+", "", json.dumps(v) if not isinstance(v, str) else v)[:12]

    text = "-".join(f"{k}{value(v)}" for k, v in sorted(setting.items()))
    text = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text)
    if len(text) > 48:
        digest = hashlib.sha1(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:8]
        text = text[:39] + "-" + digest
    return text


def describe(setting: dict) -> str:
    """``lr 3e-3, r 16``: a setting as the report shows it."""
    def value(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k} {value(v)}" for k, v in sorted(setting.items()))


#: at most this many rounds of extension per shootout (a bound of 0 for a log-spaced grid is never reached)
MAX_ROUNDS = 10


def _numeric(values) -> bool:
    return len(set(values)) >= 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _spread(xs: list[float]) -> float:
    """How unequal ``xs`` are: their standard deviation over the mean of their sizes."""
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) / (sum(abs(x) for x in xs) / len(xs) or 1)


def step_beyond(values: list, high: bool, bound: float, declared: list | None = None):
    """The next value beyond a grid's highest (``high``) or lowest value, held at ``bound``;
    None when that edge is at or past the bound already. ``values`` is the grid tried so far,
    ``declared`` the grid as given (default: ``values``), whose own step continues: its mean
    ratio where its values are positive and more evenly spaced in ratio than in difference (a
    log-spaced lr grid), else its mean difference. 3 significant figures; whole numbers for a
    grid of whole numbers."""
    xs, given = sorted(set(values)), sorted(set(declared or values))
    edge, origin = (xs[-1], given[-1]) if high else (xs[0], given[0])
    if (edge >= bound) if high else (edge <= bound):
        return None
    k = 1 + sum((x > origin) if high else (x < origin) for x in xs)  # steps beyond the declared grid
    if given[0] > 0 and _spread([b / a for a, b in zip(given, given[1:])]) <= _spread([b - a for a, b in zip(given, given[1:])]):
        ratio = (given[-1] / given[0]) ** (1 / (len(given) - 1))
        new = origin * ratio**k if high else origin / ratio**k
    else:
        diff = (given[-1] - given[0]) / (len(given) - 1)
        new = origin + k * diff if high else origin - k * diff
    new = min(new, bound) if high else max(new, bound)
    new = round(new) if all(isinstance(v, int) for v in given) else float(f"{new:.3g}")
    return new if (new > edge if high else new < edge) else None


def _side(values: list, chosen) -> str | None:
    """``"high"`` or ``"low"`` when ``chosen`` lies at (or beyond) that edge of a numeric grid."""
    if not _numeric(values) or not isinstance(chosen, (int, float)):
        return None
    return "high" if chosen >= max(values) else "low" if chosen <= min(values) else None


def edges(grid: dict[str, list], setting: dict | None) -> list[str]:
    """The swept settings whose chosen value lies at an edge of their (numeric) grid."""
    return sorted(k for k, values in grid.items() if setting and _side(values, setting.get(k)))


def extend(grid: dict[str, list], setting: dict | None, bounds: dict[str, tuple],
           declared: dict[str, list] | None = None) -> dict[str, list]:
    """``{setting: [the value to add]}`` for each numeric setting whose chosen value lies at
    an edge of its grid (``grid``: what was tried; ``declared``: the grid as given, whose step
    continues) and has room before its bound (``bounds[key] = (low, high)``; a setting without
    bounds is not extended); empty when the choice is inside every grid."""
    out = {}
    for key in edges(grid, setting):
        if key in bounds:
            high = _side(grid[key], setting[key]) == "high"
            new = step_beyond(grid[key], high, bounds[key][1] if high else bounds[key][0], (declared or grid).get(key))
            if new is not None:
                out[key] = [new]
    return out


def choose(records: list[dict], keys: list[str]) -> tuple[dict | None, dict]:
    """The setting to keep from one (method, task)'s tuning records.

    ``keys`` are the swept settings. Returns ``(setting, evidence)``: the chosen values of
    ``keys`` (None when no tuning run finished ok) and, per setting tried, its mean dev score
    and dev loss over the tuning seeds that finished ok. The best mean dev score wins; the lower
    mean dev loss breaks ties and decides alone where the task has no dev score.
    """
    tried: dict[str, dict] = {}
    for r in records:
        setting = {k: (r.get("config") or {}).get("params", {}).get(k) for k in keys}
        entry = tried.setdefault(json.dumps(setting, sort_keys=True, default=str),
                                 {"setting": setting, "scores": [], "losses": [], "runs": 0, "ok": 0})
        entry["runs"] += 1
        if r.get("status") == "ok":
            m = r.get("metrics") or {}
            entry["ok"] += 1
            entry["scores"].append(m.get("dev_score"))
            entry["losses"].append(m.get("eval_loss"))
    for entry in tried.values():
        entry["dev_score"] = _mean(entry.pop("scores"))
        entry["dev_loss"] = _mean(entry.pop("losses"))
    usable = [e for e in tried.values() if e["ok"] and not (math.isnan(e["dev_score"]) and math.isnan(e["dev_loss"]))]
    if not usable:
        return None, {"settings": list(tried.values())}
    if any(not math.isnan(e["dev_score"]) for e in usable):
        best = max(usable, key=lambda e: (_finite(e["dev_score"], -math.inf), -_finite(e["dev_loss"], math.inf)))
        by = "dev score"
    else:
        best = min(usable, key=lambda e: _finite(e["dev_loss"], math.inf))
        by = "dev loss"
    return dict(best["setting"]), {"settings": list(tried.values()), "by": by}


def _mean(values) -> float:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(xs) / len(xs) if xs else math.nan


def _finite(x: float, fallback: float) -> float:
    return fallback if math.isnan(x) else x


#: the default lr grid: the method's default lr times these
LR_FACTORS = (0.1, 0.3, 1, 3, 10)


def tuning_grid(method: Method) -> dict[str, list]:
    """The values ``--sweep KEY`` tries for each of ``method``'s settings: what it declares in
    :attr:`Method.grid`, and for ``lr`` (unless declared) its default times :data:`LR_FACTORS`."""
    grid = {key: list(values) for key, values in (method.grid or {}).items()}
    if "lr" not in grid and "lr" in method.defaults:
        grid["lr"] = [float(f"{method.defaults['lr'] * f:.3g}") for f in LR_FACTORS]
    return grid


#: how far a sweep extends an lr grid whose best value is at its edge, unless the method says
LR_BOUNDS = (1e-6, 1.0)


def sweep_bounds(method: Method) -> dict[str, tuple]:
    """``{setting: (low, high)}``: how far a sweep may extend each of ``method``'s grids
    (:attr:`Method.bounds`, with :data:`LR_BOUNDS` for ``lr`` unless declared)."""
    return {"lr": LR_BOUNDS, **{k: tuple(v) for k, v in (method.bounds or {}).items()}}
