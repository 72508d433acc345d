"""The arena's own checks on the model a method hands back.

The cell runs them on every run before training (a method that breaks them gets its cell
``failed`` with the reason, and the shootout goes on); the conformance kit
(:mod:`suite.testing`) runs the same ones, and more, on tiny models. None of them takes the
method's word: they look at the parameters and the outputs.
"""
from __future__ import annotations

import torch

from ..errors import GuardError
from ..measures.resources import count_parameters, unique_parameters


def trained_base_names(method, base: torch.nn.Module, params: dict) -> set[str]:
    """What ``method`` declares it trains of ``base`` (:meth:`suite.Method.trained_base`),
    checked: call it with the fresh base model, before the method is applied. Raises
    :class:`GuardError` when the answer is not a set of ``base``'s parameter names."""
    trained = method.trained_base(base, params)
    if not isinstance(trained, (set, frozenset)) or not all(isinstance(n, str) for n in trained):
        raise GuardError(f"method {method.name!r}: trained_base must return a set of parameter names, "
                         f"not {type(trained).__name__}")
    unknown = sorted(set(trained) - {n for n, _ in base.named_parameters()})
    if unknown:
        raise GuardError(f"method {method.name!r}: trained_base names {len(unknown)} parameters the base "
                         f"model does not have (e.g. {unknown[0]})")
    return set(trained)


def leaked_base_parameters(trained: set[str], base_named: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, int]]:
    """``(name, numel)`` of base parameters that require grad but are not in ``trained`` (what
    the method declared it trains, :func:`trained_base_names`)."""
    return [(n, p.numel()) for n, p in base_named if p.requires_grad and n not in trained]


def check_method_output(method, base_named: list[tuple[str, torch.nn.Parameter]], model, trained: set[str]) -> int:
    """Check what ``method.apply`` returned; return the trainable parameter count.

    ``base_named`` is ``list(base.named_parameters())`` and ``trained`` the names the method
    declared it trains (:func:`trained_base_names`), both taken before the method was applied.
    Raises :class:`GuardError` when nothing is trainable, or when other base parameters were
    left trainable.
    """
    trainable = count_parameters(model, trainable_only=True)
    if trainable == 0:
        raise GuardError(f"method {method.name!r} left no trainable parameters")
    leaked = leaked_base_parameters(trained, base_named)
    if leaked:
        total = sum(n for _, n in leaked)
        if trained:
            raise GuardError(f"method {method.name!r} left {total:,} base parameters trainable that its "
                             f"trained_base does not declare (e.g. {leaked[0][0]})")
        raise GuardError(
            f"method {method.name!r} declares the base frozen but left {total:,} base parameters "
            f"trainable (e.g. {leaked[0][0]})"
        )
    return trainable


GROUP_KEYS = {"params", "lr", "weight_decay"}


def checked_param_groups(method, model: torch.nn.Module, params: dict) -> list[dict]:
    """The optimiser's parameter groups for ``model``: the method's
    (:meth:`suite.Method.param_groups`), checked, or one group of every parameter that requires
    grad. Raises :class:`GuardError` unless the groups hold each parameter that requires grad
    exactly once and nothing else, with only ``params``, ``lr`` and ``weight_decay`` keys."""
    trainable = unique_parameters(model, trainable_only=True)
    groups = method.param_groups(model, params) if method is not None else None
    if groups is None:
        return [{"params": trainable}]

    def fail(problem: str):
        return GuardError(f"method {method.name!r}: param_groups {problem}")

    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) and "params" in g for g in groups):
        raise fail("must return a list of dicts, each with 'params'")
    names = {id(p): n for n, p in model.named_parameters()}
    wanted = {id(p) for p in trainable}
    seen: set[int] = set()
    out = []
    for group in groups:
        extra = set(group) - GROUP_KEYS
        if extra:
            raise fail(f"sets {', '.join(sorted(extra))}: only lr and weight_decay may differ between groups")
        for key in GROUP_KEYS - {"params"}:
            value = group.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise fail(f"gives {key}={value!r}; it must be a number >= 0")
        tensors = list(group["params"])
        for p in tensors:
            if id(p) not in wanted:
                raise fail(f"holds a tensor that does not require grad or is not the model's "
                           f"(e.g. {names.get(id(p), 'a tensor of shape ' + str(tuple(p.shape)))})")
            if id(p) in seen:
                raise fail(f"holds {names.get(id(p), '?')} in more than one group")
            seen.add(id(p))
        if tensors:
            out.append({**group, "params": tensors})
    missing = [p for p in trainable if id(p) not in seen]
    if missing:
        raise fail(f"leaves {len(missing)} trainable tensors out of every group (e.g. {names.get(id(missing[0]), '?')})")
    return out


def probe_batch(examples: list, pad_id: int, count: int = 2, max_tokens: int = 32) -> dict:
    """A small batch to compare outputs on: the first ``count`` examples, cut to ``max_tokens``.

    Small on purpose: the base model is still on the CPU (in ``--dtype``, float32 by default)
    when the guard runs, and may be a large one.
    """
    from ..data.batches import Encoded, collate

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


def starts_from_base_error(model, batch: dict, base: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4) -> str | None:
    """Why ``model`` does not compute the base model's logits ``base`` on ``batch``, or None:
    they may differ by ``atol`` plus ``rtol`` of the largest logit (on a half-precision base,
    where a method's no-op, DoRA's norm ratio, rounds to a unit in the last place, the cell
    passes a larger ``rtol``).

    ``base`` is :func:`real_logits` of the base model, taken before the method was applied.
    Used only for methods that claim :attr:`suite.Method.starts_from_base`.
    """
    try:
        after = real_logits(model, batch)
    except ValueError as e:
        return f"claims to start from the base model, but its forward returns {e}"
    diff = (after - base.to(after.device)).abs().max().item()
    if not diff <= atol + rtol * base.abs().max().item():
        return (
            "claims to start from the base model, but before training its "
            f"logits differ from the base model's by up to {diff:.3g}"
        )
    return None
