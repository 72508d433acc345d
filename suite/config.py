"""A shootout's settings: built-in defaults, then a TOML file, then the command line.

A TOML config uses the same names as the command-line flags (with ``_`` for ``-``) and one
table per method for its hyper-parameters::

    methods = ["lora", "full"]
    tasks = ["zh-sentiment"]
    seeds = 3
    max_steps = 200
    [method.lora]
    r = 8
    lr = 5e-4
"""
from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from .errors import UsageError


@dataclass
class ShootoutConfig:
    methods: list[str] = field(default_factory=list)  # empty: the default ones; ["all"]: every registered one
    tasks: list[str] = field(default_factory=list)  # empty: the tasks marked for the default run
    model: str = ""  # empty: the model marked as default (tiny-zh)
    seeds: list[int] = field(default_factory=lambda: [0])
    max_steps: int = 150
    batch_size: int = 16
    max_len: int = 256
    task_size: str = "default"  # "default" (each task's CPU sizes), "full", or a train-split cap
    device: str = "auto"
    out: str = ""
    resume: bool = False
    trust_remote_code: bool = False
    warmup: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    eval_batch_size: int = 32
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    executor: str = "local"
    workers: int = 1
    devices: str = ""  # comma-separated GPU ids for the local executor
    gpus_per_cell: int = 1
    cpus_per_cell: int = 0  # 0: the executor's default
    ray_address: str = ""
    max_retries: int = 2
    side_corpus: str = ""  # empty: the registered default; "none": no forgetting measurement
    side_corpus_size: int = 128  # side-corpus texts forgetting is measured on
    infer_prompts: int = 8  # test prompts inference is timed on (0: not timed)
    infer_new_tokens: int = 16  # new tokens per timed generation
    method_overrides: dict = field(default_factory=dict)  # method -> {setting: value}

    def fill_defaults(self, registry) -> "ShootoutConfig":
        """Resolve the empty fields against what the plugins registered."""
        if not self.methods:  # the default shootout: the methods marked for it (Method.default)
            self.methods = sorted(n for n, m in registry.methods.items() if getattr(m, "default", True))
        elif self.methods == ["all"]:
            self.methods = sorted(registry.methods)
        if not self.tasks:
            self.tasks = sorted(n for n, t in registry.tasks.items() if getattr(t, "default", False))
        if not self.model:
            marked = [n for n, m in registry.models.items() if getattr(m, "default", False)]
            if not marked:
                raise UsageError("no default model is registered; pass --model")
            self.model = marked[0]
        if not self.side_corpus:
            marked = [n for n, c in registry.side_corpora.items() if getattr(c, "default", False)]
            self.side_corpus = marked[0] if marked else "none"
        elif self.side_corpus != "none" and self.side_corpus not in registry.side_corpora:
            known = ", ".join(sorted(registry.side_corpora)) or "none registered"
            raise UsageError(f"unknown side corpus {self.side_corpus!r} (known: {known}; or none)")
        if not self.out:
            self.out = str(Path("reports") / time.strftime("%Y%m%d-%H%M%S"))
        if not self.methods or not self.tasks:
            raise UsageError("nothing to run: no methods or no tasks are registered")
        return self

    def sizes_for(self, task) -> dict | None:
        """Per-split caps for ``task`` (``None``: the whole task)."""
        if self.task_size == "default":
            return dict(task.default_sizes)
        if self.task_size == "full":
            return None
        n = int(self.task_size)
        base = task.default_sizes
        return {s: max(1, round(v * n / base["train"])) if s != "train" else n for s, v in base.items()}


SCALARS = {f.name for f in fields(ShootoutConfig)} - {"method_overrides"}


def parse_seeds(value) -> list[int]:
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
        raise UsageError(f"--seeds takes a count or a comma-separated list, not {value!r}") from None
    if not seeds:
        raise UsageError("--seeds must name at least one seed")
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


def load_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read config ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    overrides = data.pop("method", {})
    unknown = set(data) - SCALARS
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise UsageError(f"{path}: [method.NAME] tables must hold the method's settings")
    data["method_overrides"] = overrides
    return data


def build_config(cli: dict, config_file: str | None = None) -> ShootoutConfig:
    """Defaults < TOML file < command line (``cli`` holds only the flags the user gave)."""
    values: dict = {"method_overrides": {}}
    if config_file:
        values.update(load_toml(config_file))
    overrides = values.pop("method_overrides")
    for method, settings in cli.pop("method_overrides", {}).items():
        overrides.setdefault(method, {}).update(settings)
    values.update(cli)
    for key in ("methods", "tasks"):
        if isinstance(values.get(key), str):
            values[key] = [v.strip() for v in values[key].split(",") if v.strip()]
    if "seeds" in values:
        values["seeds"] = parse_seeds(values["seeds"])
    if "task_size" in values:
        values["task_size"] = str(values["task_size"])
        if values["task_size"] not in ("default", "full") and not values["task_size"].isdigit():
            raise UsageError(f"--task-size takes default, full or a number, not {values['task_size']!r}")
    if values.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device takes auto, cpu or cuda, not {values['device']!r}")
    for key in ("side_corpus_size", "infer_prompts", "infer_new_tokens"):
        if key in values and (not isinstance(values[key], int) or values[key] < 0):
            raise UsageError(f"{key.replace('_', '-')} must be a whole number >= 0, not {values[key]!r}")
    for key in ("max_steps", "batch_size", "max_len", "workers", "gpus_per_cell"):
        if key in values and (not isinstance(values[key], int) or values[key] < 1):
            raise UsageError(f"{key.replace('_', '-')} must be a positive whole number, not {values[key]!r}")
    return ShootoutConfig(**values, method_overrides=overrides)
