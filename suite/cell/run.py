"""One shootout cell (method × task × seed), run in a process of its own.

``python -m suite.cell SPEC.json`` loads the base model, applies the method, trains, measures,
evaluates, generates, saves the adapter and writes ``record.json`` atomically, last: a run
directory with a record is a finished run. Errors become the record's status, never a crash
of the shootout.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from ..quiet import quiet_libraries
from .spec import Cell


def run_cell(cell: Cell, run_dir: Path) -> dict | None:
    """Run ``cell`` and return its record (without writing it); None on the processes of a
    distributed cell other than the main one, which alone writes the record."""
    import torch

    from .records import new_record

    started = time.time()
    record = new_record(cell)
    try:
        if not _run(cell, run_dir, record):
            return None
    except Exception as e:
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        record["status"] = "oom" if oom else "failed"
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        record["traceback"] = traceback.format_exc()
    record["started_at"], record["finished_at"] = started, time.time()
    return record


def _run(cell: Cell, run_dir: Path, record: dict) -> bool:
    """Fill ``record`` in; False when this process is not the one that keeps it."""
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import set_seed

    from ..config.sweep import BASELINE, TUNE
    from ..data import replay
    from ..data.batches import eval_batches
    from ..data.chat import chat_format
    from ..data.prepared import prepare
    from ..data.side_corpus import side_batches
    from ..data.tasks import extra_metrics, trivial_answers
    from ..data.user_files import resolve_task
    from ..errors import GuardError
    from ..measures import resources, retention
    from ..measures.attention import ATTENTION_PROMPTS, prepended_attention
    from ..measures.diagnostics import answer_format, divergence, learning_tail, probe_baseline
    from ..measures.forgetting import SIDE_BATCH, SIDE_MAX_TOKENS, Forgetting
    from ..measures.inference import inference_costs
    from ..measures.loss import mean_loss
    from ..measures.resources import PeakMemory, count_parameters, tail_mean
    from ..measures.task_scores import choice_accuracy, class_prior_loss, greedy_answers, scored
    from ..memory.prediction import cell_prediction
    from ..methods.guards import check_method_output, probe_batch, real_logits, starts_from_base_error, trained_base_names
    from ..methods.method import run_info
    from ..models import loading, quantize
    from ..models.precision import DTYPES, dtype_name, mixed_precision, precision_label, resolve_dtype, upcast_trainable
    from ..plugins import registry
    from ..progress import beat
    from .checkpoint import Checkpoints
    from .provenance import environment
    from .sharding import full_state, sharded, unsharded
    from .train import DevCurve, TrainSettings, record_replay, split_step, train

    reg = registry()
    task = resolve_task(cell.task, reg)
    spec = loading.resolve(cell.model, reg, cell.trust_remote_code)

    use_cpu = cell.device == "cpu" or (cell.device == "auto" and not torch.cuda.is_available())
    if cell.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    device_type = torch.device("cpu" if use_cpu else "cuda")
    dtype = resolve_dtype(cell.dtype, device_type)  # the base's weights; what trains is float32
    trainable_dtype = DTYPES[cell.trainable_dtype]  # what trains: float32, or bfloat16 ("pure bf16")
    amp = mixed_precision(dtype, device_type, trainable_dtype)
    accelerator = Accelerator(cpu=use_cpu, mixed_precision=amp)
    device = accelerator.device
    record["env"] = environment(device, precision_label(dtype, amp))
    quantized = cell.quantize != quantize.NONE  # --quantize: 4- or 8-bit linear layers (bitsandbytes)
    exact = dtype == torch.float32 and amp == "no" and not quantized  # no rounding to half precision anywhere

    beat("loading the model")
    base, tokenizer = loading.load_base(spec, dtype, cell.quantize, device)
    record["metrics"]["attn_implementation"] = loading.set_attention(base, cell.attn_implementation)  # what runs
    if quantized:
        base = quantize.prepare(base, cell.gradient_checkpointing)  # peft's k-bit preparation, base frozen
    tokenizer = loading.prepare_tokenizer(tokenizer)
    beat("preparing the data")
    templated = chat_format(tokenizer, cell.prompt_format)  # single-turn examples through the chat template?
    prepared = prepare(task, cell.task_sizes, cell.max_len, tokenizer, templated)  # cached on disk
    train_set, dev_set, test_examples = prepared.train, prepared.dev, prepared.test
    if cell.loss_turns == "last":  # conversations: loss on the last answer only (dev loss keeps every one)
        train_set = [e.last_turn_only() for e in train_set]
    max_new_tokens = prepared.max_new_tokens
    m = record["metrics"]
    m["weights_dtype"] = quantize.weights_dtype(base)  # measured: what the base loaded in (nf4+float32...)
    m.update(prompt_format="chat" if templated else "plain", data_seconds=prepared.seconds, data_cached=prepared.cached, score_name=task.score_name,
             train_examples=len(train_set), dev_examples=len(dev_set), test_examples=len(test_examples),
             max_new_tokens=max_new_tokens, truncated_examples=prepared.truncated,
             truncated_eval_examples=prepared.eval_truncated)
    if task.choices:  # the loss of knowing the answer format but not the labels
        m["class_prior_loss"] = class_prior_loss(prepared.train_answers, train_set)

    def answers(model, prompts):  # greedy answers as text, scored the same way for every model
        return greedy_answers(model, tokenizer, prompts, max_new_tokens, prepared.stop_ids, device, cell.eval_batch_size)

    def choices(model, answer_head=None):  # the closed answer set's most likely label, for classification tasks
        return choice_accuracy(model, tokenizer, prepared.test_prompts, task.choices, [ex.output for ex in test_examples],
                               device, cell.eval_batch_size, answer_head)

    if cell.phase == BASELINE:  # the untrained base model, scored like a trained one, and the trivial answers
        base.to(device)
        with accelerator.autocast():
            m["eval_loss"] = mean_loss(base, eval_batches(dev_set, cell.eval_batch_size), tokenizer.pad_token_id, device)
            texts = answers(base, prepared.test_prompts)
            if task.choices:
                m["choice_accuracy"] = choices(base)
        scores, record["generations"] = scored(task, texts, test_examples, prepared.test_texts)
        m.update(scores)
        kind, trivial = trivial_answers(task, prepared.train_answers, test_examples)
        scores, generations = scored(task, trivial, test_examples, prepared.test_texts)
        record["trivial"] = {"kind": kind, "score": scores["score"], "generations": generations}
        if task.choices:  # what a linear map reads from the frozen base at the answer position
            record["probe"] = probe_baseline(task, base, prepared, tokenizer.pad_token_id, device, cell.eval_batch_size)
        if cell.base_retention and cell.retention != retention.NONE:  # the base on the harness's tasks, once per base
            with accelerator.autocast():
                record["retention"] = retention.measure(base, tokenizer, cell.retention, cell.retention_include,
                                                        cell.eval_batch_size)
        record["status"] = "ok"
        return True

    method = reg.method(cell.method, cell.params)
    tuning = cell.phase == TUNE  # scored on dev only; no forgetting, inference timing or adapter
    if cell.gradient_checkpointing:
        loading.enable_gradient_checkpointing(base)
    side = None
    if cell.side_corpus != "none" and cell.side_corpus_size and not tuning:
        texts = reg.get("side_corpora", cell.side_corpus).texts(cell.side_corpus_size)
        side = side_batches(tokenizer, texts, SIDE_MAX_TOKENS, SIDE_BATCH)
    forgetting = Forgetting(method, side, rtol=1e-5 if exact else 1e-3)
    base.to(device)
    with accelerator.autocast():
        forgetting.measure_base(base)  # the untouched base model, before the method touches it
        # its dev loss, as the baseline cell measures it: a run whose dev loss ends far above it diverged
        m["base_eval_loss"] = mean_loss(base, eval_batches(dev_set, cell.eval_batch_size), tokenizer.pad_token_id, device)

    total = count_parameters(base)
    base_named = list(base.named_parameters())
    probe = base_logits = None
    if method.starts_from_base:  # the guard's probe: the base model's logits on two examples
        probe = probe_batch(train_set, tokenizer.pad_token_id)
        base_logits = real_logits(base, probe)
    trained = trained_base_names(method, base, dict(cell.params))  # declared before apply
    set_seed(cell.seed)  # the method's own initialisation depends on the run's seed
    beat("applying the method")
    model = method.apply(base, dict(cell.params))
    trainable = count_parameters(model, trainable_only=True)  # recorded even when a guard fails the cell
    m.update(trainable_params=trainable, total_params=total, trainable_pct=100.0 * trainable / total)
    check_method_output(method, base_named, model, trained)
    if method.starts_from_base:
        # a half-precision base: a few units in the last place of the largest logit (bf16: 2^-8)
        error = starts_from_base_error(model, probe, base_logits, rtol=1e-4 if dtype == torch.float32 and not quantized else quantize.RTOL)
        if error:
            raise GuardError(f"method {method.name!r} {error}")
    upcast_trainable(model, trainable_dtype)  # after the guards, which hold the method to what apply returned
    m["trainable_dtype"] = dtype_name(resources.unique_parameters(model, trainable_only=True))
    record["method_info"] = run_info(method, model, dict(cell.params))  # what ran: targets, init, fallbacks
    with accelerator.autocast():
        view_before = forgetting.view_loss(model, "before training")

    mix = replay.batches(cell, reg, tokenizer, train_set)  # the same for every method; with --replay, two parts
    batches = mix.task  # one a step; --grad-accum cuts each into micro-batches
    settings = TrainSettings(
        lr=float(cell.params["lr"]), warmup=cell.warmup, weight_decay=cell.weight_decay,
        grad_clip=cell.grad_clip, log_every=cell.log_every, optimizer=cell.optimizer, shard=cell.shard,
    )
    weights_bytes = resources.tensor_bytes(resources.unique_parameters(model)) + quantize.state_bytes(model)
    # the planner knows float bases and task batches only (not replay's whole-sequence loss);
    # a tuning cell's start-up stays lean
    if not tuning and not quantized and mix.replay is None:
        world = accelerator.num_processes  # the first process's first micro-batch, as training cuts it
        first = split_step(batches[0][0::world], cell.grad_accum)[0]
        plan = cell_prediction(method, cell.params, base.config, first, tokenizer.pad_token_id, dtype,
                               cell.gradient_checkpointing, device.type, cell.trust_remote_code,
                               trainable_dtype=trainable_dtype, optimizer=cell.optimizer, processes=world,
                               shard=cell.shard)
        m["predicted_peak_bytes"] = plan and plan.pop("predicted_peak_bytes")
        record["plan"] = plan  # the predicted breakdown, beside the measured one in metrics

    def dev_point(answer_head, score: bool):  # the dev split's loss, and its score: what tuning and --eval-every read
        with accelerator.autocast():
            loss = mean_loss(model, eval_batches(dev_set, cell.eval_batch_size), tokenizer.pad_token_id, device,
                             answer_head)
            return loss, scored(task, answers(model, prepared.dev_prompts), prepared.dev_examples)[0]["score"] \
                if score else None

    dev = DevCurve(model, dev_point, record["curve"], keep_best=cell.keep == "best")
    checkpoints = Checkpoints(cell, run_dir, accelerator, method, dev)  # --checkpoint-every; --resume goes on
    quiet = os.environ.get("LEITAI_PROGRESS") == "0"
    quiet = quiet or not accelerator.is_main_process
    with tqdm(total=len(batches), desc=cell.run_id, unit="step", leave=False, mininterval=1.0, disable=quiet) as bar:
        with PeakMemory(device) as peak:
            result = train(model, batches, tokenizer.pad_token_id, settings, accelerator, bar, method, dict(cell.params),
                           replay=mix.replay, micro_batches=cell.grad_accum,
                           evaluate=dev.at, eval_every=cell.eval_every, checkpoints=checkpoints)
    model = accelerator.unwrap_model(model)
    if not result.diverged:  # the dev split at the end, on every process (a sharded model computes with all)
        end = dev.at(len(result.losses), result.seconds, result.answer_head, score=tuning or bool(cell.eval_every))
        kept = dev.restore_best()  # --keep best: the best evaluation's parameters (None: the last is the best)
    peaks, breakdown = [peak.peak], {k: [v] for k, v in result.breakdown.items()}
    if accelerator.num_processes > 1:  # a distributed cell: memory per process; the rest on the main process
        peaks = accelerator.gather(torch.tensor([peak.peak], device=device)).tolist()
        breakdown = {k: accelerator.gather(torch.tensor([v], device=device)).tolist() for k, v in result.breakdown.items()}
        result.tokens = int(accelerator.reduce(torch.tensor(result.tokens, device=device), "sum"))
        whole = full_state(model) if sharded(model) else None  # every process gathers the shards
        if not accelerator.is_main_process:
            return False
        if whole is not None:  # go on unsharded, as an unsharded run would
            model = unsharded(whole, lambda: method.apply(loading.load_base(spec, dtype, cell.quantize, device)[0],
                                                          dict(cell.params)), trainable_dtype, device)
        m.update(peak_memory_per_device=peaks, processes=accelerator.num_processes, shard=cell.shard,
                 memory_per_process=breakdown)

    m.update(
        peak_memory_bytes=max(peaks), peak_memory_reserved_bytes=peak.reserved, memory_kind=peak.kind,
        weights_bytes=weights_bytes, train_seconds=result.seconds, train_tokens=result.tokens,
        tokens_per_second=result.tokens / result.seconds if result.seconds else None,
        steps=len(result.losses), epochs=sum(len(b) for b in batches[: len(result.losses)]) / len(train_set),
        lr=settings.lr, first_train_loss=result.losses[0] if result.losses else None,
        final_train_loss=tail_mean(result.losses), answer_head=result.answer_head,
    )
    m.update({k: max(v) for k, v in breakdown.items()})  # the largest process's bytes
    m["checkpoint_seconds"] = checkpoints.writing
    if checkpoints.resumed_from is not None:  # the seconds, tokens and losses are the pieces' together
        m["resumed_from_step"] = checkpoints.resumed_from
    m.update(learning_tail(result.losses))  # was the loss still falling at the end?
    record["curve"] += [{"step": i + 1, "split": "train", "loss": v} for i, v in enumerate(result.losses)]
    record_replay(mix, result, record)  # the replay part's losses: the curve's replay split
    if result.diverged:
        record["status"] = "diverged"
        record["error"] = f"non-finite training loss at step {len(result.losses)}"
        return True

    m["eval_loss"] = end["loss"]
    if end["score"] is not None:
        m["dev_score"] = end["score"]
    if cell.eval_every:  # the curve's best point; --keep best tests its parameters
        m.update(best_dev_step=dev.best["step"], best_dev_score=dev.best["score"], kept_step=kept or end["step"])
        if kept is not None:
            m.update(eval_loss=dev.best["loss"], dev_score=dev.best["score"])
    blew_up = divergence(m["first_train_loss"], m["final_train_loss"], m["eval_loss"], m["base_eval_loss"],
                         len(result.losses))
    if blew_up:  # its loss ended far above where it started: not scored
        record["status"], record["error"] = "diverged", blew_up
        return True
    if tuning:  # the dev split's score decides which setting the final runs use; test is never read
        record["status"] = "ok"
        return True
    with accelerator.autocast():
        texts = answers(model, prepared.test_prompts)
        if task.choices:
            m["choice_accuracy"] = choices(model, result.answer_head)
        m.update(prepended_attention(model, prepared.test_prompts[:ATTENTION_PROMPTS], device))  # prepend methods
    scores, record["generations"] = scored(task, texts, test_examples, prepared.test_texts)
    m.update(scores)  # and per turn, for conversations
    m.update(extra_metrics(task, texts, [ex.output for ex in test_examples], m))
    m.update(answer_format(texts, task.choices))  # empty answers, or outside the answer set

    beat("saving the adapter")
    adapter = run_dir / "adapter"
    tmp = run_dir / "adapter.tmp"
    method.save(model, tmp, dict(cell.params))
    if adapter.exists():
        import shutil

        shutil.rmtree(adapter)
    tmp.rename(adapter)
    m["adapter_bytes"] = resources.dir_bytes(adapter)

    with accelerator.autocast():
        m.update(forgetting.after(model), forgetting_view_before=view_before)
        if cell.retention != retention.NONE:  # what it kept of the base's answers on the harness's tasks
            seconds = time.perf_counter()
            record["retention"] = retention.measure(model, tokenizer, cell.retention, cell.retention_include,
                                                    cell.eval_batch_size)
            m.update(retention_accuracy=retention.pooled(record["retention"]),
                     retention_seconds=time.perf_counter() - seconds)
    m.update(inference_costs(
        method, model, lambda: loading.load_base(spec, dtype, cell.quantize, device)[0].to(device),
        prepared.test_prompts[: cell.infer_prompts], cell.infer_new_tokens, tokenizer.pad_token_id, accelerator.autocast,
        rtol=1e-4 if exact else 2e-2, quantized=quantized,
    ))
    record["status"] = "ok"
    return True


def main(argv: list[str] | None = None) -> int:
    from ..atomic import write_json_atomic

    argv = sys.argv[1:] if argv is None else argv
    spec_path = Path(argv[0])
    cell = Cell.from_json(spec_path.read_text(encoding="utf-8"))
    run_dir = spec_path.parent
    from ..stopping import cell_stops_on_signals

    cell_stops_on_signals()  # Ctrl-C and SIGTERM: the cell ends without a record
    if os.environ.get("RANK", "0") == "0":  # the driver's watchdog reads the main process's heartbeat
        from .. import progress

        progress.start(run_dir)
    quiet_libraries()
    if os.environ.get("LEITAI_THREADS"):  # the executor's share of the cores
        import torch

        torch.set_num_threads(int(os.environ["LEITAI_THREADS"]))
    if os.environ.get("LEITAI_PROGRESS") == "0":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        record = run_cell(cell, run_dir)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: no record, the cell is not done (``python -m`` would exit 1)
        return 130
    if record is not None:  # under a distributed launch only the main process writes it
        from .checkpoint import FINISHED, remove_all

        if record["status"] in FINISHED:  # nothing to go on from (before the record: never both)
            remove_all(run_dir)
        write_json_atomic(run_dir / "record.json", record)
    return 0

