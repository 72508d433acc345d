"""Forgetting: how much a trained model lost of the base model's language, measured as the
change of its cross-entropy per token on a fixed side corpus (running text no task trains on).

The side corpus comes from a plugin (:class:`suite.data.side_corpus.SideCorpus`). The loss is computed
here from the logits, not taken from the model's own loss, so every method is scored by the
same formula: positions a method prepends (prompt tuning's virtual tokens) are dropped, and
each sentence's tokens after the first are predicted from the ones before.

Nothing is taken from the plugin: "before" is the untouched base model's figure, measured
before the method is applied; a method's :meth:`~suite.Method.base_view` (the base with the
method switched off) must reproduce it before and after training, or the cell fails.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batches import IGNORE
from ..errors import GuardError
from ..progress import beat


@torch.inference_mode()
def cross_entropy(model, batches: list[dict]) -> float:
    """Mean cross-entropy per predicted token of ``model`` over ``batches`` (nats)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            beat("measuring forgetting")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]
            target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=IGNORE, reduction="sum"
            )
            total += float(loss)
            count += int((target != IGNORE).sum())
    finally:
        model.train(was_training)
    return total / count


#: side-corpus texts are cut to this many tokens and scored this many at a time
SIDE_MAX_TOKENS = 128
SIDE_BATCH = 8


@dataclass
class Forgetting:
    """Forgetting of one run, measured by the core: the untouched base model's side-corpus
    loss before the method is applied, the trained model's after training, and the check that
    the method's :meth:`~suite.Method.base_view` (the base with the method switched off)
    reproduces the base model's figure before and after training (or the cell fails)."""

    method: object
    side: list | None  # side-corpus batches, or None when forgetting is not measured
    rtol: float  # how close the base view's figure must be to the base model's
    before: float | None = None

    def measure_base(self, base) -> None:
        """The untouched base model's side-corpus loss (call before the method is applied)."""
        if self.side:
            self.before = cross_entropy(base, self.side)

    def view_loss(self, model, when: str) -> float | None:
        """The side-corpus loss of the method's base view; raises GuardError if it is not the base's."""
        view = self.method.base_view(model) if self.side else None
        if view is None:
            return None
        with view as base:
            loss = cross_entropy(base, self.side)
        if abs(loss - self.before) > 1e-6 + self.rtol * abs(self.before):
            raise GuardError(
                f"method {self.method.name!r}: with the method switched off ({when}) the side-corpus loss is "
                f"{loss:.6f}, the untouched base model's is {self.before:.6f}; its base_view is not the base"
            )
        return loss

    def after(self, model) -> dict:
        """The trained model's figures (and its base view's, checked again)."""
        if not self.side:
            return {}
        after = cross_entropy(model, self.side)
        return {"forgetting_before": self.before, "forgetting_after": after,
                "forgetting": after - self.before, "forgetting_view_after": self.view_loss(model, "after training")}
