"""Reading a backbone layer's weights, and initialising side blocks from them by pruning.

Structured pruning keeps whole rows/columns: the same ``width`` residual dimensions in every
layer (the side blocks pass one residual stream along), ``head_dim`` of each head's query/key
and value/output dimensions, and ``ffn`` MLP units. Each is ranked by the L1 norm of the
weights that read or write it (Li et al., 2017); the paper ranks by Fisher information, which
needs task gradients.
"""
from __future__ import annotations

import torch

# The layer layouts whose weights we can read: LLaMA-style (LLaMA, Qwen2, Mistral, Gemma, ...)
# and GPT-2-style (fused qkv in a Conv1D).
LAYOUTS = ("llama", "gpt2")


def decoder_layers(body) -> torch.nn.ModuleList | None:
    """The transformer body's list of decoder layers (``layers`` on LLaMA, ``h`` on GPT-2)."""
    n = body.config.get_text_config().num_hidden_layers
    for module in body.children():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    return None


def layout(layer) -> str | None:
    """Which known layout a decoder layer has, or None."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is not None and all(hasattr(attn, f"{n}_proj") for n in "qkvo") and hasattr(mlp, "up_proj"):
        return "llama"
    attn = getattr(layer, "attn", None)
    if attn is not None and hasattr(attn, "c_attn") and hasattr(attn, "c_proj") and hasattr(mlp, "c_fc"):
        return "gpt2"
    return None


def is_gated(layer) -> bool:
    """Whether the layer's MLP is gated (act(gate(x)) * up(x)), as LLaMA's is."""
    return hasattr(getattr(layer, "mlp", None), "gate_proj")


def _linear(module) -> torch.Tensor:
    """A projection's weight as (out, in): transformers' Conv1D stores it as (in, out)."""
    from transformers.pytorch_utils import Conv1D

    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def layer_weights(layer, config) -> dict[str, torch.Tensor]:
    """The layer's projections as (out, in) matrices with one key/value head per query head.

    Keys: q, k, v, o, up, down, and gate for a gated MLP; attn_norm and mlp_norm (the norm
    weights before attention and MLP) where the layer has them.
    """
    cfg = config.get_text_config()
    d, heads = cfg.hidden_size, cfg.num_attention_heads
    kind = layout(layer)
    if kind == "llama":
        a, m = layer.self_attn, layer.mlp
        w = {n: _linear(getattr(a, f"{n}_proj")) for n in "qkvo"}
        w.update(up=_linear(m.up_proj), down=_linear(m.down_proj))
        if is_gated(layer):
            w["gate"] = _linear(m.gate_proj)
        norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    elif kind == "gpt2":
        w = dict(zip("qkv", _linear(layer.attn.c_attn).split(d, dim=0)))
        w.update(o=_linear(layer.attn.c_proj), up=_linear(layer.mlp.c_fc), down=_linear(layer.mlp.c_proj))
        norms = (getattr(layer, "ln_1", None), getattr(layer, "ln_2", None))
    else:
        raise ValueError(
            f"lst: init='prune' reads LLaMA-style (q_proj...) or GPT-2-style (c_attn...) layers, not "
            f"{type(layer).__name__}; use init='random' (--set lst.init=random)"
        )
    head_dim = w["q"].shape[0] // heads
    kv_heads = w["k"].shape[0] // head_dim
    for n in "kv":  # grouped-query attention: give each query head its own copy of its key/value head
        w[n] = w[n].reshape(kv_heads, head_dim, -1).repeat_interleave(heads // kv_heads, dim=0).reshape(heads * head_dim, -1)
    for name, norm in zip(("attn_norm", "mlp_norm"), norms):
        if getattr(norm, "weight", None) is not None and norm.weight.shape == (d,):
            w[name] = norm.weight
    return w


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending index order."""
    return scores.topk(k).indices.sort().values


def residual_dims(weights: list[dict], width: int) -> torch.Tensor:
    """The residual dimensions to keep: L1 norm of every weight that reads or writes them."""
    score = 0
    for w in weights:
        reads = sum(w[n].abs().sum(0) for n in ("q", "k", "v", "up", "gate") if n in w)
        writes = w["o"].abs().sum(1) + w["down"].abs().sum(1)
        score = score + reads + writes
    return _top(score, width)


@torch.no_grad()
def prune_into(block, w: dict, keep: torch.Tensor, heads: int) -> None:
    """Copy ``w`` (one backbone layer), pruned to ``block``'s shape, into the side ``block``."""
    head_dim = w["q"].shape[0] // heads
    side_head_dim = block.q.out_features // heads

    def per_head(score):  # keep side_head_dim dimensions inside each head
        score = score.reshape(heads, head_dim)
        return torch.cat([_top(s, side_head_dim) + h * head_dim for h, s in enumerate(score)])

    qk = per_head(w["q"].abs().sum(1) + w["k"].abs().sum(1))  # q and k pair up in the dot product
    vo = per_head(w["v"].abs().sum(1) + w["o"].abs().sum(0))  # v's rows are o's columns
    units = w["up"].abs().sum(1) + w["down"].abs().sum(0) + (w["gate"].abs().sum(1) if "gate" in w else 0)
    units = _top(units, block.up.out_features)
    block.q.weight.copy_(w["q"][qk][:, keep])
    block.k.weight.copy_(w["k"][qk][:, keep])
    block.v.weight.copy_(w["v"][vo][:, keep])
    block.o.weight.copy_(w["o"][keep][:, vo])
    block.up.weight.copy_(w["up"][units][:, keep])
    block.down.weight.copy_(w["down"][keep][:, units])
    if block.gate is not None:
        block.gate.weight.copy_(w["gate"][units][:, keep])
    for name in ("attn_norm", "mlp_norm"):
        if name in w:
            getattr(block, name).weight.copy_(w[name][keep])
