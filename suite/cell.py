"""One shootout cell (method × task × seed), run in a process of its own.

``python -m suite.cell SPEC.json`` loads the base model, applies the method, trains, measures,
evaluates, generates, saves the adapter and writes ``record.json`` atomically, last: a run
directory with a record is a finished run. Errors become the record's status, never a crash
of the shootout.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Known noise of peft with recent transformers (../shared/DESIGN.md, known hazards).
SILENCED = (
    "Position ids are not supported for parameter efficient tuning",
    ".*is_gradient_checkpointing.* is deprecated",
)


@dataclass
class Cell:
    run_id: str
    method: str
    task: str
    seed: int
    model: str
    params: dict  # the method's hyper-parameters, defaults merged with overrides
    steps: int
    batch_size: int
    max_len: int
    task_sizes: dict | None
    device: str = "auto"  # auto | cpu | cuda
    trust_remote_code: bool = False
    warmup: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    eval_batch_size: int = 32
    side_corpus: str = "none"  # a registered side corpus, or none
    side_corpus_size: int = 128
    infer_prompts: int = 8
    infer_new_tokens: int = 16
    gradient_checkpointing: bool = False
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Cell":
        return cls(**json.loads(text))


def _silence_known_warnings():
    for pattern in SILENCED:
        warnings.filterwarnings("ignore", message=pattern)


def run_cell(cell: Cell, run_dir: Path) -> dict:
    """Run ``cell`` and return its record (without writing it)."""
    import torch

    started = time.time()
    record = {
        "run_id": cell.run_id, "method": cell.method, "task": cell.task, "seed": cell.seed,
        "model": cell.model, "status": "failed", "error": None, "config": json.loads(cell.to_json()),
        "metrics": {}, "curve": [], "generations": [], "env": {},
    }
    try:
        if _run(cell, run_dir, record) == "not main process":
            return None
    except Exception as e:
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        record["status"] = "oom" if oom else "failed"
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        record["traceback"] = traceback.format_exc()
    record["started_at"], record["finished_at"] = started, time.time()
    return record


def _run(cell: Cell, run_dir: Path, record: dict) -> None:
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import set_seed

    from . import data, measure, models, taskdata
    from .after_use import SIDE_BATCH, SIDE_MAX_TOKENS, AfterUse, inference_costs
    from .forgetting import side_batches
    from .env import environment
    from .generate import greedy_generate
    from .guards import (GuardError, check_method_output, probe_batch, real_logits, starts_from_base_error,
                         trained_base_names)
    from .measure import PeakMemory, count_parameters
    from .methods import resolve_method
    from .plugins import registry
    from .tasks import format_prompt, resolve_task
    from .train import TrainSettings, enable_gradient_checkpointing, mean_loss, train

    reg = registry()
    method = resolve_method(cell.method, reg, cell.params)
    task = resolve_task(cell.task, reg)
    spec = models.resolve(cell.model, reg, cell.trust_remote_code)

    use_cpu = cell.device == "cpu" or (cell.device == "auto" and not torch.cuda.is_available())
    if cell.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    accelerator = Accelerator(cpu=use_cpu, mixed_precision="no" if use_cpu else "bf16")
    device = accelerator.device
    record["env"] = environment(device, "float32" if use_cpu else "bf16-autocast")

    base, tokenizer = spec.load()
    tokenizer = models.prepare_tokenizer(tokenizer)
    prepared = taskdata.prepare(task, cell.task_sizes, cell.max_len, tokenizer)  # cached on disk
    train_set, dev_set, test_examples = prepared.train, prepared.dev, prepared.test
    test_prompts, max_new_tokens = prepared.test_prompts, prepared.max_new_tokens
    record["metrics"].update(data_seconds=prepared.seconds, data_cached=prepared.cached)
    if cell.gradient_checkpointing:
        enable_gradient_checkpointing(base)

    side = None
    if cell.side_corpus != "none" and cell.side_corpus_size:
        texts = reg.get("side_corpora", cell.side_corpus).texts(cell.side_corpus_size)
        side = side_batches(tokenizer, texts, SIDE_MAX_TOKENS, SIDE_BATCH)
    after_use = AfterUse(method, side, rtol=1e-5 if use_cpu else 1e-3)
    base.to(device)
    with accelerator.autocast():
        after_use.measure_base(base)  # the untouched base model, before the method touches it

    total = count_parameters(base)
    base_named = list(base.named_parameters())
    probe = base_logits = None
    if method.starts_from_base:  # the guard's probe: the base model's logits on two examples
        probe = probe_batch(train_set, tokenizer.pad_token_id)
        base_logits = real_logits(base, probe)
    trained = trained_base_names(method, base, dict(cell.params))  # declared before apply
    set_seed(cell.seed)  # the method's own initialisation depends on the run's seed
    model = method.apply(base, dict(cell.params))
    trainable = check_method_output(method, base_named, model, trained)
    if method.starts_from_base:
        error = starts_from_base_error(model, probe, base_logits)
        if error:
            raise GuardError(f"method {method.name!r} {error}")
    with accelerator.autocast():
        view_before = after_use.view_loss(model, "before training")

    batches_idx = data.batch_order([e.length for e in train_set], cell.batch_size, cell.steps, cell.seed)
    batches = [[train_set[i] for i in b] for b in batches_idx]
    settings = TrainSettings(
        lr=float(cell.params["lr"]), warmup=cell.warmup, weight_decay=cell.weight_decay,
        grad_clip=cell.grad_clip, log_every=cell.log_every,
    )
    weights_bytes = measure.tensor_bytes(measure.unique_parameters(model))
    quiet = os.environ.get("LEITAI_PROGRESS") == "0"
    quiet = quiet or not accelerator.is_main_process
    with tqdm(total=len(batches), desc=cell.run_id, unit="step", leave=False, mininterval=1.0, disable=quiet) as bar:
        with PeakMemory(device) as peak:
            result = train(model, batches, tokenizer.pad_token_id, settings, accelerator, bar, method, dict(cell.params))
    model = accelerator.unwrap_model(model)
    peaks = [peak.peak]
    if accelerator.num_processes > 1:  # a distributed cell: memory per device, the rest on the main process
        peaks = accelerator.gather(torch.tensor([peak.peak], device=device)).tolist()
        result.tokens = int(accelerator.reduce(torch.tensor(result.tokens, device=device), "sum"))
        if not accelerator.is_main_process:
            return "not main process"
        record["metrics"]["peak_memory_per_device"] = peaks
        record["metrics"]["processes"] = accelerator.num_processes

    m = record["metrics"]
    m.update(
        trainable_params=trainable, total_params=total, trainable_pct=100.0 * trainable / total,
        peak_memory_bytes=max(peaks), peak_memory_reserved_bytes=peak.reserved, memory_kind=peak.kind,
        weights_bytes=weights_bytes, train_seconds=result.seconds, train_tokens=result.tokens,
        tokens_per_second=result.tokens / result.seconds if result.seconds else None,
        steps=len(result.losses), lr=settings.lr, truncated_examples=prepared.truncated,
        truncated_eval_examples=prepared.eval_truncated, train_examples=len(train_set),
        dev_examples=len(dev_set), test_examples=len(test_examples), max_new_tokens=max_new_tokens,
        first_train_loss=result.losses[0] if result.losses else None,
        final_train_loss=tail_mean(result.losses), score_name=task.score_name, answer_head=result.answer_head,
        **result.breakdown,
    )
    record["curve"] = [{"step": i + 1, "split": "train", "loss": v} for i, v in enumerate(result.losses)]
    if result.diverged:
        record["status"] = "diverged"
        record["error"] = f"non-finite training loss at step {len(result.losses)}"
        return

    with accelerator.autocast():
        dev_loss = mean_loss(model, data.eval_batches(dev_set, cell.eval_batch_size), tokenizer.pad_token_id, device)
        outputs = greedy_generate(
            model, test_prompts, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, device,
            cell.eval_batch_size,
        )
    texts = [tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]
    m["eval_loss"] = dev_loss
    references = [ex.output for ex in test_examples]
    m["score"] = task.score(texts, references)
    m.update(extra_metrics(task, texts, references, m))
    record["curve"].append({"step": len(result.losses), "split": "dev", "loss": dev_loss})
    record["generations"] = [
        {"example_id": ex.id, "prompt": format_prompt(ex), "reference": ex.output, "output": t}
        for ex, t in zip(test_examples, texts)
    ]

    adapter = run_dir / "adapter"
    tmp = run_dir / "adapter.tmp"
    method.save(model, tmp, dict(cell.params))
    if adapter.exists():
        import shutil

        shutil.rmtree(adapter)
    tmp.rename(adapter)
    m["adapter_bytes"] = measure.dir_bytes(adapter)

    with accelerator.autocast():
        m.update(after_use.forgetting(model), forgetting_view_before=view_before)
    m.update(inference_costs(
        method, model, lambda: spec.load()[0].to(device), test_prompts[: cell.infer_prompts],
        cell.infer_new_tokens, tokenizer.pad_token_id, accelerator.autocast, rtol=1e-4 if use_cpu else 2e-2,
    ))
    record["status"] = "ok"


def generation_budget(max_new_tokens: int, train_set: list) -> int:
    """Tokens greedy generation may produce: the task's ``max_new_tokens``, but no more than the
    longest training answer (with its end token). Answers are cut to half the context for
    training, so the prompt always keeps room; and no method spends time generating past what
    any method was taught to answer (the same budget for every method of a task)."""
    longest = max((len(e.answer) for e in train_set), default=max_new_tokens)
    return max(1, min(max_new_tokens, longest))


def extra_metrics(task, predictions: list[str], references: list[str], measured: dict) -> dict:
    """The task's further metrics (:meth:`suite.Task.metrics`), checked: they may only add
    numeric columns, never replace what the core measured."""
    extra = task.metrics(predictions, references) or {}
    for name, value in extra.items():
        if not isinstance(name, str) or name in measured:
            raise ValueError(f"task {task.name!r} returned metric {name!r}, which clashes with a core column")
        if not isinstance(value, (int, float)):
            raise ValueError(f"task {task.name!r} returned a non-numeric metric {name}={value!r}")
    return {name: float(value) for name, value in extra.items()}


def tail_mean(losses: list[float], frac: float = 0.1) -> float | None:
    """Mean of the last 10% of step losses: one batch's loss is too noisy to compare methods."""
    if not losses:
        return None
    k = max(1, int(len(losses) * frac))
    return sum(losses[-k:]) / k


def main(argv: list[str] | None = None) -> int:
    from .records import write_json_atomic

    argv = sys.argv[1:] if argv is None else argv
    spec_path = Path(argv[0])
    cell = Cell.from_json(spec_path.read_text(encoding="utf-8"))
    run_dir = spec_path.parent
    _silence_known_warnings()
    if os.environ.get("LEITAI_THREADS"):  # the executor's share of the cores
        import torch

        torch.set_num_threads(int(os.environ["LEITAI_THREADS"]))
    if os.environ.get("LEITAI_PROGRESS") == "0":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    record = run_cell(cell, run_dir)
    if record is not None:  # under a distributed launch only the main process writes it
        write_json_atomic(run_dir / "record.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
