"""A training step traced on the meta device: what the planner (:mod:`suite.memory.prediction`) counts.

:class:`Shadow` keeps real CPU values beside meta tensors whose inputs are all known (token
ids, masks, labels, positions), so data-dependent Python code in a model takes the branch it
takes in a real run; :class:`MetaAutocast` gives meta tensors autocast's dtypes;
:class:`SavedTensors` counts the storages autograd saves for backward, each once, and when
each is freed.
"""
from __future__ import annotations

import math
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from ..measures.resources import any_alive

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


class Shadow(TorchDispatchMode):
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


class MetaAutocast(TorchFunctionMode):
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


def meta_batch(shadow: Shadow, batch: dict) -> dict:
    """``batch`` (CPU tensors) as meta tensors whose values the shadow mode knows."""
    return {k: shadow.known(torch.empty_like(v, device="meta"), v) for k, v in batch.items()}
