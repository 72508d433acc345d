"""Quantized bases (``--quantize nf4|fp4|int8``): the base model's linear layers load as
bitsandbytes 4-bit or 8-bit layers (QLoRA's recipe), through transformers'
``BitsAndBytesConfig`` and peft's ``prepare_model_for_kbit_training``; nothing here quantizes
by hand.

The compute dtype of a 4-bit layer follows ``--dtype``. Which methods run on a quantized base
is each method's declaration (:attr:`suite.Method.quantized_base`); the parent checks it, and
that bitsandbytes is installed, before any cell starts (:func:`check`). A list
(``--quantize none,nf4``) makes the base's precision a dimension of the shootout
(:mod:`suite.config.variants`): each method runs once per entry, and the report names the quantized
ones ``lora @ nf4``.
"""
from __future__ import annotations

from contextlib import contextmanager

from ..errors import UsageError

NONE = "none"
#: the ``--quantize`` choices
CHOICES = (NONE, "nf4", "fp4", "int8")
#: the supported bitsandbytes versions (the ``quantize`` extra of pyproject.toml says the same;
#: tests/models/test_quantize.py checks the two agree and that the installed one is in range)
BNB_RANGE = (">=0.50", "<0.51")
INSTALL = "pip install -e '.[quantize]' in leitai's clone"
#: how close the method's outputs before training must be to the quantized base's own
#: (``starts_from_base``) and what the base view must reproduce (forgetting): relative to the
#: largest logit. 8-bit layers on the CPU compute in float16, so a half-precision tolerance.
RTOL = 1e-2


def parse(value) -> list[str]:
    """``"none,nf4"`` or ``["none", "nf4"]`` -> ``["none", "nf4"]``; a one-line UsageError for
    anything not in :data:`CHOICES`, or an empty list."""
    items = value if isinstance(value, list) else str(value).split(",")
    items = [str(v).strip() for v in items if str(v).strip()]
    for v in items:
        if v not in CHOICES:
            raise UsageError(f"--quantize takes {', '.join(CHOICES[:-1])} or {CHOICES[-1]} "
                             f"(or a comma-separated list of them), not {v!r}")
    if not items:
        raise UsageError("--quantize must name at least one of " + ", ".join(CHOICES))
    return list(dict.fromkeys(items))


def require(quantize: str) -> None:
    """A one-line UsageError saying how to install bitsandbytes when it is missing."""
    import importlib.util

    if quantize != NONE and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"--quantize {quantize} needs bitsandbytes, which is not installed: {INSTALL}")


def check(quantizations: list[str], methods: dict) -> None:
    """Before any cell starts: bitsandbytes is there, and every method declares it can run on a
    quantized base (:attr:`suite.Method.quantized_base`); one line naming the method otherwise."""
    quantized = [q for q in quantizations if q != NONE]
    if not quantized:
        return
    require(quantized[0])
    for name, method in methods.items():
        for q in quantized:
            if q not in kinds(method):
                why = getattr(method, "quantized_base_reason", "") or "it does not declare quantized_base = True"
                raise UsageError(f"method {name!r} cannot run on a quantized base (--quantize {q}): {why}")


def kinds(method) -> tuple[str, ...]:
    """The ``--quantize`` kinds ``method`` declares it runs on (:attr:`suite.Method.quantized_base`:
    True for every one, False for none, or a tuple of them)."""
    declared = getattr(method, "quantized_base", False)
    if declared is True:
        return CHOICES[1:]
    return tuple(declared) if isinstance(declared, (tuple, list, set, frozenset)) else ()


def bnb_config(quantize: str, dtype):
    """transformers' ``BitsAndBytesConfig`` for ``quantize``, computing in ``dtype``."""
    from transformers import BitsAndBytesConfig

    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantize, bnb_4bit_compute_dtype=dtype)


def load(spec, dtype, quantize: str, device, load_float) -> tuple:
    """``(model, tokenizer)`` of ``spec`` with its linear layers quantized, on ``device``.

    A spec whose ``load`` takes ``quantization`` gets transformers' ``from_pretrained`` keyword
    arguments (``quantization_config``, ``device_map``) and loads the quantized model itself
    (a hub model: no float copy is ever held). Any other spec loads in float (``load_float()``:
    :func:`suite.models.loading.load_base`'s float path, passed in so this module does not import it
    back), is saved to a temporary directory and loaded back quantized through
    ``AutoModelForCausalLM``.
    """
    import inspect
    import tempfile

    from transformers import AutoModelForCausalLM

    require(quantize)
    kwargs = {"quantization_config": bnb_config(quantize, dtype), "device_map": {"": str(device)}}
    if "quantization" in inspect.signature(spec.load).parameters:
        with _no_loading_bar():  # the model's own loader; a float load shows none either
            model, tokenizer = spec.load(dtype=dtype, quantization=kwargs)
        return no_cpu_repacking(model), tokenizer
    model, tokenizer = load_float()
    with tempfile.TemporaryDirectory(prefix="leitai-quantize-") as tmp:
        model.save_pretrained(tmp)
        generation = model.generation_config
        del model
        with _no_loading_bar():  # a temporary copy: its progress bar would tell the user nothing
            model = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, **kwargs)
    model.generation_config = generation
    return no_cpu_repacking(model), tokenizer


@contextmanager
def _no_loading_bar():
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def prepare(model, gradient_checkpointing: bool):
    """peft's k-bit preparation: every base parameter frozen, the float ones (norms,
    embeddings) in float32, and input gradients enabled for gradient checkpointing."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def no_cpu_repacking(model):
    """Switch off bitsandbytes' CPU inference repacking of 4-bit weights, in place: on a CPU with
    AVX512-BF16, the first forward pass without gradients (the core's probe and forgetting
    measurement run before training) repacks each 4-bit weight for a kernel that passes no
    gradient back, after which an adapter before it gets none (bitsandbytes 0.50.2; the
    conformance kit's ``quantized`` check found it). Every quantized base the core loads gets
    this, the one timed for inference too, so trained and base models run the same kernels."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
    return model


def quantized_layers(model) -> list[str]:
    """The names of ``model``'s bitsandbytes 4-bit and 8-bit linear layers."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return []
    return [n for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]


def logical_numel(p) -> int:
    """How many weights ``p`` holds: a packed 4-bit parameter stores two per byte, and its
    quantization state knows the original shape; every other tensor its own ``numel``."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(shape.numel()) if shape is not None else p.numel()


def state_bytes(model) -> int:
    """The bytes of the quantization state (4-bit block scales, 8-bit row scales) that is not
    among the parameters: part of what a quantized base weighs."""
    import torch

    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is not None:
            for value in vars(state).values():
                if torch.is_tensor(value):
                    total += value.numel() * value.element_size()
        scb = getattr(weight, "SCB", None)
        if torch.is_tensor(scb):
            total += scb.numel() * scb.element_size()
    return total


def weights_dtype(model) -> str | None:
    """What the base's weights are stored in, measured: the quantized layers' kind (``nf4``,
    ``fp4``, ``int8``, read from the layers themselves) and the float tensors' dtype, joined
    by ``+``, the one holding the most bytes first (as :func:`suite.models.precision.dtype_name`)."""
    from .precision import dtype_name

    size: dict[str, int] = {}
    quantized = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        kind = getattr(state, "quant_type", None) or ("int8" if type(weight).__name__ == "Int8Params" else None)
        if kind:
            size[kind] = size.get(kind, 0) + weight.numel() * weight.element_size()
            quantized.add(id(weight))
    for p in model.parameters():
        if id(p) not in quantized:
            name = dtype_name([p])
            size[name] = size.get(name, 0) + p.numel() * p.element_size()
    return "+".join(sorted(size, key=lambda n: (-size[n], n))) or None
