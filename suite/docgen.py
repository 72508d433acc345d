"""The reference parts of the docs (``docs/``), generated from the code so they cannot drift.

``python -m suite.docgen`` rewrites every region of the docs that sits between
``<!-- begin generated: NAME ... -->`` and ``<!-- end generated: NAME -->``;
``python -m suite.docgen --check`` changes nothing and exits 1, naming the regions, when a
file differs from what the code gives (``tests/test_docs.py`` runs the same comparison). The
prose around the regions is written by hand. The regions, and the page each lives in
(:data:`FILES`):

``hooks``      every hook in :mod:`suite.hookspecs`, with its docstring (``docs/plugins/index.md``)
``api``        the plugin-facing API: what :mod:`suite` exports, and the helpers the guide names
               (:data:`HELPERS`), with signatures, attributes and the docstrings' first paragraphs
               (``docs/api.md``)
``scorers``    :data:`suite.scoring.SCORERS` and the other scorers of :mod:`suite.scoring`
               (``docs/plugins/tasks.md``)
``columns``    the columns of ``results.csv``: the output contract's, the known extras, and the
               further measurements a run may add, each described in :data:`COLUMNS`
               (``docs/records.md``)
``methods``    every method leitai ships, with its defaults (``docs/methods.md``)
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
from pathlib import Path

#: the docs, when leitai runs from its source tree (``pip install -e``)
DOCS = Path(__file__).resolve().parent.parent / "docs"
COMMAND = "python -m suite.docgen"

#: the helpers of the plugin API beyond what :mod:`suite` exports, by module, as the guide names them
HELPERS = {
    "suite.tasks": ["assign_splits", "take", "take_short", "split_of", "normalise", "score_answers"],
    "suite.models": ["resolve"],
    "suite.plugins": ["registry", "Registry"],
    "suite.testing": ["check_method", "check_plugin_import", "ConformanceReport", "CheckResult", "ConformanceError", "tiny_model",
                      "tiny_config", "ARCHITECTURES", "ALL_ARCHITECTURES"],
    "suite.architecture": ["find", "Architecture", "Geometry", "LayerMaps", "attention_targets", "linear_modules",
                           "linear_shape", "weight_matrix", "kv_cache_shape", "ArchitectureError"],
    "suite.layout": ["probe", "Layout", "layer_weights"],
}
#: what to say about an entry that has no docstring of its own (its docstring wins once it has one)
NOTES = {
    "suite.hookimpl": 'pluggy\'s `HookimplMarker("leitai")`: decorate each hook implementation with `@hookimpl`.',
}

# ------------------------------------------------------------------ the columns of results.csv

#: the meaning of every column of ``results.csv`` (and ``results.parquet``) a core run writes
COLUMNS = {
    # the output contract (suite.report.RESULT_COLUMNS)
    "run_id": "the run's id, `<task>__<method>__s<seed>` (a tuning run's adds its setting: "
              "`<task>__<method>__tune-lr1e-03__s0`; a `--replay` run's its replay setting after the method: "
              "`<task>__<method>__replay-zh-news-side-0.3__s0`; a run on a quantized base its kind: "
              "`<task>__<method>__nf4__s0`); its files are in `runs/<run_id>/`",
    "method": "the method's name (`--methods`), with its `--replay` setting when it has one: `full + replay 0.3`, "
              "and on a quantized base ` @ ` and the kind: `lora @ nf4` (the name the tables and paired tests use; "
              "the method alone is `plain_method`)",
    "task": "the task's name (`--tasks`)",
    "seed": "the run's seed (every RNG; the batch order too)",
    "model": "the base model (`--model`)",
    "status": "`ok`, `failed` (the reason in `error`), `oom` (out of memory) or `diverged` (a non-finite training loss)",
    "error": "why the run did not finish `ok`: the exception's type and the first line of its message",
    "trainable_params": "parameters with `requires_grad` after the method was applied, tied tensors once, counted by "
                        "the core; recorded for a cell the run-time guard fails too",
    "total_params": "the base model's parameters, counted by the core before the method is applied (a packed 4-bit "
                    "weight by the weights it holds, as its quantization state records its shape)",
    "trainable_pct": "100 × trainable_params / total_params: a percentage (0.29 means 0.29 %, not 29 %)",
    "adapter_bytes": "bytes on disk of what `Method.save` wrote (`runs/<run_id>/adapter/`)",
    "peak_memory_bytes": "peak memory of the training loop: `max_memory_allocated` on CUDA; on CPU the cell "
                         "process's peak RSS during training minus its RSS just before (`memory_kind` says which)",
    "memory_kind": "what `peak_memory_bytes` measured: `cuda_max_allocated` or `cpu_peak_rss_delta`",
    "train_seconds": "wall seconds of the training steps",
    "train_tokens": "non-padding tokens the training steps processed",
    "tokens_per_second": "train_tokens / train_seconds",
    "first_train_loss": "the training loss of the first step",
    "final_train_loss": "the mean training loss of the last 10% of the steps",
    "eval_loss": "the **dev loss**: the trained model's cross-entropy per answer token on the dev split "
                 "(token-weighted, from the logits); the reports call it \"dev loss\"",
    "score_name": "the task's metric (`Task.score_name`), e.g. `accuracy`",
    "score": "the task's score (`Task.score`) of the greedy answers on the test split; on the dev split for "
             "tuning runs, which leave it empty and fill `dev_score`",
    # the known extras (suite.report.frames.EXTRA_COLUMNS)
    "phase": "`final` (scored on test) or `tune` (a `--sweep` setting, scored on dev)",
    "dev_score": "a tuning run's score on the dev split",
    "choice_accuracy": "classification tasks (`Task.choices`): the share of test examples whose reference is the "
                       "choice the model gives the highest likelihood",
    "class_prior_loss": "classification tasks: the loss per answer token of a model that knows the answer format "
                        "and each label's training frequency but not the input (compare with `eval_loss`)",
    "probe_score": "classification tasks: the linear-probe baseline's score on the task's test split (a logistic "
                   "regression on the frozen base's last hidden state at the answer position, fitted on the train "
                   "split; `baselines.csv` row `linear probe`), beside the run's own `score`",
    "format_share": "the share of the run's greedy test answers that are non-empty and, for a task with a closed "
                    "answer set, one of its answers",
    "format_learned": "`format_share` ≥ 0.5: the run learned the answer format",
    "still_learning": "the training loss was still falling over the last 20% of the steps: `tail_slope` < 0 at "
                      "one-sided p < 0.05, and a fitted fall over that tail of at least 2% of its mean loss",
    "tail_slope": "least-squares slope of the training loss against the step over the last 20% of the steps",
    "tail_slope_p": "one-sided p-value (Student's t) that `tail_slope` is negative",
    "prepended_positions": "positions the method puts before the prompt (prefix keys, virtual tokens), counted "
                           "from the model's outputs; empty for a method that prepends nothing",
    "prepended_attention_share": "the share of the last prompt position's attention that lands on the prepended "
                                 "positions (mean over layers, heads and 8 test prompts; `suite/attention.py`): "
                                 "near 0 where the base looks past them",
    "prepended_uniform_share": "the share a uniform attention would give the prepended positions, to compare with "
                               "`prepended_attention_share`",
    "peak_memory_reserved_bytes": "on CUDA, the allocator's peak reserved bytes (empty on CPU)",
    "predicted_peak_bytes": "`leitai plan`'s prediction of `peak_memory_bytes` from the model's config alone, at the "
                            "cell's first batch, on the same basis (CPU: without the weights); empty where it could "
                            "not be made, in tuning runs, on a quantized base and with replay (docs/plan.md)",
    "weights_bytes": "bytes of the model's parameters (unique storages); on a quantized base the packed weights "
                     "and their quantization state (block and row scales)",
    "grads_bytes": "bytes of the gradients of one step",
    "optimizer_bytes": "bytes of the optimiser's state",
    "activation_bytes": "bytes autograd holds for backward at the end of one step's forward (unique storages, parameters excluded)",
    "steps": "optimiser steps taken",
    "lr": "the learning rate the run used (`params[\"lr\"]`)",
    "truncated_examples": "training examples cut to `--max-len`",
    "forgetting_before": "the untouched base model's cross-entropy per token (nats) on the side corpus",
    "forgetting_after": "the trained model's cross-entropy on the same tokens",
    "forgetting": "forgetting_after − forgetting_before (higher: more of the base's language lost)",
    "infer_ms_per_token": "greedy decoding latency per new token of the trained model (ms)",
    "infer_ms_per_token_base": "the same for a freshly loaded base model, timed in the same process",
    "infer_ms_per_token_merged": "the same for the merged model (`mergeable` methods only)",
    "infer_overhead": "infer_ms_per_token / infer_ms_per_token_base",
    "infer_overhead_merged": "infer_ms_per_token_merged / infer_ms_per_token_base",
    "device": "`cpu` or `cuda`",
    "device_name": "the CPU's or GPU's name",
    "dtype": "the base weights' dtype and any autocast, e.g. `float32`, `bfloat16 + bf16 autocast` (`--dtype`)",
    "quantize": "the base's quantization (`--quantize`): `none`, `nf4`, `fp4` or `int8`",
    "weights_dtype": "the dtype of the base model's parameters as loaded, measured (`+`-joined when several; "
                     "quantized layers by their kind, read from the layers: `float32+nf4`)",
    "trainable_dtype": "the dtype of what trains, measured after the core's cast to float32",
    "method_info": "what ran, as the method reported it (`Method.run_info`), as JSON text",
    "plain_method": "the method's own name, without a `--replay` or `--quantize` label",
    "replay": "the run's `--replay` setting: `none`, or `SOURCE:FRACTION` (docs/replay.md)",
    # further measurements, passed through by name
    "answer_head": "whether the output head ran only at the answer positions (else on full logits)",
    "data_seconds": "seconds to load and tokenise the task (or read it from the cache)",
    "data_cached": "whether the tokenised task came from the cache",
    "train_examples": "training examples the run used",
    "dev_examples": "dev examples the run used",
    "test_examples": "test examples the run used (test answers of a conversation task: one per assistant turn)",
    "max_new_tokens": "the generation limit of the run's answers",
    "truncated_eval_examples": "dev and test examples cut to `--max-len`",
    "forgetting_view_before": "the side-corpus loss of the model with the method switched off (`Method.base_view`), "
                              "before training",
    "forgetting_view_after": "the same, after training",
    "infer_prefill_tokens_per_second": "prompt tokens per second of the trained model",
    "infer_prefill_tokens_per_second_base": "the same for the base model",
    "infer_prefill_tokens_per_second_merged": "the same for the merged model",
    "merge_max_logit_diff": "the largest difference between merged and unmerged logits on the timed prompts",
    "final_replay_loss": "`--replay` runs: the mean replay loss (LM loss per replay token) of the last 10% of "
                         "the steps; the curve's `replay` split has every step's",
    "replay_texts": "`--replay` runs: the distinct replay texts the steps drew from",
    "task_examples_per_step": "`--replay` runs: task examples in each batch (the batch size less the replay sequences)",
    "replay_sequences_per_step": "`--replay` runs: replay sequences in each batch",
    "infer_merged_not_applicable": "on a quantized base, why there are no merged figures: peft cannot merge into "
                                   "the layer, or merging re-quantizes the weights and changes the logits",
    "peak_memory_per_device": "a distributed cell's peak memory on each device (JSON list)",
    "processes": "a distributed cell's process count",
}
#: further columns named by pattern: what the run's task adds
COLUMN_PATTERNS = {
    r"score_turn\d+": "`score_turn1`, `score_turn2`, …: conversation tasks: the score of each assistant turn",
}


def undocumented_columns(columns) -> list[str]:
    """The columns of ``columns`` (of a real ``results.csv``) that :data:`COLUMNS` and
    :data:`COLUMN_PATTERNS` do not describe: a task's own metrics (``Task.metrics``) are not
    the core's to describe, so pass ``columns`` without them."""
    return [c for c in columns if c not in COLUMNS and not any(re.fullmatch(p, c) for p in COLUMN_PATTERNS)]


def columns_region() -> str:
    from .report.frames import EXTRA_COLUMNS, RESULT_COLUMNS

    missing = [c for c in (*RESULT_COLUMNS, *EXTRA_COLUMNS) if c not in COLUMNS]
    if missing:
        raise KeyError(f"results.csv column(s) {', '.join(missing)} have no description in suite.docgen.COLUMNS")
    further = [c for c in COLUMNS if c not in RESULT_COLUMNS and c not in EXTRA_COLUMNS]
    lines = ["| column | meaning |", "|---|---|"]
    for group, names in (("the output contract, in this order", RESULT_COLUMNS),
                         ("then these, in this order", EXTRA_COLUMNS),
                         ("then any other measurement of the run, sorted by name; the core's are", further)):
        lines.append(f"| *{group}* | |")
        lines += [f"| `{c}` | {_cell(COLUMNS[c])} |" for c in names]
    lines += [f"| {_cell(text.split(': ', 1)[0])} | {_cell(text.split(': ', 1)[1])} |" for text in COLUMN_PATTERNS.values()]
    lines.append("| a task's own metrics | what `Task.metrics` returns, e.g. zh-idiom's `bleu4` |")
    return "\n".join(lines)


# ------------------------------------------------------------------ rendering helpers

_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc):`(~?)([^`]+)`")


def markdown(text: str) -> str:
    """A reST docstring fragment as Markdown: ``x`` and :role:`x` become `x` (``~a.b`` as `b`)."""
    text = _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
    return text.replace("``", "`")


def paragraphs(obj) -> list[str]:
    """The paragraphs of ``obj``'s own docstring (not inherited), each on one line, as Markdown."""
    if isinstance(obj, type):
        doc = vars(obj).get("__doc__") or ""
        if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):  # made up by @dataclass
            doc = ""
        doc = inspect.cleandoc(doc)
    else:
        doc = inspect.getdoc(obj)
    return [markdown(" ".join(p.split())) for p in (doc or "").split("\n\n") if p.strip()]


def first_paragraph(obj) -> str:
    found = paragraphs(obj)
    return found[0] if found else ""


class _Annotation(str):
    """An annotation string that ``inspect`` shows bare (the code uses ``from __future__ import
    annotations``, so every annotation is a string, which it would quote)."""

    def __repr__(self) -> str:
        return str(self)


def signature(fn, name: str | None = None) -> str:
    """``name(parameters) -> return``, annotations as the code writes them; a dataclass as its
    constructor (default factories shown as what they make)."""
    sig = inspect.signature(fn)
    if dataclasses.is_dataclass(fn):
        made = {f.name: f.default_factory() for f in dataclasses.fields(fn) if f.default_factory is not dataclasses.MISSING}
        sig = sig.replace(parameters=[p.replace(default=_Annotation(repr(made[p.name]))) if p.name in made else p
                                      for p in sig.parameters.values()], return_annotation=inspect.Signature.empty)

    def ann(a):
        return _Annotation(a) if isinstance(a, str) else a

    sig = sig.replace(parameters=[p.replace(annotation=ann(p.annotation)) for p in sig.parameters.values()],
                      return_annotation=ann(sig.return_annotation))
    return f"{name or fn.__name__}{sig}"


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|")


def _comments(source_lines: list[str], lineno: int) -> str:
    """The ``#:`` comment lines above line ``lineno`` (1-based) of ``source_lines``, or the
    ``#`` comment at the end of that line."""
    found, i = [], lineno - 2
    while i >= 0 and source_lines[i].strip().startswith("#:"):
        found.insert(0, source_lines[i].strip()[2:].strip())
        i -= 1
    if not found and "  # " in source_lines[lineno - 1]:
        found = [source_lines[lineno - 1].split("  # ", 1)[1].strip()]
    return markdown(" ".join(found))


def _assignments(tree_body, source_lines) -> dict[str, str]:
    """``name -> comment`` for each assignment in an ``ast`` body."""
    import ast

    out = {}
    for node in tree_body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in targets:
                if isinstance(t, ast.Name):
                    out[t.id] = _comments(source_lines, node.lineno)
    return out


def _class_comments(cls) -> dict[str, str]:
    import ast
    import textwrap

    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    (node,) = ast.parse(source).body
    return _assignments(node.body, lines)


def _module_comments(module) -> dict[str, str]:
    import ast

    source = inspect.getsource(module)
    return _assignments(ast.parse(source).body, source.splitlines())


def _value(value) -> str:
    return repr(value)


def _described(text: str) -> str:
    """``": text"`` after a member, or nothing when there is no text."""
    return f": {text}" if text else ""


# ------------------------------------------------------------------ the regions


def hooks_region() -> str:
    from . import hookspecs

    out = []
    for name, fn in vars(hookspecs).items():
        if callable(fn) and name.startswith("register_"):
            out.append(f"- **`{signature(fn)}`**: {' '.join(paragraphs(fn))}")
    return "\n".join(out)


def _member(cls, name: str, raw, comments: dict) -> str | None:
    """One bullet for member ``name`` of ``cls`` (``raw``: as in the class's ``__dict__``)."""
    if isinstance(raw, property):
        ret = inspect.signature(raw.fget).return_annotation
        ret = f" -> {ret}" if ret is not inspect.Signature.empty else ""
        return f"- `{name}{ret}` (property){_described(first_paragraph(raw.fget))}"
    if isinstance(raw, (classmethod, staticmethod)):
        kind = type(raw).__name__
        return f"- `{signature(getattr(cls, name), name)}` ({kind}){_described(first_paragraph(raw.__func__))}"
    if inspect.isfunction(raw):
        return f"- `{signature(raw, name)}`{_described(first_paragraph(raw))}"
    if callable(raw) or isinstance(raw, type):
        return None
    hints = vars(cls).get("__annotations__", {})
    typed = f": {hints[name]}" if name in hints else ""
    return f"- `{name}{typed} = {_value(raw)}`{_described(comments.get(name, ''))}"


def _inherited_doc(cls, name: str, raw) -> bool:
    """Whether ``raw`` overrides a base class's ``name`` without a docstring of its own."""
    fn = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
    declared = any(name in vars(base) for base in cls.__mro__[1:])
    return declared and inspect.isfunction(fn) and not fn.__doc__


def _class(qualname: str, cls) -> list[str]:
    comments = _class_comments(cls)
    if dataclasses.is_dataclass(cls):
        head = f"### `{signature(cls, qualname)}`"
    else:
        bases = [b.__name__ for b in cls.__bases__ if b is not object]
        head = f"### `{qualname}`" + (f" ({', '.join(bases)})" if bases else "")
    out = [head, "", *paragraphs(cls)[:1]]
    members = []
    if dataclasses.is_dataclass(cls):
        hints = vars(cls).get("__annotations__", {})
        for f in dataclasses.fields(cls):
            if f.name in hints and not f.name.startswith("_"):
                default = ("" if f.default is dataclasses.MISSING else f" = {_value(f.default)}") if f.default_factory \
                    is dataclasses.MISSING else f" = {_value(f.default_factory())}"
                members.append(f"- `{f.name}: {hints[f.name]}{default}`{_described(comments.get(f.name, ''))}")
    for name, raw in vars(cls).items():
        if name.startswith("_") or (dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}):
            continue
        if _inherited_doc(cls, name, raw):  # an override documented where it is declared
            continue
        line = _member(cls, name, raw, comments)
        if line:
            members.append(line)
    if members:
        out += [""] + members
    return out


def _entry(module_name: str, name: str, comments: dict) -> list[str]:
    module = importlib.import_module(module_name)
    obj = getattr(module, name)
    qualname = f"{module_name}.{name}"
    if isinstance(obj, type):
        return _class(qualname, obj)
    if inspect.isfunction(obj):
        return [f"### `{signature(obj, qualname)}`", "", first_paragraph(obj) or NOTES.get(qualname, "")]
    if qualname in NOTES:
        return [f"### `{qualname}`", "", NOTES[qualname]]
    return [f"### `{qualname} = {_value(obj)}`", "", comments.get(name, "")]


def api_region() -> str:
    import suite

    exported = [n for n in suite.__all__ if n != "__version__"]
    out = ["Everything `suite` exports (`from suite import ...`):", ""]
    for name in exported:
        origin = getattr(suite, name)
        module = getattr(origin, "__module__", None) if isinstance(origin, type) or inspect.isfunction(origin) else None
        comments = _module_comments(importlib.import_module(module)) if module else {}
        out += [*_entry("suite", name, comments), ""]
    out += ["The helpers this guide names, by module:", ""]
    for module_name, names in HELPERS.items():
        comments = _module_comments(importlib.import_module(module_name))
        for name in names:
            out += [*_entry(module_name, name, comments), ""]
    return "\n".join(out).rstrip()


def scorers_region() -> str:
    from . import scoring

    lines = ["| `score=` name | function | what it computes |", "|---|---|---|"]
    for name, fn in scoring.SCORERS.items():
        lines.append(f"| `{name}` | `{_cell(signature(fn))}` | {_cell(' '.join(paragraphs(fn)))} |")
    listed = set(scoring.SCORERS.values())
    others = [fn for n, fn in vars(scoring).items()
              if inspect.isfunction(fn) and fn.__module__ == scoring.__name__ and not n.startswith("_") and fn not in listed]
    lines += ["", "Further functions of `suite.scoring`, for a task's own metrics:", ""]
    lines += [f"- `{signature(fn)}`: {first_paragraph(fn)}" for fn in others]
    return "\n".join(lines)


def known_signatures() -> dict[str, set[str]]:
    """Every signature of the documented API (:func:`api_region`'s entries and the scorers), as
    the guide may quote it in prose: ``name -> {"name(...) -> ..."}``, methods with ``self``."""
    from . import scoring

    found: dict[str, set[str]] = {}

    def add(name, fn):
        found.setdefault(name, set()).add(signature(fn, name))

    import suite

    entries = [("suite", n) for n in suite.__all__ if n != "__version__"]
    entries += [(m, n) for m, names in HELPERS.items() for n in names]
    entries += [(scoring.__name__, n) for n, fn in vars(scoring).items() if inspect.isfunction(fn) and not n.startswith("_")]
    for module_name, name in entries:
        obj = getattr(importlib.import_module(module_name), name)
        if inspect.isfunction(obj):
            add(name, obj)
        elif isinstance(obj, type):
            for member, raw in vars(obj).items():
                if _inherited_doc(obj, member, raw):  # quoted as the base class declares it
                    continue
                if isinstance(raw, (classmethod, staticmethod)):
                    add(member, getattr(obj, member))
                elif inspect.isfunction(raw) and not member.startswith("_"):
                    add(member, raw)
    return found


def methods_region() -> str:
    """The table (docs/methods.md) of every method leitai ships: what trains, its defaults, whether the
    default shootout runs it, and where its settings come from (the ``paper`` text's source)."""
    from .plugins import load_registry

    reg = load_registry()
    rows = ["| method | what trains | defaults | default run | source |", "|---|---|---|---|---|"]
    for name in sorted(reg.methods):
        if not reg.plugins[reg.origin[("methods", name)]].source.startswith("leitai "):
            continue  # a method some other installed package adds
        m = reg.methods[name]
        defaults = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.defaults.items()
                             if v is not None)
        source = m.paper.split(": ", 1)[0] if ": " in m.paper else m.paper.split(". ", 1)[0]
        rows.append(f"| `{name}` | {m.description} | {defaults} | {'yes' if m.default else 'no'} | {source} |")
    return "\n".join(rows)


REGIONS = {"hooks": hooks_region, "api": api_region, "scorers": scorers_region, "columns": columns_region,
           "methods": methods_region}
#: the generated regions of each page :data:`COMMAND` keeps
FILES = {
    DOCS / "plugins" / "index.md": {"hooks": hooks_region},
    DOCS / "plugins" / "tasks.md": {"scorers": scorers_region},
    DOCS / "records.md": {"columns": columns_region},
    DOCS / "api.md": {"api": api_region},
    DOCS / "methods.md": {"methods": methods_region},
}


def page_of(name: str) -> Path:
    """The page that holds region ``name``."""
    return next(path for path, regions in FILES.items() if name in regions)


def regions_in(text: str) -> dict:
    """The :data:`REGIONS` whose opening marker ``text`` has."""
    return {name: render for name, render in REGIONS.items() if f"<!-- begin generated: {name} " in text}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- begin generated: {name} [^\n]*-->\n)(.*?)(<!-- end generated: {name} -->)", re.S)


def region(text: str, name: str) -> str:
    """The body of region ``name`` of ``text`` (a page), as it stands."""
    return _pattern(name).search(text).group(2)


def marker(name: str) -> str:
    """The line that opens region ``name`` in its page."""
    return f"<!-- begin generated: {name} ({COMMAND}; edit the code, not this) -->"


def update(text: str, regions: dict) -> str:
    """``text`` (a page with its ``regions``) with every generated region rendered anew from the
    code; a region whose markers are missing is a ``KeyError``."""
    for name, render in regions.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise KeyError(f"the page has no region {name!r} ({marker(name)} ... <!-- end generated: {name} -->)")
        region = f"{marker(name)}\n{render()}\n<!-- end generated: {name} -->"
        text = pattern.sub(lambda m, region=region: region, text, count=1)
    return text


def stale_regions(text: str, regions: dict) -> list[str]:
    """The names of the ``regions`` of ``text`` that differ from what the code gives."""
    new = update(text, regions)
    return [name for name in regions if _pattern(name).search(text).group(0) != _pattern(name).search(new).group(0)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Regenerate the reference parts of the docs "
                                     "(hooks, API, scorers, results.csv columns, methods).")
    parser.add_argument("path", nargs="?", help="one file: the regions it has markers for (default: every page "
                        "that holds one)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    if args.path:
        files = {Path(args.path): regions_in(Path(args.path).read_text(encoding="utf-8"))}
    else:
        files = FILES
    status = 0
    for path, regions in files.items():
        text = path.read_text(encoding="utf-8")
        stale = stale_regions(text, regions)
        if stale and args.check:
            print(f"{path} is out of date ({', '.join(stale)}): run {COMMAND}", file=sys.stderr)
            status = 1
        elif stale:
            path.write_text(update(text, regions), encoding="utf-8")
            print(f"{path}: regenerated {', '.join(stale)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
