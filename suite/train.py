"""The training loop every method runs through: the same batches, optimiser and schedule.

AdamW over the parameters that require grad, linear warm-up then cosine decay, gradient
clipping, bf16 autocast on CUDA (through accelerate). Loss values are read back to the host
only every ``log_every`` steps, so the loop does not wait on the device at every step.

The output head runs only where the loss is (:class:`AnswerHead`): at the positions whose next
token is an answer token. The loss is the same as the model's own (the mean cross-entropy over
answer tokens); the head's matmul and the softmax over the vocabulary are skipped for the
prompt, which on a small model with a large vocabulary is a large share of the step.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import IGNORE, Encoded, collate
from .measure import optimizer_bytes, saved_for_backward, tensor_bytes
from .progress import beat


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


def loss_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Where a batch's loss is, computed on the host before the batch moves to the device (so
    no step waits on the device): rows and columns of the positions whose next token carries a
    label, those labels, and the batch's width."""
    keep = labels[:, 1:] != IGNORE  # position t predicts token t + 1
    rows, cols = keep.nonzero(as_tuple=True)
    return rows, cols, labels[:, 1:][keep], labels.shape[1]


def output_head(model) -> torch.nn.Module | None:
    """The module that turns hidden states into logits (the model's output embeddings)."""
    for module in model.modules():  # the model itself, or the causal LM a wrapper holds
        try:
            head = module.get_output_embeddings()
        except Exception:  # no such method, or one a wrapper does not implement
            continue
        if isinstance(head, torch.nn.Module):
            return head
    return None


class AnswerHead:
    """Runs a model's output head only at the positions that carry loss.

    A forward pre-hook on the head keeps, of the hidden states ``(batch, width', hidden)``, only
    the loss positions, so the head computes ``(n_answer_tokens, vocab)`` logits instead of
    ``(batch, width, vocab)``. A method that prepends virtual tokens (prompt tuning, P-tuning)
    makes ``width' > width``; real tokens are then the last ``width`` positions. The loss is the
    mean cross-entropy over answer tokens, as the model's own ``loss`` is.

    :meth:`check` compares it with the model's own loss on a batch, without dropout; a model
    or method where they differ (a head called twice, tokens inserted elsewhere) is trained
    with full logits instead (``active`` is then False).
    """

    def __init__(self, model):
        self.head = output_head(model)
        self.active = self.head is not None
        self._index = None
        self._calls = 0
        self._handle = self.head.register_forward_pre_hook(self._slice) if self.active else None

    def _slice(self, module, args):
        if self._index is None:
            return None
        self._calls += 1
        rows, cols, _, width = self._index
        hidden = args[0]
        return (hidden[rows, cols + (hidden.shape[1] - width)], *args[1:])

    def loss(self, model, batch: dict, index) -> torch.Tensor:
        """The batch's loss: answer-only logits when active, else the model's own loss."""
        if not self.active:
            return model(**batch).loss
        return F.cross_entropy(self.logits(model, batch, index).float(), index[2])

    def logits(self, model, batch: dict, index) -> torch.Tensor:
        """The logits at the loss positions, ``(n_loss_tokens, vocab)``: from the answer-only
        head when active, else cut from the full logits (a method's prepended positions dropped)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not self.active:
            rows, cols, _, width = index
            return model(input_ids=ids, attention_mask=mask).logits[:, -width:][rows, cols]
        self._index, self._calls = index, 0
        try:
            return model(input_ids=ids, attention_mask=mask).logits
        finally:
            self._index = None

    @torch.no_grad()
    def check(self, model, batch: dict, index) -> bool:
        """Whether the answer-only loss equals the model's own on ``batch`` (dropout off)."""
        if not self.active:
            return False
        was_training = model.training
        model.eval()
        try:
            ours = self.loss(model, batch, index)
            calls = self._calls
            theirs = model(**batch).loss
        except Exception:
            ours, theirs, calls = None, None, 0
        finally:
            model.train(was_training)
        self.active = bool(calls == 1 and ours is not None and theirs is not None
                           and torch.isclose(ours.float(), theirs.float(), rtol=1e-3, atol=1e-5))
        if not self.active:
            self.remove()
        return self.active

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.active = False


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward instead of keeping them (transformers'
    non-reentrant checkpointing, which needs no gradient on the inputs, so frozen embeddings
    work): less memory for activations, about one more forward pass of time."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def make_optimizer(model, settings: TrainSettings, steps: int, method=None, params: dict | None = None):
    """The arena's optimiser for ``model``: AdamW at ``settings.lr`` over every parameter that
    requires grad, with linear warm-up then cosine decay over ``steps``. With a ``method`` (and
    its ``params``), its :meth:`~suite.Method.param_groups`, checked by
    :func:`suite.guards.checked_param_groups` (a :class:`~suite.guards.GuardError` if they are
    not exactly the trainable parameters)."""
    from transformers import get_cosine_schedule_with_warmup

    from .guards import checked_param_groups

    groups = checked_param_groups(method, model, params or {})
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(settings.warmup * steps), steps)
    return optimizer, schedule


def train(model, batches: list[list[Encoded]], pad_id: int, settings: TrainSettings, accelerator, progress=None,
          method=None, params: dict | None = None, replay: list[list[Encoded]] | None = None) -> TrainResult:
    """Train ``model`` on ``batches`` in order; stops early (``diverged``) on a non-finite loss.

    With a ``method`` (and its ``params``), the optimiser takes its parameter groups
    (:func:`make_optimizer`) and its :meth:`~suite.Method.after_step` runs after every step.
    With ``replay`` (one batch of replay sequences per step, :mod:`suite.replay`), each step
    trains on its task batch and its replay batch together, the loss
    :func:`suite.replay.mixed_loss`; each part's loss is kept (``losses``, ``replay_losses``).
    """
    from .replay import mixed_loss

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


def answer_logits(model, batches: list[list[Encoded]], pad_id: int, device, answer_head: bool | None = None):
    """For each batch, ``(items, index, logits)``: the logits at the positions whose next token
    carries a label, ``(n, vocab)``, with their :func:`loss_index` (on ``device``); positions a
    method prepends are dropped. Run under ``torch.inference_mode``, with the model in eval mode.

    The head runs at those positions only (:class:`AnswerHead`) where ``answer_head`` says it
    gives the model's own loss (:attr:`TrainResult.answer_head`, which training checked); ``None``
    checks it on the first batch, ``False`` computes full logits."""
    model.eval()
    head = AnswerHead(model)
    if answer_head is False:
        head.remove()
    try:
        for i, items in enumerate(batches):
            beat("evaluating", i + 1)
            batch = collate(items, pad_id)
            index = loss_index(batch["labels"])
            batch = {k: v.to(device) for k, v in batch.items()}
            index = tuple(t.to(device) for t in index[:3]) + index[3:]
            if i == 0 and answer_head is None:
                head.check(model, batch, index)
            yield items, index, head.logits(model, batch, index)
    finally:
        head.remove()


@torch.inference_mode()
def mean_loss(model, batches: list[list[Encoded]], pad_id: int, device, answer_head: bool | None = None) -> float:
    """Token-weighted mean cross-entropy over answer tokens (the dev loss; a conversation's every
    answer), computed here from the logits (:func:`answer_logits`) rather than taken from the
    model's own ``loss``, so a method that adds a term to its loss (AdaLoRA's orthogonality
    penalty) is scored like every other."""
    total, count = 0.0, 0
    for _, (_, _, labels, _), logits in answer_logits(model, batches, pad_id, device, answer_head):
        total += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        count += len(labels)
    return total / count if count else float("nan")
