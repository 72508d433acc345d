"""Where a shootout's settings come from: built-in defaults, then a TOML file, then the command
line. What the settings are is defined once, in :mod:`suite.config.settings`.

A TOML config uses the same names as the command-line flags (with ``_`` for ``-``), the chosen
executor's own options among them, and one table per method for its hyper-parameters::

    methods = ["lora", "full"]
    tasks = ["zh-sentiment"]
    seeds = 3
    max_steps = 200
    [method.lora]
    r = 8
    lr = 5e-4
"""
from __future__ import annotations

import re
from dataclasses import fields

import tomllib

from ..errors import UsageError
from ..models.quantize import parse as parse_quantize
from . import sweep
from .settings import DURATIONS, TOML_NAMES, ShootoutConfig, check, parse_checkpoint_every, parse_duration
from .variants import values as values_of


def parse_seeds(value, flag: str = "--seeds") -> list[int]:
    """``3`` means seeds 0, 1, 2; ``"1,5"`` or ``[1, 5]`` means exactly those."""
    try:
        if isinstance(value, int):
            seeds = list(range(value))
        elif isinstance(value, list):
            seeds = [int(v) for v in value]
        elif "," in str(value):
            seeds = [int(v) for v in str(value).split(",") if v.strip()]
        else:
            seeds = list(range(int(value)))
    except ValueError:
        raise UsageError(f"{flag} takes a count or a comma-separated list, not {value!r}") from None
    if not seeds:
        raise UsageError(f"{flag} must name at least one seed")
    return seeds


def parse_value(text: str):
    """A command-line value as TOML would read it (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(items: list[str]) -> dict:
    """``["lora.r=16", "full.lr=1e-5"]`` -> ``{"lora": {"r": 16}, "full": {"lr": 1e-5}}``."""
    out: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, setting = key.strip().rpartition(".")
        if not eq or not dot or not method or not setting:
            raise UsageError(f"--set takes METHOD.SETTING=VALUE, not {item!r}")
        out.setdefault(method, {})[setting] = parse_value(value.strip())
    return out


def parse_sweep(specs: list[str]) -> dict:
    """``["lr", "lora.r=4,16"]`` -> ``{"keys": ["lr"], "grids": {"lora": {"r": [4, 16]}}}``."""
    out = sweep.empty()
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip()
        if not eq:
            if not re.fullmatch(r"[A-Za-z_][\w-]*", key):
                raise UsageError(f"--sweep takes KEY (each method's declared grid) or METHOD.KEY=V1,V2,..., not {spec!r}")
            out["keys"].append(key)
            continue
        method, dot, setting = key.rpartition(".")
        items = [parse_value(v.strip()) for v in values.split(",") if v.strip()]
        if not dot or not method or not setting or not items:
            raise UsageError(f"--sweep takes KEY or METHOD.KEY=V1,V2,..., not {spec!r}")
        out["grids"].setdefault(method, {})[setting] = items
    return out


def sweep_from_toml(table, where: str) -> dict:
    """The ``[sweep]`` table of a TOML config: ``keys = [...]`` and ``[sweep.METHOD]`` grids."""
    if not isinstance(table, dict):
        raise UsageError(f"{where}: [sweep] must be a table (keys = [...], [sweep.METHOD] KEY = [values])")
    out = sweep.empty()
    for name, value in table.items():
        if name == "keys":
            if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
                raise UsageError(f"{where}: [sweep] keys must be a list of setting names")
            out["keys"] += value
        elif isinstance(value, dict) and all(isinstance(v, list) and v for v in value.values()):
            out["grids"][name] = {k: list(v) for k, v in value.items()}
        else:
            raise UsageError(f"{where}: [sweep.{name}] must map each setting to a non-empty list of values")
    return out


def load_toml(path: str, executor_options: frozenset = frozenset()) -> dict:
    """A TOML config's settings; ``executor_options`` are the option names executors add."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read config ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    overrides = data.pop("method", {})
    if "sweep" in data:
        data["sweep"] = sweep_from_toml(data["sweep"], path)
    unknown = set(data) - TOML_NAMES - executor_options
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise UsageError(f"{path}: [method.NAME] tables must hold the method's settings")
    data["method_overrides"] = overrides
    data["executor_options"] = {k: data.pop(k) for k in list(data) if k in executor_options}
    check(data, f"{path}: ")
    try:
        if "quantize" in data:
            parse_quantize(data["quantize"])
        for key, choices in DIMENSION_CHOICES.items():
            if key in data:
                parse_choices(data[key], choices, key)
    except UsageError as e:
        raise UsageError(f"{path}: {e}") from None
    return data


#: the settings that are a list of choices, each value a dimension of the shootout (suite.config.variants)
DIMENSION_CHOICES = {f.name: f.metadata["choices"] for f in fields(ShootoutConfig) if f.metadata["dimension"]}


def parse_choices(value, choices: tuple, flag: str) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``, each one of ``choices``; a one-line UsageError otherwise."""
    items = values_of(value)
    for v in items:
        if v not in choices:
            raise UsageError(f"{flag} takes {', '.join(choices[:-1])} or {choices[-1]} (or a comma-separated list of "
                             f"them), not {v!r}")
    if not items:
        raise UsageError(f"{flag} must name at least one of " + ", ".join(choices))
    return items


def _join_split_files(tasks):
    """``["file:train.jsonl", "dev=dev.jsonl", "test=test.jsonl", "zh-ner"]`` (a comma-separated
    ``--tasks``) -> ``["file:train.jsonl,dev=dev.jsonl,test=test.jsonl", "zh-ner"]``: a user's
    named split files belong to the file task before them."""
    if not isinstance(tasks, list):
        return tasks
    out = []
    for task in tasks:
        if re.match(r"(dev|test)=", str(task)) and out and str(out[-1]).startswith("file:"):
            out[-1] += "," + task
        else:
            out.append(task)
    return out


def build_config(cli: dict, config_file: str | None = None, executor_options: frozenset = frozenset()) -> ShootoutConfig:
    """Defaults < TOML file < command line (``cli`` holds only the flags the user gave, with
    the executor's own options under ``executor_options``)."""
    values: dict = {"method_overrides": {}, "executor_options": {}}
    if config_file:
        values.update(load_toml(config_file, executor_options))
    overrides, options = values.pop("method_overrides"), values.pop("executor_options")
    for method, settings in cli.pop("method_overrides", {}).items():
        overrides.setdefault(method, {}).update(settings)
    options.update(cli.pop("executor_options", {}))
    if "sweep" in cli:  # repeated --sweep specs, added to the file's
        cli["sweep"] = sweep.merge(values.get("sweep", sweep.empty()), parse_sweep(cli["sweep"]))
    check(cli)
    values.update(cli)
    for key in ("methods", "tasks"):
        if isinstance(values.get(key), str):
            values[key] = [v.strip() for v in values[key].split(",") if v.strip()]
    if "tasks" in values:
        values["tasks"] = _join_split_files(values["tasks"])
    if isinstance(values.get("replay"), list):  # TOML: replay = ["none", "zh-news-side:0.3"]
        values["replay"] = ",".join(map(str, values["replay"]))
    for key in ("seeds", "tune_seeds"):
        if key in values:
            values[key] = parse_seeds(values[key], "--" + key.replace("_", "-"))
    if "quantize" in values:  # one or a list: each a dimension of the shootout, like the seeds
        values["quantize"] = ",".join(parse_quantize(values["quantize"]))
    for key, choices in DIMENSION_CHOICES.items():  # likewise
        if key in values:
            values[key] = ",".join(parse_choices(values[key], choices, "--" + key.replace("_", "-")))
    if "checkpoint_every" in values:  # steps, or a duration
        values["checkpoint_every"] = str(values["checkpoint_every"])
        parse_checkpoint_every(values["checkpoint_every"])
    for key in DURATIONS:  # 90s, 20m, 2h (a TOML file may give a number of seconds)
        if key in values:
            values[key] = str(values[key])
            parse_duration(values[key], "--" + key.replace("_", "-"))
    if "task_size" in values:
        values["task_size"] = str(values["task_size"])
        if values["task_size"] not in ("default", "full") and not values["task_size"].isdigit():
            raise UsageError(f"--task-size takes default, full or a number, not {values['task_size']!r}")
    config = ShootoutConfig(**values, method_overrides=overrides, executor_options=options)
    if config.epochs and "max_steps" in values:
        raise UsageError("give --epochs or --max-steps, not both (one budget per shootout)")
    if config.keep == "best" and not config.eval_every:
        raise UsageError("--keep best needs --eval-every N: the dev evaluations to choose the best from")
    if config.shard != "none" and config.gpus_per_cell < 2:
        raise UsageError(f"--shard {config.shard} shards a cell over its processes: give --gpus-per-cell 2 or more")
    if config.shard != "none" and any(o != "adamw" for o in values_of(config.optimizer)):
        raise UsageError(f"--shard {config.shard} runs torch's AdamW only: bitsandbytes' 8-bit optimisers do not "
                         "take sharded (DTensor) parameters")
    return config
