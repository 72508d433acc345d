"""Every setting of a shootout, defined once.

:class:`RunSettings` holds what every cell runs with; :class:`ShootoutConfig` adds what the
shootout as a whole needs (which methods, tasks and seeds, where to write, where cells run).
Everything else is derived from these two definitions: the ``leitai run`` flags and their help
(:func:`add_arguments`), the names a TOML config accepts, the checks on values
(:func:`check`), the fields of a :class:`suite.cell.spec.Cell` (which extends ``RunSettings``), the
record's ``config`` and :data:`FAIR_SETTINGS`, the list that both ``--resume`` and the report
compare. Adding a setting is one field here, with its help, and its use.
"""
from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from ..data import replay
from ..errors import UsageError
from . import variants


def setting(default, help: str, *, fair: bool = False, minimum: float | None = None, choices: tuple = (),
            flag: bool = True, metavar: str | None = None, default_text: str | None = None, repeat: bool = False,
            dimension: bool = False):
    """A settings field. ``help`` is the flag's help text (its default is appended);
    ``fair``: runs of one task must agree on it for their comparison to be fair (``--resume``
    refuses a finished cell that differs, the report warns); ``minimum``/``choices``: what
    :func:`check` accepts; ``flag``: whether ``leitai run`` has a flag for it (else only a TOML
    config or a dedicated option sets it); ``repeat``: the flag may be given several times;
    ``dimension``: a comma-separated list of ``choices`` runs every method at each (a dimension of
    the shootout, :mod:`suite.config.variants`)."""
    meta = {"help": help, "fair": fair, "minimum": minimum, "choices": choices, "flag": flag,
            "metavar": metavar, "default_text": default_text, "repeat": repeat, "dimension": dimension}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(kw_only=True)
class RunSettings:
    """The settings every cell of a shootout runs with; each cell's record stores them."""

    model: str = setting("", "tiny-zh or a Hugging Face model id / local path", fair=True,
                         default_text="the registered default model, tiny-zh")
    max_steps: int = setting(150, "training steps per run (optimiser steps; see --epochs)", fair=True, minimum=1)
    epochs: float = setting(0, "train for this many passes over the train split instead of --max-steps: the steps "
                            "are computed from the split's size and the step's batch, and recorded (0: use "
                            "--max-steps)", fair=True, minimum=0)
    batch_size: int = setting(16, "examples per micro-batch: what is in memory at once (a step's batch is this "
                              "times --grad-accum)", fair=True, minimum=1)
    grad_accum: int = setting(1, "micro-batches per optimiser step (gradient accumulation): a step's batch is "
                              "--batch-size x this, with the loss, gradients and schedule of one batch that size and "
                              "the memory of one micro-batch", fair=True, minimum=1)
    max_len: int = setting(256, "tokens per example at most", fair=True, minimum=1)
    warmup: float = setting(0.1, "fraction of the steps the learning rate warms up over", fair=True, minimum=0)
    weight_decay: float = setting(0.0, "AdamW weight decay", fair=True, minimum=0)
    grad_clip: float = setting(1.0, "gradient norm clipping (0: none)", fair=True, minimum=0)
    loss_turns: str = setting("all", "which assistant turns of a conversation carry the training loss: all, or "
                              "the last only (as ChatGLM's P-tuning script trains)", fair=True, choices=("all", "last"))
    gradient_checkpointing: bool = setting(
        False, "recompute activations in backward: less memory, more time per step (measured: docs/benchmarks.md, "
        "Throughput)", fair=True)
    device: str = setting("auto", "where cells train", choices=("auto", "cpu", "cuda"))
    dtype: str = setting("auto", "the dtype the base model's weights load in (auto: float32 on the CPU, bfloat16 on "
                         "CUDA); trainable parameters stay float32", fair=True,
                         choices=("auto", "float32", "bfloat16", "float16"))
    quantize: str = setting("none", "load the base model's linear layers in 4 or 8 bits (bitsandbytes, QLoRA's "
                            "recipe; needs leitai[quantize]): none, nf4, fp4 or int8; a comma-separated list runs "
                            "every method on each (see docs/quantize.md)", fair=True, metavar="none|nf4|fp4|int8")
    trainable_dtype: str = setting("float32", "the dtype of what trains, its gradients and its optimiser state: "
                                   "float32, or bfloat16 (\"pure bf16\", under bf16 autocast; small updates can round "
                                   "away, docs/real-models.md); a comma-separated list runs every method at each",
                                   fair=True, choices=("float32", "bfloat16"), dimension=True)
    optimizer: str = setting("adamw", "AdamW in torch's float32 state, or bitsandbytes' 8-bit AdamW (adamw8bit; "
                             "paged-adamw8bit pages its state to the CPU on CUDA; needs leitai[quantize]); a "
                             "comma-separated list runs every method with each", fair=True,
                             choices=("adamw", "adamw8bit", "paged-adamw8bit"), dimension=True)
    shard: str = setting("none", "with --gpus-per-cell N: none (data parallel, every process holds the whole model) "
                         "or fsdp (PyTorch FSDP2: parameters, gradients and optimiser state sharded over the N "
                         "processes, one unit per decoder layer)", choices=("none", "fsdp"))
    trust_remote_code: bool = setting(False, "allow a hub model's own code to run")
    log_every: int = setting(10, "steps between reading the loss back from the device", minimum=1)
    eval_batch_size: int = setting(32, "examples per batch for dev loss and generation", minimum=1)
    eval_every: int = setting(0, "also evaluate on the dev split every N steps (dev loss and dev score: the curve "
                              "in curves.csv and the report; its seconds are kept apart from training's); 0: at the "
                              "end only", minimum=0)
    keep: str = setting("last", "the parameters the test split and the after-use measures see: the last step's, or "
                        "those of the best dev evaluation (best needs --eval-every)", fair=True,
                        choices=("last", "best"))
    prompt_format: str = setting("auto", "how single-turn examples are put to the model: plain (an instruction "
                                 "prompt), chat (the tokenizer's chat template, loss on the assistant's part), or "
                                 "auto: chat when the model has a chat template of its own", fair=True,
                                 choices=("auto", "plain", "chat"))
    attn_implementation: str = setting("auto", "the attention kernel transformers runs: auto (transformers' "
                                       "default for the model), sdpa, eager or flash_attention_2; the record names "
                                       "the one that ran", choices=("auto", "sdpa", "eager", "flash_attention_2"))
    side_corpus: str = setting("", "text forgetting is measured on: a registered side corpus, or none", fair=True,
                               default_text="the registered default, zh-news-side")
    side_corpus_size: int = setting(128, "side-corpus texts to measure forgetting on", fair=True, minimum=0)
    replay: str = setting("none", "mix general text into training against forgetting: SOURCE (a side corpus or a "
                          "text/JSONL file) and the share of each batch's sequences drawn from it; a comma-separated "
                          "list runs every method at each setting (docs/replay.md)", fair=True,
                          metavar="none|SOURCE:FRACTION[,...]")
    retention: str = setting("none", "general-ability retention: score the base model once and each final run's "
                             "trained model on lm-evaluation-harness multiple-choice tasks (C-Eval, CMMLU or your own, "
                             "from a local copy), in the cell; needs leitai[eval] (docs/after-the-shootout.md)",
                             fair=True, metavar="none|lm-eval:TASK[,TASK...]")
    retention_include: str = setting("", "a directory of harness task configs (YAML) that --retention's tasks may "
                                     "come from, e.g. for a local copy of C-Eval or CMMLU", fair=True, metavar="DIR",
                                     default_text="the harness's own task configs only")
    infer_prompts: int = setting(8, "test prompts to time inference on, per run (0: no timing)", fair=True, minimum=0)
    infer_new_tokens: int = setting(16, "new tokens per timed generation", fair=True, minimum=0)
    stall_timeout: str = setting("30m", "end a cell that reports no progress (a training step, an evaluation batch, "
                                 "a new phase) for this long, with every process it started, record it timeout with "
                                 "the step it reached, and go on: e.g. 90s, 20m, 2h; 0 or none: never (docs/faults.md)",
                                 metavar="DURATION")
    checkpoint_every: str = setting("30m", "write a checkpoint inside the cell every N steps (e.g. 50) or every "
                                    "DURATION of training (e.g. 30m, 2h), keeping the last one: --resume continues a "
                                    "cell that was killed or timed out from it; none: never (docs/faults.md)",
                                    metavar="STEPS|DURATION")
    cell_timeout: str = setting("none", "end a cell that runs longer than this in all, with every process it started "
                                "(a distributed cell's ranks too), record it timeout with the step it reached, and go "
                                "on: e.g. 20s, 45m, 6h; none (or 0): no limit (docs/faults.md)", metavar="DURATION")


@dataclass(kw_only=True)
class ShootoutConfig(RunSettings):
    """A whole shootout: the cells' settings plus what decides which cells run and where."""

    methods: list = setting([], "comma-separated method names, peft:PATH for your own PEFT config, or all "
                            "(every installed method)", metavar="A,B",
                            default_text="the methods marked default: one per family")
    tasks: list = setting([], "comma-separated task names, or file:PATH[?score=NAME] for your own data",
                          metavar="X,Y", default_text="the tasks marked default: zh-sentiment")
    seeds: list = setting([0], "number of seeds (0..N-1) or a comma-separated list", metavar="N|A,B",
                          default_text="1")
    task_size: str = setting("default", "default (each task's CPU-sized splits), full, or a number of "
                             "training examples", metavar="SIZE")
    out: str = setting("", "output directory", metavar="DIR", default_text="reports/<timestamp>")
    resume: bool = setting(False, "skip runs already finished in --out; a cell that did not finish goes on from its "
                           "last checkpoint (--checkpoint-every)")
    executor: str = setting("", "where cells run: local, ray, or a plugin's", default_text="local")
    gpus_per_cell: int = setting(1, "processes per cell, one GPU each (on a CPU, processes over gloo); more than 1 "
                                 "runs the cell under torch's distributed launch, data parallel or sharded (--shard)",
                                 minimum=1)
    cold_start: bool = setting(False, "start every cell in a fresh Python process, importing torch and the rest "
                               "each time, instead of forking it from a warm-start server (docs/warm-start.md); "
                               "also LEITAI_COLD_START=1")
    cpus_per_cell: int = setting(0, "CPU threads per cell (0: the executor's default: local cores / workers, "
                                 "ray 1)", minimum=0)
    sweep: dict = setting({"keys": [], "grids": {}}, "tune before the final runs: KEY sweeps each method's declared "
                          "grid for that setting (e.g. lr), METHOD.KEY=V1,V2,... an explicit grid; repeatable "
                          "(TOML: [sweep] keys = [...] and [sweep.METHOD] tables)", metavar="SPEC", repeat=True,
                          default_text="no sweep")
    tune_seeds: list = setting([0], "seeds the tuning runs train with: a count or a comma-separated list",
                               metavar="N|A,B", default_text="1")
    memory: str = setting("", "memory budget per GPU (per process of a cell), e.g. 24GiB or 80GB: leitai run "
                          "refuses (exit status 2), before anything runs, a shootout with a cell whose predicted peak "
                          "would not fit it; leitai plan marks the methods that would not and the largest batch that "
                          "would (docs/plan.md)", metavar="SIZE", default_text="no check")
    baselines: bool = setting(True, "also evaluate the untrained base model and the task's trivial baseline "
                              "(majority label, copy the input or empty answer) on every task")
    #: method -> {setting: value}, from ``--set`` and ``[method.NAME]`` tables
    method_overrides: dict = setting({}, "", flag=False)
    #: the chosen executor's own options (``Executor.add_arguments``), from its flags or the TOML file
    executor_options: dict = setting({}, "", flag=False)

    def fill_defaults(self, registry) -> ShootoutConfig:
        """Resolve the empty fields against what the plugins registered."""
        if not self.methods:  # the default shootout: the methods marked for it (Method.default)
            self.methods = registry.in_default_run("methods")
        elif self.methods == ["all"]:
            self.methods = sorted(registry.methods)
        if not self.tasks:
            self.tasks = registry.in_default_run("tasks")
        self.model = self.model or registry.default("models")
        self.executor = self.executor or registry.default("executors")
        registry.get("executors", self.executor)
        if not self.side_corpus:
            self.side_corpus = registry.default("side_corpora", none="none")
        elif self.side_corpus != "none":
            registry.get("side_corpora", self.side_corpus, hint="or none")
        self.replay = replay.resolve(variants.values(self.replay), self, registry)  # checked and normalised; a list is a dimension
        if self.retention_include:  # cells may start elsewhere (another working directory, a Ray worker)
            self.retention_include = str(Path(self.retention_include).expanduser().resolve())
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

    def run_settings(self) -> dict:
        """The :class:`RunSettings` part, as keyword arguments for a cell."""
        return {f.name: getattr(self, f.name) for f in fields(RunSettings)}


#: settings that runs of one task must share for a fair comparison: ``--resume`` refuses a
#: finished cell that differs in one (or in its method's params), the report warns about them
FAIR_SETTINGS = ("task_sizes",) + tuple(f.name for f in fields(RunSettings) if f.metadata["fair"])
#: the names a TOML config may set at its top level (besides the executor's own options)
TOML_NAMES = frozenset(f.name for f in fields(ShootoutConfig) if f.metadata["flag"])


_SECONDS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}


#: the settings that are durations (:func:`parse_duration`), each checked before any cell runs
DURATIONS = ("stall_timeout", "cell_timeout")


def parse_duration(text, what: str = "--stall-timeout") -> float:
    """``90s``, ``20m``, ``2h`` or a number of seconds; ``0`` or ``none`` is none (0.0). A one-line
    :class:`UsageError` otherwise."""
    if str(text).strip().lower() == "none":
        return 0.0
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _SECONDS:
        raise UsageError(f"{what}: cannot read {text!r} as a duration (e.g. 90s, 20m, 2h, or none)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def parse_checkpoint_every(text) -> tuple[int, float]:
    """``--checkpoint-every``: a number of steps (``50``), or a duration of training (``30m``,
    :func:`parse_duration`); ``none`` or ``0``: never. Returns ``(steps, seconds)``, one of them 0."""
    text = str(text).strip().lower()
    if text.isdigit():
        return int(text), 0.0
    return 0, parse_duration(text, "--checkpoint-every")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, only: tuple = ()) -> None:
    """One flag per setting, defaults suppressed (only the flags a user gives override the TOML
    config and the defaults), help with the default: first what decides the cells, then how
    each cell trains. ``only``: these settings alone (``leitai plan`` takes a few)."""
    run = {f.name for f in fields(RunSettings)}
    ordered = [f for f in fields(ShootoutConfig) if f.name not in run] + list(fields(RunSettings))
    for f in ordered:
        meta = f.metadata
        if not meta["flag"] or (only and f.name not in only):
            continue
        shown = meta["default_text"] or (None if f.default is MISSING or f.default == "" or f.default is False else f.default)
        help = meta["help"] + (f" (default: {shown})" if shown is not None else "")
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": help}
        if f.type == "bool":
            kwargs["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
        elif meta["repeat"]:
            kwargs.update(action="append", metavar=meta["metavar"])
        else:
            kwargs["type"] = {"int": int, "float": float}.get(f.type, str)
            kwargs["metavar"] = meta["metavar"] or ("|".join(meta["choices"]) if meta["choices"]
                                                    else {"int": "N", "float": "X"}.get(f.type, "NAME"))
        parser.add_argument(flag(f.name), **kwargs)


def check(values: dict, where: str = "") -> None:
    """Check the values of known settings (as given on the command line or in a TOML file)
    against their types, minimums and choices; raise a one-line :class:`UsageError`."""
    by_name = {f.name: f for f in fields(ShootoutConfig)}
    for name, value in values.items():
        f = by_name.get(name)
        if f is None or not f.metadata["flag"]:
            continue
        meta, what = f.metadata, f"{where}{flag(name)}"
        if f.type == "bool" and not isinstance(value, bool):
            raise UsageError(f"{what} takes true or false, not {value!r}")
        if f.type in ("int", "float"):
            whole = f.type == "int"
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) \
                    or not math.isfinite(value) or (meta["minimum"] is not None and value < meta["minimum"]):
                raise UsageError(f"{what} must be {_kind(whole, meta['minimum'])}, not {value!r}")
        if meta["choices"] and not meta["dimension"] and value not in meta["choices"]:  # a dimension's: each value
            raise UsageError(f"{what} takes {', '.join(meta['choices'][:-1])} or {meta['choices'][-1]}, not {value!r}")


def _kind(whole: bool, minimum) -> str:
    noun = "whole number" if whole else "number"
    if minimum == 1 and whole:
        return f"a positive {noun}"
    return f"a {noun}" + (f" >= {minimum:g}" if minimum is not None else "")
