"""The arena's own checks on the model a method hands back.

The cell runs them on every run before training (a method that breaks them gets its cell
``failed`` with the reason, and the shootout goes on); the conformance kit
(:mod:`suite.testing`) runs the same ones, and more, on tiny models. None of them takes the
method's word: they look at the parameters and the outputs.
"""
from __future__ import annotations

import torch

from .measure import count_parameters


class GuardError(Exception):
    """A method broke the arena's rules (e.g. left frozen-declared base weights trainable)."""


def leaked_base_parameters(method, base_named: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, int]]:
    """``(name, numel)`` of base parameters the method declares frozen but left trainable."""
    return [(n, p.numel()) for n, p in base_named if p.requires_grad and method.keeps_frozen(n)]


def check_method_output(method, base_named: list[tuple[str, torch.nn.Parameter]], model) -> int:
    """Check what ``method.apply`` returned; return the trainable parameter count.

    ``base_named`` is ``list(base.named_parameters())`` taken before the method was applied.
    Raises :class:`GuardError` when nothing is trainable, or when base parameters that the
    method declares frozen (:meth:`suite.Method.keeps_frozen`) were left trainable.
    """
    trainable = count_parameters(model, trainable_only=True)
    if trainable == 0:
        raise GuardError(f"method {method.name!r} left no trainable parameters")
    leaked = leaked_base_parameters(method, base_named)
    if leaked:
        total = sum(n for _, n in leaked)
        raise GuardError(
            f"method {method.name!r} declares the base frozen but left {total:,} base parameters "
            f"trainable (e.g. {leaked[0][0]})"
        )
    return trainable


def probe_batch(examples: list, pad_id: int, count: int = 2, max_tokens: int = 32) -> dict:
    """A small batch to compare outputs on: the first ``count`` examples, cut to ``max_tokens``.

    Small on purpose: the base model is still on the CPU in float32 when the guard runs, and
    may be a large one.
    """
    from .data import Encoded, collate

    cut = [Encoded(e.example_id, (e.prompt + e.answer)[:max_tokens], []) for e in examples[:count]]
    return collate(cut, pad_id)


@torch.no_grad()
def real_logits(model, batch: dict) -> torch.Tensor:
    """Logits at the real (unpadded) positions of ``batch``, computed in eval mode.

    Shape ``(real tokens, vocabulary)``; raises ValueError when the model returns logits that
    do not line up with ``input_ids`` (methods that prepend positions, like prompt tuning).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    finally:
        model.train(was_training)
    if logits.shape[:2] != batch["input_ids"].shape:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} for input_ids of shape {tuple(batch['input_ids'].shape)}"
        )
    return logits[batch["attention_mask"].to(device).bool()].float()


def starts_from_base_error(model, batch: dict, base: torch.Tensor, atol: float = 1e-4) -> str | None:
    """Why ``model`` does not compute the base model's logits ``base`` on ``batch``, or None.

    ``base`` is :func:`real_logits` of the base model, taken before the method was applied.
    Used only for methods that claim :attr:`suite.Method.starts_from_base`.
    """
    try:
        after = real_logits(model, batch)
    except ValueError as e:
        return f"claims to start from the base model, but its forward returns {e}"
    diff = (after - base.to(after.device)).abs().max().item()
    if not diff <= atol + 1e-4 * base.abs().max().item():
        return (
            "claims to start from the base model, but before training its "
            f"logits differ from the base model's by up to {diff:.3g}"
        )
    return None
