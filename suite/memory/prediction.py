"""Training memory predicted before any weight exists: ``leitai plan``.

The model is built from its config on the meta device (shapes, no values, no memory), the
method's real ``apply`` runs on it, then one real training step's forward and backward at the
asked shape, through the arena's own loss path (:class:`suite.measures.loss.AnswerHead`). What is
counted is what a cell measures (:mod:`suite.measures.resources`, :func:`suite.cell.train.train`):

- weights: every unique parameter, after the core casts what trains to float32;
- gradients: every trainable parameter's ``.grad`` after backward;
- optimizer: AdamW's two states per parameter that has a gradient, in its dtype, plus its
  0-dim float32 ``step`` (torch's AdamW on a non-capturable device);
- activations: storages autograd saves for backward, each storage once however many ops save
  it or views of it, parameters excluded; during backward a storage is freed when the last node
  that saved it has run, while gradients accumulate, and the highest point of the two together
  is the step's dynamic peak;
- the largest transient: the logits (answer tokens x vocabulary), not saved but alive when the
  loss is computed.

The predicted peak is weights + optimizer + dynamic peak + transient (the optimizer's state is
there from the second step on). Data-dependent steps (``.item()`` on an attention mask,
``nonzero`` on labels) run on real values: the integer inputs are computed on the CPU beside
their meta shadows (:class:`suite.memory.tracing.Shadow`), so transformers' masking code takes the same branch as
in a real run.
"""
from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import asdict, dataclass, field

import torch

from ..errors import UsageError
from .tracing import MetaAutocast, SavedTensors, Shadow, meta_batch


@dataclass
class MethodPlan:
    """One method's predicted training memory (bytes), as ``leitai plan`` prints it."""

    method: str
    trainable_params: int = 0
    weights_bytes: int = 0
    grads_bytes: int = 0
    optimizer_bytes: int = 0
    activation_bytes: int = 0  # saved for backward at the end of the forward (what a cell records)
    peak_activation_bytes: int = 0  # the highest point of saved tensors + gradients during backward
    transient_bytes: int = 0  # the logits: answer tokens x vocabulary
    predicted_peak_bytes: int = 0
    fits: bool | None = None
    max_batch_size: int | None = None
    answer_head: bool = False
    error: str | None = None
    notes: list = field(default_factory=list)

    def row(self) -> dict:
        return asdict(self)


def adamw_state_bytes(params) -> int:
    """torch's AdamW state for ``params`` (those with a gradient): ``exp_avg`` and
    ``exp_avg_sq`` like the parameter, and a 0-dim float32 ``step``."""
    return sum(2 * p.numel() * p.element_size() + 4 for p in params)


#: bitsandbytes' 8-bit AdamW: a parameter of fewer values keeps 32-bit state (``min_8bit_size``)
MIN_8BIT_SIZE = 4096
#: ... and the 8-bit states are quantised in blocks of this many values, each with a float32 ``absmax``
BLOCK_8BIT = 256


def optimizer_state_bytes(numels: list[int], element_size: int, optimizer: str = "adamw") -> int:
    """The optimiser's state for parameters of ``numels`` values (each ``element_size`` bytes):
    torch's AdamW (:func:`adamw_state_bytes`), or bitsandbytes' 8-bit AdamW: two uint8 states and
    two float32 block maxima per 256 values, 32-bit states for a parameter under 4,096 values,
    and its two 256-entry quantisation maps once (every parameter shares them)."""
    if optimizer == "adamw":
        return sum(2 * n * element_size + 4 for n in numels)
    big = [n for n in numels if n >= MIN_8BIT_SIZE]
    small = [n for n in numels if n < MIN_8BIT_SIZE]
    return (sum(2 * n + 2 * 4 * math.ceil(n / BLOCK_8BIT) for n in big) + sum(2 * 4 * n for n in small)
            + (2 * 256 * 4 if big else 0))


def shard_numel(shape: torch.Size, processes: int) -> int:
    """The values of a parameter of ``shape`` that the first (the largest) of ``processes`` holds
    when FSDP shards it: its first ``ceil(rows / processes)`` rows (``torch.chunk``)."""
    if not len(shape):
        return 1
    rows = shape[0]
    return min(math.ceil(rows / processes), rows) * (math.prod(shape) // max(rows, 1))


def synthetic_batch(batch_size: int, max_len: int, vocab: int, answer: float = 1.0) -> dict:
    """``batch_size`` unpadded examples of ``max_len`` tokens whose last ``answer`` fraction
    carries the loss (1.0: every token after the first, the largest logits)."""
    from ..data.batches import IGNORE

    ids = (torch.arange(batch_size * max_len).reshape(batch_size, max_len) * 7 + 3).remainder(max(vocab - 3, 1)) + 3
    labels = ids.clone()
    labels[:, : max_len - max(1, round(answer * (max_len - 1)))] = IGNORE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def predict(method, params: dict, config, batch: dict, dtype: torch.dtype = torch.float32,
            gradient_checkpointing: bool = False, device: str = "cpu", trust_remote_code: bool = False,
            base=None, trainable_dtype: torch.dtype = torch.float32, optimizer: str = "adamw", processes: int = 1,
            shard: str = "none") -> MethodPlan:
    """Predict one training step of ``method`` (with ``params``) on the model of ``config``
    built on the meta device in ``dtype`` (or ``base``, a meta model given), on ``batch`` (CPU
    tensors: input_ids, attention_mask, labels, as :func:`suite.data.batches.collate` makes them:
    one process's micro-batch). What trains is in ``trainable_dtype``, ``optimizer`` holds its
    state; with ``shard`` ``fsdp`` over ``processes`` the weights, gradients and optimiser state
    are what the largest process holds, and the peak adds the gathered layers (the unit being
    computed and the next). Raises what building the model or applying the method raises."""
    from contextlib import nullcontext

    from ..measures.loss import AnswerHead, loss_index
    from ..measures.resources import count_parameters, tensor_bytes, unique_parameters
    from ..models.loading import enable_gradient_checkpointing
    from ..models.precision import mixed_precision, upcast_trainable

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        mixed_precision(dtype, torch.device(device), trainable_dtype))
    shadow = Shadow(device, amp)
    plan = MethodPlan(method.name)
    autocast = (lambda: MetaAutocast(amp)) if amp is not None else nullcontext
    if base is None:
        base = build_meta(config, dtype, trust_remote_code)
    if gradient_checkpointing:
        enable_gradient_checkpointing(base)
        if amp is not None:  # backward of a meta tensor runs on another thread, without this thread's modes
            _recompute_under(base, lambda: MetaAutocast(amp))
    model = _apply_on_meta(method, base, params)  # outside the shadow mode: every op through it costs time
    upcast_trainable(model, trainable_dtype)
    with shadow:
        plan.trainable_params = count_parameters(model, trainable_only=True)
        plan.weights_bytes = tensor_bytes(unique_parameters(model))
        trainable = [p for p in model.parameters() if p.requires_grad]
        counter = SavedTensors(exclude=list(model.parameters()))
        handles = [p.register_post_accumulate_grad_hook(counter.grad_accumulated) for p in trainable]
        head = AnswerHead(model)
        logits_bytes, head_hook = [], None
        if head.active:
            head_hook = head.head.register_forward_hook(
                lambda m, a, out: logits_bytes.append(out.numel() * out.element_size()))
        inputs = meta_batch(shadow, batch)
        if head.active and not _plain_cross_entropy(model, inputs):  # AnswerHead.check would find them differ
            head.remove()
        model.train()
        index = loss_index(inputs["labels"])  # on the shadowed labels: rows and columns share a storage, as in a cell
        try:
            with counter.hooks():
                logits_bytes.clear()
                with autocast():
                    loss = head.loss(model, inputs, index) if head.active else None
                    if head.active and head._calls != 1:  # as AnswerHead.check finds it: the model's own loss
                        head.remove()
                        loss = None
                    if loss is None:
                        logits_bytes.clear()
                        loss = model(**inputs).loss
                plan.activation_bytes = counter.settle()
                plan.answer_head = head.active
                with autocast():  # checkpointing's recomputation runs under the forward's autocast
                    loss.backward()
        finally:
            for h in handles:
                h.remove()
            if head_hook is not None:
                head_hook.remove()
            head.remove()
    with_grad = [p for p in trainable if p.grad is not None]
    plan.grads_bytes = tensor_bytes(p.grad for p in with_grad)
    numels = [p.numel() for p in with_grad]
    gathered = 0
    if shard != "none":  # what the largest process holds, and one unit being computed and the next, gathered
        from ..models.architecture import decoder_layers

        # a method that reads its trained parameters whole keeps them so (Method.shards_trained)
        whole = {id(p) for p in trainable} if not getattr(method, "shards_trained", True) else set()
        held = lambda p: p.numel() if id(p) in whole else shard_numel(p.shape, processes)  # noqa: E731
        sharded = lambda ps: [p for p in ps if id(p) not in whole]  # noqa: E731
        plan.weights_bytes = sum(held(p) * p.element_size() for p in unique_parameters(model))
        plan.grads_bytes = sum(held(p) * p.element_size() for p in with_grad)
        numels = [held(p) for p in with_grad]
        layers = list(decoder_layers(model))
        gathered = 2 * max((tensor_bytes(sharded(layer.parameters())) for layer in layers), default=0)
        # backward keeps the local shards of the gradients, and one unit's whole ones until they are reduce-scattered
        unit_grads = max((tensor_bytes(p for p in sharded(layer.parameters()) if p.grad is not None) for layer in layers),
                         default=0)
        counter.peak = plan.activation_bytes + plan.grads_bytes + unit_grads
    plan.optimizer_bytes = optimizer_state_bytes(numels, with_grad[0].element_size() if with_grad else 4, optimizer)
    plan.peak_activation_bytes = counter.peak
    # the head's output, and its float32 copy for the loss when it is in half precision
    logits = logits_bytes[0] if logits_bytes else _full_logits_bytes(config, batch, dtype)
    plan.transient_bytes = logits * (1 if dtype == torch.float32 else 3)
    plan.predicted_peak_bytes = (plan.weights_bytes + plan.optimizer_bytes + plan.peak_activation_bytes
                                 + plan.transient_bytes + gathered)
    return plan


def _apply_on_meta(method, base, params: dict):
    """``method.apply`` with what it creates on the meta device, as the base is: nothing is
    allocated, and peft's move of a new adapter to its base layer's device keeps each parameter
    as the method made it (a copy to another device re-wraps a frozen one, AdaLoRA's ``ranknum``,
    as a trainable Parameter, which a real cell, applied on the CPU, never has). A method whose
    initialisation reads values (BOFT's) is applied outside the meta context instead."""
    try:
        with torch.device("meta"):
            return method.apply(copy.deepcopy(base), dict(params))
    except (RuntimeError, NotImplementedError):
        return method.apply(base, dict(params))


def _recompute_under(model, context) -> None:
    """Gradient checkpointing whose recomputation runs under ``context()`` (as torch's own
    checkpoint restores the forward's autocast for it)."""
    from contextlib import nullcontext

    kwargs = {"use_reentrant": False, "context_fn": lambda: (nullcontext(), context())}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _plain_cross_entropy(model, inputs: dict) -> bool:
    """Whether the model's own loss (eval mode, as :meth:`AnswerHead.check` runs it) is the
    cross-entropy alone, which the answer-only head gives too; a method that adds a term
    (AdaLoRA's orthogonality penalty) is trained on the model's own loss. :meth:`check`
    compares values; here there are none, so the last node of the loss's graph decides."""
    was_training = model.training
    model.eval()
    try:
        loss = model(**inputs).loss
    finally:
        model.train(was_training)
    node = loss.grad_fn if loss is not None else None
    while node is not None and node.name() == "DivBackward0":  # a sum over tokens divided by their number
        node = node.next_functions[0][0]
    return node is not None and node.name() == "NllLossBackward0"


def _full_logits_bytes(config, batch: dict, dtype: torch.dtype) -> int:
    vocab = getattr(config.get_text_config(), "vocab_size", 0) or 0
    return batch["input_ids"].numel() * vocab * torch.empty((), dtype=dtype).element_size()


def build_meta(config, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """The causal LM of ``config`` on the meta device with its floating-point weights in
    ``dtype``; a one-line ``ValueError`` when transformers has no causal-LM class for it."""
    from transformers import AutoModelForCausalLM

    from ..models.precision import cast_weights

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"no causal-LM class for this config ({first})") from None
    return cast_weights(model, dtype)


def fit(plan: MethodPlan, batch_size: int, budget: int | None) -> MethodPlan:
    """Whether ``plan`` fits ``budget`` bytes, and the largest batch size that does at the same
    length: weights, gradients and optimizer state stay, activations and logits grow with the
    batch (linearly: one row's share of them times the batch size)."""
    if budget is None or plan.error:
        return plan
    plan.fits = plan.predicted_peak_bytes <= budget
    fixed = plan.weights_bytes + plan.optimizer_bytes + plan.grads_bytes
    per_row = max(plan.peak_activation_bytes - plan.grads_bytes + plan.transient_bytes, 0) / batch_size
    if per_row <= 0:
        plan.max_batch_size = None
    else:
        plan.max_batch_size = max(int(math.floor((budget - fixed) / per_row)), 0)
    return plan


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(text: str, what: str = "--memory") -> int:
    """``24GiB``, ``80GB``, ``512MiB``, ``1.5e9`` as bytes; a one-line :class:`UsageError` otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"{what}: cannot read {text!r} as an amount of memory (e.g. 24GiB, 80GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def gib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**30:.2f}"


def cell_prediction(method, params: dict, config, items: list, pad_id: int, dtype: torch.dtype,
                    gradient_checkpointing: bool, device: str, trust_remote_code: bool = False, **run) -> dict | None:
    """A cell's prediction: ``predicted_peak_bytes`` on the basis its ``peak_memory_bytes`` is
    measured on (on CUDA the whole, as ``max_memory_allocated`` counts the weights already there;
    on the CPU without the weights, as the RSS is measured from just before training, weights
    loaded), and the breakdown the cell measures too (``weights_bytes``, ``grads_bytes``,
    ``optimizer_bytes``, ``activation_bytes``). The first process's first micro-batch (``items``)
    is the shape; ``run``: the rest of :func:`predict`'s settings (trainable dtype, optimiser,
    processes, sharding).
    None where the plan cannot be made: the prediction never fails a cell. The global RNG is left
    as it was (the cell's seed decides)."""
    from ..data.batches import collate

    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = predict(method, dict(params), config, collate(items, pad_id), dtype, gradient_checkpointing,
                           device, trust_remote_code, **run)
    except Exception:
        return None
    return {"predicted_peak_bytes": plan.predicted_peak_bytes - (plan.weights_bytes if device != "cuda" else 0),
            **{k: getattr(plan, k) for k in ("weights_bytes", "grads_bytes", "optimizer_bytes", "activation_bytes")}}
