"""The training loop every method runs through: the same batches, optimiser and schedule.

AdamW over the parameters that require grad, linear warm-up then cosine decay, gradient
clipping, bf16 autocast on CUDA (through accelerate). Loss values are read back to the host
only every ``log_every`` steps, so the loop does not wait on the device at every step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .data import Encoded, collate
from .measure import optimizer_bytes, saved_for_backward, tensor_bytes


@dataclass
class TrainSettings:
    lr: float
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)  # one per step actually taken
    tokens: int = 0  # non-padding tokens seen by training steps
    seconds: float = 0.0
    diverged: bool = False
    breakdown: dict = field(default_factory=dict)  # grads/optimizer/activation bytes


class Diverged(Exception):
    pass


def make_optimizer(model, settings: TrainSettings, steps: int):
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(settings.warmup * steps), steps)
    return optimizer, schedule


def train(model, batches: list[list[Encoded]], pad_id: int, settings: TrainSettings, accelerator, progress=None) -> TrainResult:
    """Train ``model`` on ``batches`` in order; stops early (``diverged``) on a non-finite loss."""
    optimizer, schedule = make_optimizer(model, settings, len(batches))
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    trainable = [p for p in model.parameters() if p.requires_grad]
    all_params = list(model.parameters())
    device = accelerator.device
    result = TrainResult()
    pending: list[torch.Tensor] = []
    model.train()
    start = time.perf_counter()
    rank, world = accelerator.process_index, accelerator.num_processes
    for step, items in enumerate(batches):
        items = items[rank::world] if world > 1 else items  # data parallel: each process its share
        batch = collate(items, pad_id)
        result.tokens += sum(e.length for e in items)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if step == 0:  # measure what one step keeps for backward, once
            with saved_for_backward(exclude=all_params) as saved:
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss
        accelerator.backward(loss)
        if step == 0:
            result.breakdown["activation_bytes"] = saved["bytes"]
            result.breakdown["grads_bytes"] = tensor_bytes(p.grad for p in trainable if p.grad is not None)
        if settings.grad_clip:
            accelerator.clip_grad_norm_(trainable, settings.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            result.breakdown["optimizer_bytes"] = optimizer_bytes(optimizer)
        pending.append(loss.detach())
        if (step + 1) % settings.log_every == 0 or step + 1 == len(batches):
            stacked = torch.stack(pending).float()
            if world > 1:
                stacked = accelerator.reduce(stacked, "mean")
            values = stacked.cpu().tolist()
            pending.clear()
            result.losses += values
            if progress is not None:
                progress.set_postfix(loss=f"{values[-1]:.3f}", refresh=False)
                progress.update(len(values))
            if not all(math.isfinite(v) for v in values):
                result.diverged = True
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - start
    return result


@torch.inference_mode()
def mean_loss(model, batches: list[list[Encoded]], pad_id: int, device) -> float:
    """Token-weighted mean loss over answer tokens (the dev loss)."""
    model.eval()
    total, count = 0.0, 0
    for items in batches:
        batch = {k: v.to(device) for k, v in collate(items, pad_id).items()}
        n = sum(len(e.answer) for e in items)
        total += model(**batch).loss.float().item() * n
        count += n
    return total / count if count else float("nan")
