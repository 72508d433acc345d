"""General-ability retention: what a trained model kept of the base's answers on multiple-choice
benchmarks (C-Eval, CMMLU, or any task of lm-evaluation-harness), measured by the harness itself.

``--retention lm-eval:TASK[,TASK...]`` names harness tasks; ``--retention-include DIR`` adds task
configs in the harness's YAML format (a local copy of C-Eval or CMMLU: nothing is downloaded at
run time). The baseline cell scores the untouched base once per shootout (per base, with
``--quantize``), each final cell its trained model, in the cell, through the harness's own model
wrapper (``lm_eval.models.huggingface.HFLM``) over the model in memory: no export round-trip.

The record keeps, per harness task, the accuracy the harness reports and each question's
correctness (its ``acc`` sample), so the report compares methods question by question with the
paired tests of the task scores (:mod:`suite.report.significance`).

Only the harness's log-likelihood tasks are taken (``output_type`` ``multiple_choice`` with an
``acc`` metric): they score every method the same way, from the logits, whatever the answer
format the method learned. A method that prepends positions (prompt tuning) is scored on the
logits of the real positions (:class:`Aligned`), as the arena's own losses are.
"""
from __future__ import annotations

import contextlib
import difflib
import io
import logging
import sys
from pathlib import Path

import torch

from ..errors import UsageError
from ..progress import beat

NONE = "none"
HARNESS = "lm-eval"
#: the harness version the wrapper over an in-memory model is tested with (pyproject.toml's ``eval``
#: extra pins the same; tests/measures/test_retention.py checks the two agree and what depends on it)
PINNED = "0.4.13"
INSTALL = "pip install -e '.[eval]' in leitai's clone"
#: the task kinds retention takes: scored from the logits
OUTPUT_TYPES = ("multiple_choice",)


def parse(value: str) -> tuple[str, ...]:
    """``"lm-eval:a,b"`` -> ``("a", "b")``; ``"none"`` -> ``()``; a one-line UsageError otherwise."""
    text = str(value or NONE).strip()
    if text == NONE:
        return ()
    harness, sep, rest = text.partition(":")
    tasks = tuple(dict.fromkeys(t.strip() for t in rest.split(",") if t.strip()))
    if not sep or harness != HARNESS or not tasks:
        raise UsageError(f"--retention takes none or {HARNESS}:TASK[,TASK...] (lm-evaluation-harness task names), "
                         f"not {text!r}")
    return tasks


def require() -> str:
    """The installed harness's version; a one-line UsageError when it is missing or not the pinned one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("lm_eval")
    except PackageNotFoundError:
        raise UsageError(f"--retention needs lm-evaluation-harness (leitai[eval]), which is not installed: {INSTALL}") from None
    if installed != PINNED:
        raise UsageError(f"--retention is tested with lm-eval {PINNED}, and lm-eval {installed} is installed: {INSTALL}")
    return installed


@contextlib.contextmanager
def _quiet():
    """The harness's info and warning lines (one per task and call) off, and what it writes on
    stderr (datasets' and the harness's own bars: building requests, tokenizing, scoring, some
    without an option to turn them off) held back: shown only when the harness fails."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "evaluate")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def task_manager(tasks: tuple[str, ...], include: str = ""):
    """The harness's task index: the configs of ``include`` alone when they hold every task (indexing
    the harness's own thousands of configs takes seconds), else the harness's with them."""
    from lm_eval.tasks import TaskManager

    if include:
        manager = TaskManager(include_path=include, include_defaults=False)
        if all(t in manager.all_tasks for t in tasks):
            return manager
    return TaskManager(include_path=include or None)


def _leaves(tree) -> dict:
    """``{name: harness Task}`` of a task dict the harness built (groups hold their tasks)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value))
        else:
            out[key if isinstance(key, str) else value.config.task] = value
    return out


def check(value: str, include: str = "") -> dict[str, int]:
    """Before any cell: the harness installed at the pinned version, ``include`` a directory, every
    task known, of a kind retention takes, and its data loadable here (a local copy: nothing may be
    downloaded at run time). Returns each leaf task's number of questions; one-line UsageErrors."""
    tasks = parse(value)
    if not tasks:
        if include:
            raise UsageError("--retention-include is given without --retention lm-eval:TASK[,TASK...]")
        return {}
    require()
    if include and not Path(include).is_dir():
        raise UsageError(f"--retention-include {include}: no such directory (task configs in the harness's YAML format)")
    with _quiet():
        manager = task_manager(tasks, include)
        for name in tasks:
            if name not in manager.all_tasks:
                close = difflib.get_close_matches(name, manager.all_tasks, n=3)
                where = f" or in {include}" if include else " (give --retention-include DIR for your own task configs)"
                hint = f"; close: {', '.join(close)}" if close else ""
                raise UsageError(f"--retention: lm-eval {PINNED} knows no task {name!r}{where}{hint}")
        sizes = {}
        for name in tasks:
            leaves = _load(manager, name)
            for leaf, task in leaves.items():
                kind, metrics = task.config.output_type, [m.get("metric") for m in task.config.metric_list or []]
                if kind not in OUTPUT_TYPES or "acc" not in metrics:
                    raise UsageError(f"--retention: harness task {leaf!r} ({_where(manager, leaf)}) is a {kind} task "
                                     f"with metrics {metrics}; retention takes multiple_choice tasks with an acc metric")
                sizes[leaf] = len(task.eval_docs)
    return sizes


def _where(manager, name: str) -> str:
    """The YAML file a task comes from, as the harness indexed it."""
    entry = getattr(manager, "_index", {}).get(name)
    return str(getattr(entry, "yaml_path", None) or "the harness's own configs")


def _load(manager, name: str) -> dict:
    """Build ``name``'s tasks, data included; a one-line UsageError naming its config when that fails."""
    from lm_eval.tasks import get_task_dict

    try:
        return _leaves(get_task_dict([name], manager))
    except Exception as e:  # the harness raises what datasets raises: FileNotFoundError, a hub's offline error...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--retention: harness task {name!r} ({_where(manager, name)}) cannot load its data here: "
                         f"{type(e).__name__}: {first} (a local copy is needed: docs/after-the-shootout.md)") from None


class Aligned(torch.nn.Module):
    """The trained model as the harness's wrapper calls a transformers causal LM: ``model(ids).logits``
    with one row of logits per input position. A method that prepends positions (prefix keys,
    virtual tokens) returns extra leading rows; they are dropped, as the arena's own losses drop
    them. ``device`` and ``config`` are the model's; ``tie_weights`` leaves its weights alone."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model

    @property
    def config(self):
        return self.inner.config

    @property
    def device(self):
        return next(self.inner.parameters()).device

    def tie_weights(self):
        """The harness ties a model it is handed; a trained model's weights are not its to touch."""

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        beat("measuring retention")
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        return CausalLMOutput(logits=logits[:, -input_ids.shape[1]:])


@torch.inference_mode()
def measure(model: torch.nn.Module, tokenizer, value: str, include: str = "", batch_size: int = 32) -> dict:
    """Score ``model`` (in memory, on its device) on the harness tasks ``value`` names.

    Returns ``{"harness": "lm-eval 0.4.13", "tasks": {name: {"accuracy", "questions", "correct"}}}``:
    per leaf task, the harness's own ``acc`` and each question's correctness (0/1, in the order of
    the harness's document ids)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = parse(value)
    installed = require()
    was_training = model.training
    try:
        with _quiet():
            manager = task_manager(tasks, include)
            lm = HFLM(pretrained=Aligned(model), tokenizer=tokenizer, batch_size=batch_size)
            out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, log_samples=True,
                                          bootstrap_iters=0, verbosity="ERROR")
    finally:
        model.train(was_training)
    result = {}
    for name, samples in sorted(out["samples"].items()):
        samples = sorted(samples, key=lambda s: s["doc_id"])
        correct = [int(round(float(s["acc"]))) for s in samples]
        result[name] = {"accuracy": float(out["results"][name]["acc,none"]), "questions": len(correct),
                        "correct": correct}
    return {"harness": f"{HARNESS} {installed}", "tasks": result}


def pooled(retention: dict | None) -> float | None:
    """The share of every question of every task answered right (``None`` without retention)."""
    marks = [c for t in (retention or {}).get("tasks", {}).values() for c in t.get("correct", [])]
    return sum(marks) / len(marks) if marks else None
