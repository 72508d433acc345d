"""``leitai export``: a finished run's trained model in the form people deploy (docs/after-the-shootout.md).

``leitai export RUN_DIR --out DIR`` rebuilds the run's model from its record and ``adapter/``
(:meth:`suite.Method.load` on a fresh base) and asks the method to write it in a standard format
(:meth:`suite.Method.export`): PEFT's adapter format for the PEFT methods, a transformers model
directory for full fine-tuning, BitFit and LST (with its code beside it). ``--merge`` folds a
mergeable adapter into the base (a plain transformers model); ``--best`` takes a shootout
directory and picks the verdict's best method and its seed with the lowest dev loss. Every
export holds the tokenizer (with its chat template) and ``leitai-export.json`` (the run's config,
scores, commit and versions). ``--check`` loads the export back the way its format says and
compares its greedy answers on the run's first test prompts with the run's own.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ..errors import UsageError

#: test prompts ``--check`` answers again, by default
CHECK_PROMPTS = 8
DTYPES = ("auto", "float32", "bfloat16", "float16")
#: what the README of an export without a standard format says (format, how to load)
HOW = {
    "peft": "a PEFT adapter: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), DIR)`, BASE "
            "being `base_model_name_or_path` in adapter_config.json",
    "transformers": "a transformers model: `AutoModelForCausalLM.from_pretrained(DIR)`",
    "transformers-remote-code": "a transformers model with its code: `AutoModelForCausalLM.from_pretrained(DIR, "
                                "trust_remote_code=True)` and `AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)` "
                                "(transformers alone, no leitai)",
    "leitai": "leitai's own format: `Method.load` through leitai's plugin classes (README.md in the directory)",
}


def add_arguments(parser) -> None:
    parser.add_argument("dir", help="a run's directory (SHOOTOUT/runs/<run_id>), or with --best a shootout's")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the export (a new directory)")
    parser.add_argument("--best", action="store_true", help="DIR is a shootout: export the verdict's best method, "
                        "at its seed with the lowest dev loss, and say why")
    parser.add_argument("--task", help="with --best, the task whose verdict decides (needed when DIR has several)")
    parser.add_argument("--merge", action="store_true", help="fold the adapter into the base's weights: a model "
                        "directory transformers loads alone (methods peft can merge, on a float base)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="the exported weights' dtype (default: auto, the base's as the run loaded it)")
    parser.add_argument("--check", action="store_true", help="load the export back as its format says and compare "
                        f"its greedy answers on the run's first test prompts with the run's (--check-prompts, "
                        f"default {CHECK_PROMPTS}); exit status 1 when one differs")
    parser.add_argument("--check-prompts", type=int, default=CHECK_PROMPTS, metavar="N", help="how many (default: %(default)s)")


def choose_best(shootout: Path, task: str | None = None) -> tuple[Path, str]:
    """The run ``--best`` exports from ``shootout``, and why in one line: the verdict's best method
    on the task (by mean test score, tied methods named), and its seed with the lowest dev loss
    (the final runs are not scored on dev; the test score already chose the method)."""
    from ..cell.records import read_records
    from ..report import content

    records = read_records(shootout)
    report = content.build(records, with_figures=False)
    sections = {s.task: s for s in report.sections if s.verdict is not None}
    if task is None and len(sections) > 1:
        raise UsageError(f"{shootout} holds several tasks ({', '.join(sorted(sections))}): pass --task")
    if task is not None and task not in sections:
        raise UsageError(f"{shootout}: no finished runs on task {task!r} (tasks: {', '.join(sorted(sections)) or 'none'})")
    section = sections[task] if task else next(iter(sections.values()), None)
    if section is None or not section.verdict.best:
        raise UsageError(f"{shootout}: no method finished ok, nothing to export")
    verdict, method = section.verdict, section.verdict.best[0]
    results = report.results
    runs = results[(results.task == section.task) & (results.method == method) & (results.status == "ok")
                   & (results.phase == "final")].sort_values(["eval_loss", "seed"], kind="stable")
    pick = runs.iloc[0]
    mean = runs.score.mean()
    tied = verdict.best[1:]
    if tied:
        why = f"tied at 95% confidence with {', '.join(tied)} (paired test); first by mean"
    elif verdict.against_best:
        why = f"every other method below it (paired test, p ≤ {max(c.p_two_sided for c in verdict.against_best.values()):.2g})"
    else:
        why = "the only method"
    losses = ", ".join(f"seed {int(r.seed)}: {r.eval_loss:.4g}" for r in runs.itertuples())
    line = (f"best on {section.task}: {method}, the verdict's best by mean {section.score_name} {mean:.3g} over "
            f"{len(runs)} seed(s), {why}; seed {int(pick.seed)}, the lowest dev loss of its seeds ({losses})")
    return Path(shootout) / "runs" / pick.run_id, line


def _run_dtype(record: dict):
    """The dtype the run's base weights loaded in, as its record says (``float32``, ``bfloat16 + bf16 autocast``)."""
    import torch

    name = ((record.get("env") or {}).get("dtype") or "float32").split()[0]
    return getattr(torch, name)


def _merge_refusal(method, record: dict) -> str | None:
    """Why ``--merge`` cannot be done for this run (None: it can)."""
    from ..methods.peft_method import PeftMethod

    quantized = (record.get("config") or {}).get("quantize", "none")
    if quantized not in (None, "", "none"):
        return (f"the run's base was quantized ({quantized}): merging into 4- or 8-bit weights re-quantizes them "
                "and changes the answers; export the adapter and merge it into a float copy of the base")
    if method.mergeable:
        return None
    if isinstance(method, PeftMethod):
        return (f"peft cannot merge {method.name!r}: a prompt-learning method trains inputs to the model "
                "(virtual tokens, prefix keys and values), not changes to its weights; export the adapter")
    return (f"method {method.name!r} has no adapter to fold into the base's weights (it does not declare "
            "mergeable); its export is already a whole model where it has a standard format")


def cmd_export(args) -> int:
    import torch

    from ..cell.provenance import environment
    from ..cell.records import read_json
    from ..models import loading
    from ..models.precision import cast_weights
    from ..plugins import registry
    from ..quiet import quiet_libraries

    quiet_libraries()
    source = Path(args.dir)
    chosen = None
    if args.best:
        if not (source / "runs").is_dir():
            raise UsageError(f"{source}: no runs/ directory (--best takes a shootout directory)")
        source, chosen = choose_best(source, args.task)
        print(f"leitai: {chosen}")
    elif (source / "runs").is_dir():
        raise UsageError(f"{source} is a shootout directory: pass --best, or a run directory {source}/runs/<run_id>")
    record = read_json(source / "record.json")
    if record is None:
        raise UsageError(f"{source}: no record.json (not a finished run's directory)")
    if record.get("phase", "final") != "final" or record.get("status") != "ok" or not (source / "adapter").is_dir():
        raise UsageError(f"{source}: only a final run that finished ok has a trained model to export "
                         f"(phase {record.get('phase')}, status {record.get('status')})")
    if args.check_prompts < 1:
        raise UsageError("--check-prompts must be a positive whole number")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty directory")
    config = record["config"]
    reg = registry()
    try:
        method = reg.method(record["method"], config["params"])
    except (KeyError, ValueError) as e:
        raise UsageError(f"{source}: method {record['method']!r}: {e}") from None
    if args.merge and (why := _merge_refusal(method, record)):
        raise UsageError(f"--merge: {why}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dtype = _run_dtype(record)
    dtype = run_dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    spec = loading.resolve(config["model"], reg, config.get("trust_remote_code", False))
    base, tokenizer = loading.load_base(spec, run_dtype, config.get("quantize", "none"), device)
    tokenizer = loading.prepare_tokenizer(tokenizer)
    model = method.load(base.to(device) if config.get("quantize", "none") == "none" else base, source / "adapter",
                        dict(config["params"])).eval()

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if args.merge:
        model = method.merge(model)
        cast_weights(model, dtype)
        model.save_pretrained(str(tmp))
        fmt = "transformers"
    else:
        fmt = method.export(model, tmp, dict(config["params"]), dtype)
        if fmt not in (None, "peft", "transformers"):
            raise TypeError(f"method {method.name!r}: export returned {fmt!r}, not 'peft', 'transformers' or None")
        if fmt is None:
            method.save(model, tmp / "adapter", dict(config["params"]))
            (tmp / "README.md").write_text(_readme(record), encoding="utf-8")
    tokenizer.save_pretrained(str(tmp))  # with its chat template
    kind = fmt or "leitai"
    if fmt == "transformers" and "auto_map" in json.loads((tmp / "config.json").read_text(encoding="utf-8")):
        kind = "transformers-remote-code"
    info = {
        "format": kind, "load": HOW[kind], "merged": bool(args.merge), "dtype": str(dtype).removeprefix("torch."),
        "run": {k: record.get(k) for k in ("run_id", "method", "task", "seed", "model")} | {"dir": str(source.resolve())},
        "chosen": chosen, "config": config,
        "scores": {k: v for k, v in (record.get("metrics") or {}).items()
                   if k in ("score_name", "score", "choice_accuracy", "eval_loss", "forgetting", "retention_accuracy")},
        "retention": {n: t.get("accuracy") for n, t in ((record.get("retention") or {}).get("tasks") or {}).items()} or None,
        "run_env": record.get("env"), "export_env": environment(device, str(dtype).removeprefix("torch.")),
    }
    (tmp / "leitai-export.json").write_text(json.dumps(info, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    del model, base
    print(f"leitai: exported {record['run_id']} ({record['method']}) to {out} as {HOW[kind].split(':')[0]}")
    print(f"leitai: load it with {HOW[kind].split(': ', 1)[1]}")
    if args.check:
        return _check(out, kind, record, spec, reg, dtype, device, args.check_prompts)
    return 0


def load_export(directory: Path, kind: str, record: dict, spec, reg, device):
    """The exported model and tokenizer, loaded the way its format says (leitai's classes only for
    an export without a standard format)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import loading

    info = json.loads((directory / "leitai-export.json").read_text(encoding="utf-8"))
    dtype = getattr(torch, info["dtype"])
    remote = kind.endswith("code")  # its config.json names code in the directory, which the tokenizer reads too
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=remote)
    config = record["config"]
    if kind.startswith("transformers"):
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, trust_remote_code=remote)
    else:
        base, _ = loading.load_base(spec, dtype, config.get("quantize", "none"), device)
        if config.get("quantize", "none") == "none":
            base = base.to(device)
        if kind == "peft":
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, str(directory))
        else:
            method = reg.method(record["method"], config["params"])
            model = method.load(base, directory / "adapter", dict(config["params"]))
    return model.to(device).eval() if config.get("quantize", "none") == "none" else model.eval(), tokenizer


def _check(out: Path, kind: str, record: dict, spec, reg, dtype, device, n: int) -> int:
    """Greedy answers of the export on the run's first ``n`` test prompts against the run's own."""
    import torch

    from ..data.prepared import prepare
    from ..data.user_files import resolve_task
    from ..measures.task_scores import greedy_answers
    from ..models import loading

    model, tokenizer = load_export(out, kind, record, spec, reg, device)
    tokenizer = loading.prepare_tokenizer(tokenizer)
    config = record["config"]
    task = resolve_task(record["task"], reg)
    prepared = prepare(task, config["task_sizes"], config["max_len"], tokenizer)
    ran = record.get("generations") or []
    n = min(n, len(ran), len(prepared.test_prompts))
    for i in range(n):
        if prepared.test_texts[i] != ran[i].get("prompt"):
            raise UsageError(f"--check: test prompt {i + 1} of task {record['task']} is not the run's (its data changed)")
    autocast = "autocast" in ((record.get("env") or {}).get("dtype") or "")
    with torch.autocast(device.type, dtype=_run_dtype(record), enabled=autocast):
        texts = greedy_answers(model, tokenizer, prepared.test_prompts[:n], prepared.max_new_tokens, prepared.stop_ids,
                               device, config.get("eval_batch_size", 32))
    differ = [(i, ran[i]["output"], t) for i, t in enumerate(texts) if t != ran[i]["output"]]
    info_path = out / "leitai-export.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["check"] = {"prompts": n, "same": n - len(differ), "dtype": str(dtype).removeprefix("torch.")}
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    if differ:
        i, want, got = differ[0]
        print(f"leitai: check FAILED: {len(differ)} of {n} answers differ from the run's generations; first: test "
              f"example {ran[i].get('example_id')}: the run answered {want!r}, the export {got!r}", file=sys.stderr)
        return 1
    print(f"leitai: check passed: the export's greedy answers equal the run's on its first {n} test prompts")
    return 0


def _readme(record: dict) -> str:
    config = record["config"]
    return f"""# {record['run_id']}: exported by leitai

Method `{record['method']}` has no standard format (it does not implement `Method.export`), so
this directory holds what its `Method.save` wrote, in `adapter/`. Loading it needs the method's
code: leitai and the plugin that registers `{record['method']}`.

```python
import json
from pathlib import Path

from suite.models.loading import resolve
from suite.plugins import registry

here = Path("{'{'}this directory{'}'}")
info = json.loads((here / "leitai-export.json").read_text(encoding="utf-8"))
config = info["config"]
reg = registry()
method = reg.method(info["run"]["method"], config["params"])
base, tokenizer = resolve(config["model"], reg, config["trust_remote_code"]).load()
model = method.load(base, here / "adapter", config["params"]).eval()
```

The base model: `{config['model']}`; the method's settings are `config.params` in leitai-export.json.
"""
