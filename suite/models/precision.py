"""Numeric precision of a run: the dtype the base model's weights load in (``--dtype``), the
autocast that goes with it, and the dtype of what trains (``--trainable-dtype``).

A frozen base in bfloat16 or float16 halves its weight memory. What trains stays in float32 by
default, as PEFT (``autocast_adapter_dtype``) and LLaMA-Factory keep it: after ``method.apply``
the core casts every parameter that requires grad to float32 (:func:`upcast_trainable`), for
every method alike; under full fine-tuning every parameter trains, so the whole model is float32
again. ``--trainable-dtype bfloat16`` casts them to bfloat16 instead ("pure bf16", LLaMA-Factory's
``pure_bf16``): weights, gradients and AdamW's state in half the bytes, and updates smaller than
bf16's resolution at a weight's size round away. Forward passes then mix dtypes, which autocast
reconciles (:func:`mixed_precision`).
"""
from __future__ import annotations

import torch

#: the ``--dtype`` choices besides ``auto``, by name
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: accelerate's mixed-precision name of a half dtype
_AMP = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The dtype the base model loads in for ``--dtype setting`` on ``device``: ``auto`` is
    float32 on the CPU and bfloat16 on CUDA (float16 on a card without bfloat16)."""
    if setting != "auto":
        return DTYPES[setting]
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def mixed_precision(dtype: torch.dtype, device: torch.device, trainable: torch.dtype = torch.float32) -> str:
    """accelerate's ``mixed_precision`` for a base in ``dtype`` on ``device``: autocast in the
    base's own half dtype (float32 trainable parameters meet half-precision activations in
    every method that puts them inside the base's modules: BitFit's biases, LN tuning's norms);
    on CUDA a float32 base trains under bf16 autocast; a float32 base on the CPU under none.
    accelerate has no float16 autocast on the CPU (and torch's breaks P-tuning's LSTM there),
    so a float16 base on the CPU runs without one. What trains in bfloat16 (``trainable``) meets
    a float32 base's activations under bf16 autocast."""
    if trainable == torch.bfloat16 and dtype != torch.float16:
        return "bf16"
    if dtype == torch.float16:
        return "no" if device.type == "cpu" else "fp16"
    if dtype == torch.bfloat16:
        return "bf16"
    return "no" if device.type == "cpu" else "bf16"


def precision_label(dtype: torch.dtype, amp: str) -> str:
    """What the record's ``env.dtype`` says: the base weights' dtype and the autocast, e.g.
    ``float32``, ``float32 + bf16 autocast`` or ``bfloat16 + bf16 autocast``."""
    return _name(dtype) if amp == "no" else f"{_name(dtype)} + {amp} autocast"


def dtype_name(tensors) -> str | None:
    """The dtype of ``tensors`` by name (``bfloat16``); several joined by ``+``, the one holding
    the most bytes first; None when there are none."""
    size: dict[str, int] = {}
    for t in tensors:
        size[_name(t.dtype)] = size.get(_name(t.dtype), 0) + t.numel() * t.element_size()
    return "+".join(sorted(size, key=lambda n: (-size[n], n))) or None


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cast_weights(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model``'s floating-point parameters to ``dtype`` in place (and its config's
    ``dtype``), as ``from_pretrained(dtype=...)`` loads them: buffers keep their dtype, so
    rotary frequency tables stay float32."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    if getattr(model, "config", None) is not None and hasattr(model.config, "dtype"):
        model.config.dtype = dtype
    return model


def upcast_trainable(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """Cast every floating-point parameter that requires grad to ``dtype`` (``--trainable-dtype``,
    float32 by default), in place: what trains, and its gradients and optimiser state, is in that
    dtype whatever the base's."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
