"""Training memory predicted before any weight exists: ``leitai plan``.

The model is built from its config on the meta device (shapes, no values, no memory), the
method's real ``apply`` runs on it, then one real training step's forward and backward at the
asked shape, through the arena's own loss path (:class:`suite.train.AnswerHead`). What is
counted is what a cell measures (:mod:`suite.measure`, :func:`suite.train.train`):

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
their meta shadows (:class:`_Shadow`), so transformers' masking code takes the same branch as
in a real run.
"""
from __future__ import annotations

import copy
import math
import re
import warnings
import weakref
from dataclasses import asdict, dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from .errors import UsageError
from .measure import any_alive

aten = torch.ops.aten
#: values of tensors larger than this are not shadowed (masks of long sequences still are)
SHADOW_LIMIT = 1 << 26
#: floating-point results of more than two dimensions are shadowed only up to this size (a
#: float 4-D attention mask per layer of a long sequence would hold gigabytes); a 2-D one, such
#: as peft's float mask for prepended virtual tokens (batch x tokens), up to SHADOW_LIMIT
FLOAT_LIMIT = 1 << 12
#: torch's SDPBackend numbers, as ``aten._fused_sdp_choice`` returns them
_SDP = {"math": 0, "flash": 1, "efficient": 2}


class DataDependent(RuntimeError):
    """The method or model reads a value of a weight (``.item()`` of an unknown tensor)."""


class _Shadow(TorchDispatchMode):
    """Keeps real CPU values beside meta tensors whose inputs are all known (token ids, masks,
    labels, positions, and what is computed from them only), so data-dependent Python code
    (``if mask.all():``) and data-dependent shapes (``nonzero``) work on the meta device.

    ``device``: the device the plan is for; ``aten._fused_sdp_choice`` answers as it would
    there (the CPU's flash kernel, CUDA's flash kernel in half precision), so the attention's
    saved tensors are the ones a real run saves.
    """

    def __init__(self, device: str = "cpu", amp: torch.dtype | None = None):
        super().__init__()
        self.device, self.amp = device, amp
        self.values = WeakIdKeyDictionary()  # tensors compare by value with ==; these by identity

    def known(self, t: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        self.values[t] = value
        return t

    def _real(self, x):
        if isinstance(x, torch.Tensor) and x.device.type == "meta":
            return self.values[x]
        if isinstance(x, torch.device) and x.type == "meta":
            return torch.device("cpu")
        return x

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        metas = [t for t in tensors if t.device.type == "meta"]
        factory = not tensors and str(kwargs.get("device", "")) == "meta"
        known = bool(tensors or factory) and all(t in self.values for t in metas)
        try:
            out = func(*args, **kwargs)
        except Exception as e:  # a data-dependent op (item, nonzero) on the meta device
            if not known:
                if func is aten._local_scalar_dense.default:
                    raise DataDependent("reads a weight's value (.item() of a tensor computed from weights)") from e
                raise
            out = None
        if not known:
            return out
        if out is not None:  # integer values (ids, masks, positions) are shadowed; floats only when tiny
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.device.type == "meta"]
            size = sum(t.numel() for t in outs)
            big_float = size > FLOAT_LIMIT and any(t.is_floating_point() and t.dim() > 2 for t in outs)
            if not outs or size > SHADOW_LIMIT or big_float:
                return out
        real = func(*tree_map(self._real, args), **tree_map(self._real, kwargs))
        if out is None:
            out = tree_map(lambda r: torch.empty_strided(r.shape, r.stride(), dtype=r.dtype, device="meta")
                           if isinstance(r, torch.Tensor) else r, real)
        for o, r in zip(tree_flatten(out)[0], tree_flatten(real)[0]):
            if isinstance(o, torch.Tensor) and o.device.type == "meta" and isinstance(r, torch.Tensor):
                self.values[o] = r
        return out

    def __enter__(self):
        self._sdpa = torch.nn.functional.scaled_dot_product_attention
        torch.nn.functional.scaled_dot_product_attention = self._attention
        return super().__enter__()

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self._sdpa
        return super().__exit__(*exc)

    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
        """SDPA with the kernel a real run on ``self.device`` picks: ATen picks the math kernel
        for every meta tensor (it saves the attention matrix, the fused kernels do not)."""
        if query.device.type != "meta":
            return self._sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        if self.amp is not None:  # autocast's lower-precision list has SDPA
            query, key, value = (t.to(self.amp) if t.dtype != self.amp else t for t in (query, key, value))
        if attn_mask is not None and attn_mask.dtype == torch.bool:  # as ATen converts it, in the query's dtype
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(attn_mask.logical_not(), -math.inf)
        gqa = enable_gqa and key.shape[-3] != query.shape[-3]
        if self.device == "cuda" and not gqa and query.shape[-1] <= 256:
            if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16):
                return aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                 scale=scale)[0]
            return aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, True, dropout_p,
                                                                 is_causal, scale=scale)[0]
        if self.device == "cpu" and not gqa and self._cpu_flash(query, key, value, attn_mask, dropout_p, is_causal):
            return aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                    attn_mask=attn_mask, scale=scale)[0]
        return self._sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)

    @staticmethod
    def _cpu_flash(query, key, value, attn_mask, dropout_p, is_causal) -> bool:
        def cpu(t):  # a CPU tensor of the same shape, its last dimension contiguous, one row of memory behind it
            if t is None:
                return None
            return torch.empty(t.shape[-1], dtype=t.dtype).as_strided(t.shape, [0] * (t.dim() - 1) + [1])

        try:  # the CPU's own choice: its checks look at shapes, dtypes and the last dimension's stride
            with torch.utils._python_dispatch._disable_current_modes():
                choice = aten._fused_sdp_choice(cpu(query), cpu(key), cpu(value), cpu(attn_mask), dropout_p, is_causal)
        except Exception:
            return False
        return choice == _SDP["flash"]


class _Autocast(TorchFunctionMode):
    """torch's autocast for meta tensors, which have no autocast dispatch key: the matrix
    products run in ``dtype`` (the ops of autocast's lower-precision list), their inputs cast
    through autograd, so the half-precision copies are what the products save, as in a run."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        F = torch.nn.functional
        self.ops = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
                    torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.addmm, torch.Tensor.addmm,
                    torch.baddbmm, torch.Tensor.baddbmm, torch.addbmm, F.conv1d, F.conv2d, F.conv3d, torch.einsum,
                    F.prelu}

    def cast(self, x):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != self.dtype:
            return x.to(self.dtype)
        return x

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.ops:
            args, kwargs = tree_map(self.cast, (args, kwargs))
        return func(*args, **kwargs)


def storage_key(t: torch.Tensor) -> int:
    """What identifies ``t``'s storage on any device (meta storages have no data pointer)."""
    return t.untyped_storage()._cdata


class SavedTensors:
    """Counts what autograd saves for backward, on any device: each storage once (views and
    several ops saving one tensor count once), ``exclude``'s storages (the parameters) never.
    During backward a storage is freed when every node that saved it has run; ``peak`` is the
    highest of saved bytes plus the gradients accumulated so far (:meth:`grad_accumulated`)."""

    def __init__(self, exclude=()):
        self.skip = {storage_key(t) for t in exclude}
        self.size: dict[int, int] = {}
        self.refs: dict[int, int] = {}
        self.live = self.grads = self.peak = 0
        self.saved: dict[int, list] = {}  # weak references to the tensors saved on each storage

    def pack(self, t):
        key = storage_key(t)
        nbytes = t.untyped_storage().nbytes()
        if key in self.skip or nbytes == 0:
            return t
        self._drop_if_freed(key)  # its key may be reused by a new storage
        self.saved.setdefault(key, []).append(weakref.ref(t))
        if key not in self.refs or self.refs[key] == 0:
            self.live += nbytes
            self.size[key] = nbytes
        self.refs[key] = self.refs.get(key, 0) + 1
        self._high()
        return (t, key)

    def settle(self) -> int:
        """At the end of the forward: the bytes of the saved storages still held for backward
        (a branch whose graph the forward dropped, as DoRA's detached weight norm, is freed)."""
        for key in self.saved:
            self._drop_if_freed(key)
        return self.live

    def _drop_if_freed(self, key) -> None:
        """Stop counting a storage whose saved tensors are all gone (freed with a dropped branch)."""
        if self.refs.get(key) and not any_alive(self.saved.get(key, ())):
            self.live -= self.size[key]
            self.refs[key] = 0

    def unpack(self, packed):
        if not isinstance(packed, tuple):
            return packed
        t, key = packed
        self.refs[key] -= 1  # the node that saved it runs now; autograd frees it after
        if self.refs[key] == 0:
            self.live -= self.size[key]
        return t

    def grad_accumulated(self, p):
        self.grads += p.grad.numel() * p.grad.element_size()
        self._high()

    def _high(self):
        self.peak = max(self.peak, self.live + self.grads)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


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


def meta_batch(shadow: _Shadow, batch: dict) -> dict:
    """``batch`` (CPU tensors) as meta tensors whose values the shadow mode knows."""
    return {k: shadow.known(torch.empty_like(v, device="meta"), v) for k, v in batch.items()}


def synthetic_batch(batch_size: int, max_len: int, vocab: int, answer: float = 1.0) -> dict:
    """``batch_size`` unpadded examples of ``max_len`` tokens whose last ``answer`` fraction
    carries the loss (1.0: every token after the first, the largest logits)."""
    from .data import IGNORE

    ids = (torch.arange(batch_size * max_len).reshape(batch_size, max_len) * 7 + 3).remainder(max(vocab - 3, 1)) + 3
    labels = ids.clone()
    labels[:, : max_len - max(1, round(answer * (max_len - 1)))] = IGNORE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def predict(method, params: dict, config, batch: dict, dtype: torch.dtype = torch.float32,
            gradient_checkpointing: bool = False, device: str = "cpu", trust_remote_code: bool = False,
            base=None) -> MethodPlan:
    """Predict one training step of ``method`` (with ``params``) on the model of ``config``
    built on the meta device in ``dtype`` (or ``base``, a meta model given), on ``batch`` (CPU
    tensors: input_ids, attention_mask, labels, as :func:`suite.data.collate` makes them).
    Raises what building the model or applying the method raises."""
    from contextlib import nullcontext

    from .measure import count_parameters, tensor_bytes, unique_parameters
    from .precision import mixed_precision, upcast_trainable
    from .train import AnswerHead, enable_gradient_checkpointing, loss_index

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision(dtype, torch.device(device)))
    shadow = _Shadow(device, amp)
    plan = MethodPlan(method.name)
    autocast = (lambda: _Autocast(amp)) if amp is not None else nullcontext
    if base is None:
        base = build_meta(config, dtype, trust_remote_code)
    if gradient_checkpointing:
        enable_gradient_checkpointing(base)
        if amp is not None:  # backward of a meta tensor runs on another thread, without this thread's modes
            _recompute_under(base, lambda: _Autocast(amp))
    model = _apply_on_meta(method, base, params)  # outside the shadow mode: every op through it costs time
    upcast_trainable(model)
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
    plan.optimizer_bytes = adamw_state_bytes(with_grad)
    plan.peak_activation_bytes = counter.peak
    # the head's output, and its float32 copy for the loss when it is in half precision
    logits = logits_bytes[0] if logits_bytes else _full_logits_bytes(config, batch, dtype)
    plan.transient_bytes = logits * (1 if dtype == torch.float32 else 3)
    plan.predicted_peak_bytes = (plan.weights_bytes + plan.optimizer_bytes + plan.peak_activation_bytes
                                 + plan.transient_bytes)
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

    from .precision import cast_weights

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
                    gradient_checkpointing: bool, device: str, trust_remote_code: bool = False) -> dict | None:
    """A cell's prediction: ``predicted_peak_bytes`` on the basis its ``peak_memory_bytes`` is
    measured on (on CUDA the whole, as ``max_memory_allocated`` counts the weights already there;
    on the CPU without the weights, as the RSS is measured from just before training, weights
    loaded), and the breakdown the cell measures too (``weights_bytes``, ``grads_bytes``,
    ``optimizer_bytes``, ``activation_bytes``). The cell's first batch (``items``) is the shape.
    None where the plan cannot be made: the prediction never fails a cell. The global RNG is left
    as it was (the cell's seed decides)."""
    from .data import collate

    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = predict(method, dict(params), config, collate(items, pad_id), dtype, gradient_checkpointing,
                           device, trust_remote_code)
    except Exception:
        return None
    return {"predicted_peak_bytes": plan.predicted_peak_bytes - (plan.weights_bytes if device != "cuda" else 0),
            **{k: getattr(plan, k) for k in ("weights_bytes", "grads_bytes", "optimizer_bytes", "activation_bytes")}}
