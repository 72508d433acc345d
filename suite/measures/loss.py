"""The loss at answer positions, as training and every measure compute it.

:func:`loss_index` says where a batch's loss is; :class:`AnswerHead` runs the output head only
there (the loss is the same as the model's own, the mean cross-entropy over answer tokens; the
head's matmul and the softmax over the vocabulary are skipped for the prompt, which on a small
model with a large vocabulary is a large share of a step); :func:`answer_logits` and
:func:`mean_loss` give an evaluation's logits and its dev loss the same way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.batches import IGNORE, Encoded, collate
from ..progress import beat


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


def mixed_loss(logits, targets, is_task, n_task: int, n_replay: int, task_tokens: int | None = None,
               replay_tokens: int | None = None):
    """(step loss, task loss, replay loss) from the logits at a batch's loss positions:
    each part the mean cross-entropy over its own tokens (``is_task``: a loss position is a
    task example's), the step loss their mean weighted by sequences (``n_task`` task examples,
    ``n_replay`` replay sequences in the step). For a micro-batch, ``task_tokens`` and
    ``replay_tokens`` are the whole step's: each part is then this micro-batch's share of the
    step's mean, and the shares add up to the step's losses."""
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    if task_tokens is None:
        task, replay = ce[is_task].mean(), ce[~is_task].mean()
    else:
        task, replay = ce[is_task].sum() / task_tokens, ce[~is_task].sum() / replay_tokens
    return (n_task * task + n_replay * replay) / (n_task + n_replay), task, replay
