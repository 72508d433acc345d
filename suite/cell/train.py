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
from ..measures.resources import optimizer_bytes, saved_for_backward, tail_mean, tensor_bytes
from ..progress import beat


@dataclass
class TrainSettings:
    lr: float
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10


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
    """The arena's optimiser for ``model``: AdamW at ``settings.lr`` over every parameter that
    requires grad, with linear warm-up then cosine decay over ``steps``. With a ``method`` (and
    its ``params``), its :meth:`~suite.Method.param_groups`, checked by
    :func:`suite.methods.guards.checked_param_groups` (a :class:`~suite.errors.GuardError` if they are
    not exactly the trainable parameters)."""
    from transformers import get_cosine_schedule_with_warmup

    from ..methods.guards import checked_param_groups

    groups = checked_param_groups(method, model, params or {})
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(settings.warmup * steps), steps)
    return optimizer, schedule


def train(model, batches: list[list[Encoded]], pad_id: int, settings: TrainSettings, accelerator, progress=None,
          method=None, params: dict | None = None, replay: list[list[Encoded]] | None = None) -> TrainResult:
    """Train ``model`` on ``batches`` in order; stops early (``diverged``) on a non-finite loss.

    With a ``method`` (and its ``params``), the optimiser takes its parameter groups
    (:func:`make_optimizer`) and its :meth:`~suite.Method.after_step` runs after every step.
    With ``replay`` (one batch of replay sequences per step, :mod:`suite.data.replay`), each step
    trains on its task batch and its replay batch together, the loss
    :func:`suite.measures.loss.mixed_loss`; each part's loss is kept (``losses``, ``replay_losses``).
    """
    optimizer, schedule = make_optimizer(model, settings, len(batches), method, params)
    unwrapped = model  # what the method built; accelerate may wrap it (DDP)
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    trainable = [p for p in model.parameters() if p.requires_grad]
    all_params = list(model.parameters())
    device = accelerator.device
    result = TrainResult()
    pending: list[torch.Tensor] = []
    pending_replay: list[torch.Tensor] = []
    model.train()
    rank, world = accelerator.process_index, accelerator.num_processes
    head = AnswerHead(accelerator.unwrap_model(model))
    if batches:  # set-up, not training: does the answer-only head give the model's own loss?
        first = collate(batches[0][rank::world] if world > 1 else batches[0], pad_id)
        index = tuple(t.to(device) for t in loss_index(first["labels"])[:3]) + (first["labels"].shape[1],)
        result.answer_head = head.check(model, {k: v.to(device) for k, v in first.items()}, index)
    start = time.perf_counter()
    for step, items in enumerate(batches):
        beat("training", step + 1, len(batches))
        items = items[rank::world] if world > 1 else items  # data parallel: each process its share
        extra = (replay[step][rank::world] if world > 1 else replay[step]) if replay else []
        batch = collate(items + extra, pad_id)  # task examples first, then the replay sequences
        index = loss_index(batch["labels"])
        is_task = (index[0] < len(items)).to(device, non_blocking=True) if extra else None
        result.tokens += sum(e.length for e in items + extra)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        index = tuple(t.to(device, non_blocking=True) for t in index[:3]) + index[3:]

        # measure what one step keeps for backward, once
        with saved_for_backward(exclude=all_params) if step == 0 else nullcontext() as saved:
            if extra:
                loss, task_loss, replayed = mixed_loss(head.logits(model, batch, index), index[2], is_task,
                                                       len(items), len(extra))
                pending_replay.append(replayed.detach())
            else:
                loss = task_loss = head.loss(model, batch, index)
        accelerator.backward(loss)
        if step == 0:
            result.breakdown["activation_bytes"] = saved["bytes"]
            result.breakdown["grads_bytes"] = tensor_bytes(p.grad for p in trainable if p.grad is not None)
        if settings.grad_clip:
            accelerator.clip_grad_norm_(trainable, settings.grad_clip)
        optimizer.step()
        schedule.step()
        if method is not None:
            method.after_step(unwrapped, step, len(batches))
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            result.breakdown["optimizer_bytes"] = optimizer_bytes(optimizer)
        pending.append(task_loss.detach())
        if (step + 1) % settings.log_every == 0 or step + 1 == len(batches):
            values, replayed = (_read(accelerator, p) for p in (pending, pending_replay))
            result.losses += values
            result.replay_losses += replayed
            if progress is not None:
                progress.set_postfix(loss=f"{values[-1]:.3f}", refresh=False)
                progress.update(len(values))
            if not all(math.isfinite(v) for v in values + replayed):
                result.diverged = True
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    head.remove()
    return result


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
