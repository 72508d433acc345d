"""The training loop every method runs through: the same batches, optimiser and schedule.

AdamW over the parameters that require grad, linear warm-up then cosine decay, gradient
clipping, bf16 autocast on CUDA (through accelerate). Loss values are read back to the host
only every ``log_every`` steps, so the loop does not wait on the device at every step.

The output head runs only where the loss is (:class:`suite.measures.loss.AnswerHead`): at the positions
whose next token is an answer token.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ..data.batches import Encoded, collate
from ..measures.loss import AnswerHead, loss_index, mixed_loss
from ..measures.resources import optimizer_bytes, saved_for_backward, tail_mean, tensor_bytes, unique_parameters
from ..progress import beat
from .sharding import average_whole_gradients, shard


@dataclass
class TrainSettings:
    lr: float
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    optimizer: str = "adamw"  # adamw | adamw8bit | paged-adamw8bit (--optimizer)
    shard: str = "none"  # none | fsdp (--shard): how a cell of several processes holds the model


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per step actually taken (with replay: the task part's)
    replay_losses: list[float] = field(default_factory=list)  # with replay: the replay part's, per step
    tokens: int = 0  # non-padding tokens seen by training steps
    seconds: float = 0.0
    diverged: bool = False
    breakdown: dict = field(default_factory=dict)  # grads/optimizer/activation bytes
    answer_head: bool = False  # the head ran only at answer positions (see AnswerHead)


class Diverged(Exception):
    pass


def make_optimizer(model, settings: TrainSettings, steps: int, method=None, params: dict | None = None):
    """The arena's optimiser for ``model``: AdamW (``settings.optimizer``: torch's, or bitsandbytes'
    8-bit one) at ``settings.lr`` over every parameter that requires grad, with linear warm-up
    then cosine decay over ``steps``. With a ``method`` (and
    its ``params``), its :meth:`~suite.Method.param_groups`, checked by
    :func:`suite.methods.guards.checked_param_groups` (a :class:`~suite.errors.GuardError` if they are
    not exactly the trainable parameters)."""
    from transformers import get_cosine_schedule_with_warmup

    from ..methods.guards import checked_param_groups

    groups = checked_param_groups(method, model, params or {})
    if settings.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    else:  # bitsandbytes' 8-bit AdamW: its two states in 8 bits, blockwise (a parameter under 4,096 values: 32 bits)
        import bitsandbytes as bnb

        kind = bnb.optim.PagedAdamW8bit if settings.optimizer == "paged-adamw8bit" else bnb.optim.AdamW8bit
        optimizer = kind(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(settings.warmup * steps), steps)
    return optimizer, schedule


def train(model, batches: list[list[Encoded]], pad_id: int, settings: TrainSettings, accelerator, progress=None,
          method=None, params: dict | None = None, replay: list[list[Encoded]] | None = None,
          micro_batches: int = 1, evaluate=None, eval_every: int = 0, checkpoints=None) -> TrainResult:
    """Train ``model`` on ``batches`` in order; stops early (``diverged``) on a non-finite loss.

    Each batch is one optimiser step. With ``micro_batches`` K > 1 it runs as K micro-batches
    whose gradients accumulate, each micro-batch's loss weighted by its share of the step's loss
    tokens, so the step's loss and gradients are those of the whole batch (gradient accumulation;
    in memory: one micro-batch). In a cell of several processes each takes its share of every
    batch, weighted the same way over all of them; ``settings.shard`` ``fsdp`` shards the model
    over them first (:mod:`suite.cell.sharding`), else accelerate wraps it (DDP). With a ``method`` (and its ``params``), the optimiser takes its
    parameter groups (:func:`make_optimizer`) and its :meth:`~suite.Method.after_step` runs after
    every step. With ``replay`` (one batch of replay sequences per step, :mod:`suite.data.replay`),
    each step trains on its task batch and its replay batch together, the loss
    :func:`suite.measures.loss.mixed_loss`; each part's loss is kept (``losses``, ``replay_losses``).
    With ``evaluate`` and ``eval_every`` N, ``evaluate(step, training_seconds, answer_head)`` runs
    after every N-th step but the last (the caller evaluates the end, :class:`DevCurve`), its
    seconds kept out of :attr:`TrainResult.seconds`. With ``checkpoints``
    (:class:`suite.cell.checkpoint.Checkpoints`), training goes on from the last checkpoint if
    there is one, and writes one whenever it is due (its seconds kept out too).
    """
    unwrapped = model  # what the method built; accelerate may wrap it (DDP), FSDP shards it in place
    kept_whole = []  # trained parameters a sharded cell keeps whole (Method.shards_trained)
    if settings.shard != "none":
        if method is not None and not getattr(method, "shards_trained", True):
            kept_whole = [p for p in model.parameters() if p.requires_grad]
        shard(model, settings.shard, kept_whole)
    optimizer, schedule = make_optimizer(model, settings, len(batches), method, params)
    # the schedule steps once a step whatever the processes (accelerate's wrapper would step it once per process)
    if settings.shard != "none":
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    all_params = list(model.parameters())
    device = accelerator.device
    result = TrainResult()
    if settings.shard != "none":  # what this process holds of the sharded weights
        result.breakdown["weights_bytes"] = tensor_bytes(unique_parameters(model))
    pending: list[torch.Tensor] = []
    pending_replay: list[torch.Tensor] = []
    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    head = AnswerHead(accelerator.unwrap_model(model))
    if batches:  # set-up, not training: does the answer-only head give the model's own loss?
        sample = collate(split_step(batches[0][rank::world] if world > 1 else batches[0], micro_batches)[0], pad_id)
        index = tuple(t.to(device) for t in loss_index(sample["labels"])[:3]) + (sample["labels"].shape[1],)
        result.answer_head = head.check(model, {k: v.to(device) for k, v in sample.items()}, index)
    first = checkpoints.restore(model, optimizer, schedule, result) if checkpoints else 0
    done = result.seconds  # the training seconds of the pieces before a checkpoint
    if progress is not None and first:
        progress.update(first)
    start = time.perf_counter()
    aside = 0.0  # evaluating and writing checkpoints: not training
    for step in range(first, len(batches)):
        whole = batches[step]
        beat("training", step + 1, len(batches))
        whole_extra = replay[step] if replay else []
        items = whole[rank::world] if world > 1 else whole  # data parallel (or sharded): each process its share
        extra = whole_extra[rank::world] if world > 1 else whole_extra
        micro = [(task, more) for task, more in zip(split_step(items, micro_batches), split_step(extra, micro_batches))
                 if task or more]
        parts = [collate(task + more, pad_id) for task, more in micro]  # task examples first, then replay sequences
        indexes = [loss_index(batch["labels"]) for batch in parts]
        is_task = [index[0] < len(task) for index, (task, _) in zip(indexes, micro)]
        # the step's loss is the mean over all its answer tokens, every micro-batch and process together: each
        # part weighs its share (the processes' gradients are averaged, hence the whole step's tokens / world)
        totals = (None, None)  # one batch in one process: its own means
        if len(parts) > 1 or world > 1:
            totals = tuple(sum(sum(e.answer_lengths()) for e in part) / world for part in (whole, whole_extra))
        result.tokens += sum(e.length for e in items + extra)
        task_loss = replayed = 0.0
        for j, (batch, index, own) in enumerate(zip(parts, indexes, is_task)):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            index = tuple(t.to(device, non_blocking=True) for t in index[:3]) + index[3:]
            measure = saved_for_backward(exclude=all_params) if step == first and j == 0 else nullcontext()  # once
            # DDP syncs gradients on the last micro-batch (FSDP reduce-scatters each: exact either way)
            last = j == len(parts) - 1
            sync = nullcontext() if world == 1 or last or settings.shard != "none" else accelerator.no_sync(model)
            with sync:
                with measure as saved:
                    if whole_extra:
                        loss, task_part, replay_part = mixed_loss(head.logits(model, batch, index), index[2],
                                                                  own.to(device, non_blocking=True), len(whole),
                                                                  len(whole_extra), *totals)
                        replayed = replayed + replay_part.detach()
                    else:
                        loss = task_part = head.loss(model, batch, index)
                        if totals[0]:  # this part's share of the step's mean
                            loss = task_part = loss * (len(index[2]) / totals[0])
                task_loss = task_loss + task_part.detach()
                accelerator.backward(loss)
            if step == first and j == 0:
                result.breakdown["activation_bytes"] = saved["bytes"]
        if kept_whole:
            average_whole_gradients(kept_whole, world)
        if step == first:
            result.breakdown["grads_bytes"] = tensor_bytes(p.grad for p in trainable if p.grad is not None)
        if settings.grad_clip:
            accelerator.clip_grad_norm_(trainable, settings.grad_clip)
        optimizer.step()
        schedule.step()
        if method is not None:
            method.after_step(unwrapped, step, len(batches))
        optimizer.zero_grad(set_to_none=True)
        if step == first:
            result.breakdown["optimizer_bytes"] = optimizer_bytes(optimizer)
        pending.append(task_loss)
        if extra:
            pending_replay.append(replayed)
        read_back = (step + 1) % settings.log_every == 0 or step + 1 == len(batches)
        save = checkpoints is not None and checkpoints.due(step + 1, len(batches), read_back)
        if read_back or save:  # a checkpoint holds the losses so far
            values, replayed_values = (_read(accelerator, p) for p in (pending, pending_replay))
            result.losses += values
            result.replay_losses += replayed_values
            if progress is not None:
                progress.set_postfix(loss=f"{values[-1]:.3f}", refresh=False)
                progress.update(len(values))
            if not all(math.isfinite(v) for v in values + replayed_values):
                result.diverged = True
                break
        if evaluate is not None and eval_every and (step + 1) % eval_every == 0 and step + 1 < len(batches):
            began = time.perf_counter()
            evaluate(step + 1, done + began - start - aside, result.answer_head)
            model.train()
            aside += time.perf_counter() - began
        if save:
            began = time.perf_counter()
            result.seconds = done + began - start - aside
            checkpoints.save(step + 1, model, optimizer, schedule, result)
            aside += time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = done + time.perf_counter() - start - aside
    head.remove()
    return result


class DevCurve:
    """A run's dev evaluations: each a point of its curve (``split`` dev: the loss; the score and
    the training seconds so far when the score is asked for); with ``keep_best``, the trainable parameters of the best
    point (the highest dev score, then the lowest dev loss) are kept to put back after training.
    ``evaluate(answer_head, score)`` gives a point's ``(loss, score or None)``."""

    def __init__(self, model, evaluate, curve: list, keep_best: bool = False):
        self.model, self.evaluate, self.curve, self.keep_best = model, evaluate, curve, keep_best
        self.best: dict | None = None
        self.last: dict | None = None
        self._saved: dict | None = None
        self.points: list[dict] = []

    def at(self, step: int, seconds: float, answer_head: bool, score: bool = True) -> dict:
        beat("evaluating on dev", step)
        loss, value = self.evaluate(answer_head, score)
        self.last = {"step": step, "split": "dev", "loss": loss, "score": value}
        if score:  # a point of the dev curve: where training was when it was measured
            self.last["seconds"] = seconds
        self.curve.append(self.last)
        self.points.append(self.last)
        if score and (self.best is None or _rank(self.last) > _rank(self.best)):
            self.best = self.last
            if self.keep_best:
                self._saved = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return self.last

    def state(self) -> dict:
        """The points so far and, with ``keep_best``, the best one's parameters (for a checkpoint)."""
        best = next((i for i, p in enumerate(self.points) if p is self.best), None)
        return {"points": self.points, "best": best, "saved": self._saved}

    def load_state(self, state: dict) -> None:
        """Go on from a checkpoint's :meth:`state`: its points join the curve."""
        self.points = list(state["points"])
        self.curve.extend(self.points)
        self.last = self.points[-1] if self.points else None
        self.best = None if state["best"] is None else self.points[state["best"]]
        self._saved = state["saved"]

    @torch.no_grad()
    def restore_best(self) -> int | None:
        """Put the best point's parameters back (``keep_best``); its step, or None when the last
        point is the best (nothing to restore)."""
        if self._saved is None or self.best is self.last:
            return None
        for name, p in self.model.named_parameters():
            if name in self._saved:
                p.copy_(self._saved[name])
        return self.best["step"]


def _rank(point: dict) -> tuple:
    score = point["score"] if point["score"] is not None and math.isfinite(point["score"]) else -math.inf
    return score, -point["loss"] if math.isfinite(point["loss"]) else -math.inf


def split_step(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` contiguous runs of near-equal size (a step's micro-batches)."""
    return [items[i * len(items) // parts:(i + 1) * len(items) // parts] for i in range(parts)]


def _read(accelerator, pending: list[torch.Tensor]) -> list[float]:
    """The pending step losses as floats on the host (the mean over processes); ``pending`` emptied."""
    if not pending:
        return []
    stacked = torch.stack(pending).float()
    if accelerator.num_processes > 1:
        stacked = accelerator.reduce(stacked, "mean")
    pending.clear()
    return stacked.cpu().tolist()


def record_replay(mix, result, record: dict) -> None:
    """A replay run's own figures: the replay part's per-step losses (the curve's ``replay``
    split), their tail mean, and how each batch was made up."""
    if mix.replay is None:
        return
    record["curve"] += [{"step": i + 1, "split": "replay", "loss": v} for i, v in enumerate(result.replay_losses)]
    record["metrics"].update(final_replay_loss=tail_mean(result.replay_losses), replay_texts=mix.texts,
                             task_examples_per_step=len(mix.task[0]), replay_sequences_per_step=len(mix.replay[0]))
