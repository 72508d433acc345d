"""Reading a backbone's layer weights by role, and initialising side blocks from them by pruning.

The backbone's maps are found by role through :mod:`suite.models.architecture` and split by
:mod:`suite.models.layout` (any decoder layer: separate or fused QKV in any layout, grouped- and
multi-query attention, fused gate/up, parallel attention and MLP), never by LLaMA's or
GPT-2's names. Structured pruning keeps
whole rows/columns: the same ``width`` residual dimensions in every layer (the side blocks
pass one residual stream along), ``head_dim`` of each head's query/key and value/output
dimensions, and ``ffn`` MLP units. Each is ranked by the L1 norm of the weights that read or
write it (Li et al., 2017); the paper ranks by Fisher information, which needs task gradients.
"""
from __future__ import annotations

import torch

from suite.models import architecture
from suite.models import layout as layouts
from suite.models.architecture import ArchitectureError


def backbone_weights(model, arch: architecture.Architecture) -> tuple[list[dict], str | None]:
    """Every decoder layer's maps as ``(out, in)`` matrices, one key/value head per query head.

    Keys: q, k, v, o (``heads * head_dim`` rows/columns), and up, down (and gate, for a gated
    MLP), attn_norm, mlp_norm (the norms' gains) where the layer has them. Returns the list
    and, when some layer's MLP cannot be read (mixture of experts), why (its side MLP then
    keeps its random initialisation). Raises :class:`ArchitectureError` when the attention
    cannot be read: the caller falls back to random initialisation and says so.
    """
    layout = layouts.probe(model, arch)
    first = arch.maps[0]
    weights, missing = [], []
    for i, (layer, maps) in enumerate(zip(arch.layers, arch.maps)):
        if maps is None or (maps.inputs, maps.o) != (first.inputs, first.o):
            raise ArchitectureError(f"layer {i} ({type(layer).__name__}) differs from layer 0 in its attention")
        same_mlp = (maps.mlp_inputs, maps.down) == (first.mlp_inputs, first.down)
        w = layouts.layer_weights(layer, maps if same_mlp else _no_mlp(maps), layout)
        head_dim = w["q"].shape[0] // len(layout.group)
        for n in "kv":  # grouped-query attention: give each query head its own copy of its key/value head
            kv = w[n].reshape(-1, head_dim, w[n].shape[1])
            w[n] = kv[layout.group.to(kv.device)].reshape(w["q"].shape[0], -1)
        if "down" not in w:
            missing.append(i)
        weights.append(w)
    why = None
    if missing:
        why = (f"no linear MLP in layers {_ranges(missing)} ({type(arch.layers[missing[0]]).__name__}: a mixture of "
               "experts?); their side MLP weights stay random")
    return weights, why


def _no_mlp(maps):
    from dataclasses import replace

    return replace(maps, mlp=None, up=None, gate=None, gate_up=None, down=None)


def _ranges(indices: list[int]) -> str:
    return ", ".join(map(str, indices)) if len(indices) <= 4 else f"{indices[0]}–{indices[-1]} ({len(indices)})"


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending index order."""
    return scores.topk(k).indices.sort().values


def residual_dims(weights: list[dict], width: int) -> torch.Tensor:
    """The residual dimensions to keep: L1 norm of every weight that reads or writes them."""
    score = 0
    for w in weights:
        reads = sum(w[n].abs().sum(0) for n in ("q", "k", "v", "up", "gate") if n in w)
        writes = w["o"].abs().sum(1) + (w["down"].abs().sum(1) if "down" in w else 0)
        score = score + reads + writes
    return _top(score, width)


@torch.no_grad()
def prune_into(block, w: dict, keep: torch.Tensor, heads: int) -> None:
    """Copy ``w`` (one backbone layer), pruned to ``block``'s shape, into the side ``block``.

    Without MLP weights in ``w`` the block's MLP is left as it is.
    """
    head_dim = w["q"].shape[0] // heads
    side_head_dim = block.q.out_features // heads

    def per_head(score):  # keep side_head_dim dimensions inside each head
        score = score.reshape(heads, head_dim)
        return torch.cat([_top(s, side_head_dim) + h * head_dim for h, s in enumerate(score)])

    qk = per_head(w["q"].abs().sum(1) + w["k"].abs().sum(1))  # q and k pair up in the dot product
    vo = per_head(w["v"].abs().sum(1) + w["o"].abs().sum(0))  # v's rows are o's columns
    block.q.weight.copy_(w["q"][qk][:, keep])
    block.k.weight.copy_(w["k"][qk][:, keep])
    block.v.weight.copy_(w["v"][vo][:, keep])
    block.o.weight.copy_(w["o"][keep][:, vo])
    if "down" in w:
        units = w["up"].abs().sum(1) + w["down"].abs().sum(0) + (w["gate"].abs().sum(1) if "gate" in w else 0)
        units = _top(units, block.up.out_features)
        block.up.weight.copy_(w["up"][units][:, keep])
        block.down.weight.copy_(w["down"][keep][:, units])
        if block.gate is not None and "gate" in w:
            block.gate.weight.copy_(w["gate"][units][:, keep])
    for name in ("attn_norm", "mlp_norm"):
        if name in w:
            getattr(block, name).weight.copy_(w[name][keep])
