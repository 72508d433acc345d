"""Which rows of a decoder layer's maps play which role, found by running the layer.

:mod:`suite.models.architecture` finds the maps by shape; where one map holds several roles (a fused
QKV projection, a fused gate/up projection) no shape says which rows are which, and models
differ: GPT-2 ``[q; k; v]`` blocks, BLOOM and GPT-NeoX per head, Falcon-40B and InternLM2 per
key/value group, CodeGen ``[q; v; k]`` per partition, GLM and Phi-3 ``[gate; up]``. Probing
finds out from what the model computes, whatever its code::

    from suite import architecture, layout

    arch = architecture.find(model)
    rows = layout.probe(model, arch)                       # Layout: rows per role, the norms
    w = layout.layer_weights(arch.layers[i], arch.maps[i], rows)   # q, k, v, o, up, gate, down...
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .architecture import Architecture, ArchitectureError, Geometry, LayerMaps, linear_shape, text_config, weight_matrix


class _Stop(Exception):
    """Raised from a hook to end a probing forward pass once the wanted input is captured."""


@dataclass
class Layout:
    """Which output rows of a layer's maps play which role, found by :func:`probe`.

    Row indices refer to the attention's input projections' outputs concatenated in
    ``LayerMaps.inputs`` order (``q``: ``(heads, head_dim)``, ``k``/``v``: ``(kv_heads,
    head_dim)``, ``group[h]`` the key/value head of query head ``h``), and to the MLP's input
    maps' outputs concatenated in ``LayerMaps.mlp_inputs`` order (``gate``/``up``). The norms
    are the modules (names relative to the layer) whose output is the attention's or the
    MLP's input; None where there is none (or it has no weight).
    """

    q: torch.Tensor  # (heads, head_dim) row indices: query head h is rows q[h]
    k: torch.Tensor  # (kv_heads, head_dim) row indices of each key head
    v: torch.Tensor  # (kv_heads, head_dim) row indices of each value head
    group: torch.Tensor  # (heads,): the key/value head each query head reads
    up: torch.Tensor | None = None  # the MLP's up rows (of the mlp_inputs' outputs, concatenated)
    gate: torch.Tensor | None = None  # a gated MLP's gate rows
    attn_norm: str | None = None  # the norm whose output is the attention's input
    mlp_norm: str | None = None  # the norm whose output is the MLP's input


def _run(model, ids, target=None, edits=None, record=None):
    """Forward ``ids`` with ``edits`` ({module: fn(output) -> output}) applied; returns the
    input of ``target`` (stopping there), ``record`` ({module: None}) gets each one's output."""
    hooks, seen = [], {}
    for module, fn in (edits or {}).items():
        hooks.append(module.register_forward_hook(lambda m, a, out, fn=fn: fn(out)))
    for module in record or {}:
        hooks.append(module.register_forward_hook(lambda m, a, out: record.__setitem__(m, out)))

    def stop(module, args):
        seen["input"] = args[0].detach().float().clone()
        raise _Stop

    if target is not None:
        hooks.append(target.register_forward_pre_hook(stop))
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return seen.get("input")


def _scaled(rows: torch.Tensor, factor, position: int | None = None):
    """An output edit: ``rows`` of the last dimension times ``factor`` (a number, or one per
    row), at every position or at ``position`` only."""

    def fn(out):
        out = out.clone()
        where = (..., rows) if position is None else (..., position, rows)
        out[where] = out[where] * (factor.to(out.device, out.dtype) if torch.is_tensor(factor) else factor)
        return out

    return fn


def _rows_edit(modules: list, widths: list[int], rows: torch.Tensor, factor, position: int | None = None) -> dict:
    """:func:`_scaled` edits of the global ``rows`` of ``modules``' concatenated outputs."""
    edits, start = {}, 0
    for module, width in zip(modules, widths):
        inside = (rows >= start) & (rows < start + width)
        if inside.any():
            f = factor[inside.cpu()] if torch.is_tensor(factor) else factor
            edits[module] = _scaled(rows[inside] - start, f, position)
        start += width
    return edits


def _signs(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random signs, both present."""
    signs = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    signs[0], signs[-1] = 1.0, -1.0
    return signs


def _tolerance(dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 1e-3


@torch.no_grad()
def probe(model, arch: Architecture, tokens: int = 6) -> Layout:
    """Find which rows of layer 0's maps are each head's query, key and value (and the MLP's
    gate and up rows, and the norms before attention and MLP) by running the model.

    The input projections' rows come in blocks of ``head_dim``. The signs of each block's rows
    are flipped at random in turn, and the output projection's input compared with the
    unchanged pass (the forward stops there). That changes only the heads the block serves
    (flipping signs keeps the norm of any vector it is part of). A value block flips the
    same dimensions of its heads' attention output and changes nothing else (attention is
    linear in the values); query and key are told apart at the first position: with one
    visible key the attention weight is 1 whatever the query, so changing position 0's query
    changes nothing, changing its key does. The heads a block changes give the head order
    and the key/value groups. For the MLP, the up rows are those (of the two halves, either
    way round, or the even/odd rows) that the down projection's input depends on linearly:
    ``act(gate) * up``. The norms are the ones whose output is the attention's and the MLP's
    input. Works whatever the fused layout ([q; k; v], per head, per group, or another order).
    Raises :class:`ArchitectureError` when the blocks do not add up to a consistent attention.
    """
    g, maps, layer = arch.geometry, arch.maps[0], arch.layers[0]
    was_training = model.training
    model.eval()
    try:
        return _probe(model, g, maps, layer, tokens)
    finally:
        model.train(was_training)


def _probe(model, g: Geometry, maps: LayerMaps, layer, tokens: int) -> Layout:
    param = next(model.parameters())
    vocab = getattr(text_config(model), "vocab_size", None) or 16
    ids = (torch.arange(tokens, device=param.device) * 7 + 3).remainder(vocab)[None]
    tol = _tolerance(param.dtype)
    o = layer.get_submodule(maps.o)
    ins = [layer.get_submodule(n) for n in maps.inputs]
    widths = [linear_shape(m)[1] for m in ins]
    hd = g.head_dim
    base = _run(model, ids, o).reshape(tokens, g.heads, hd)
    scale = float(base.abs().max()) or 1.0
    gen = torch.Generator().manual_seed(0)
    q, k, v = {}, [], []

    def heads_changed(out):
        return ((out - base).abs().amax(dim=(0, 2)) > tol * scale).nonzero().flatten().tolist()

    def run(rows, factor, position=None):  # the output projection's input, per head
        return _run(model, ids, o, _rows_edit(ins, widths, rows, factor, position)).reshape(tokens, g.heads, hd)

    for b in range(sum(widths) // hd):
        rows = torch.arange(b * hd, (b + 1) * hd, device=param.device)
        # flipping signs keeps every norm of q, k or the attention output (OLMo-2's q_norm
        # over all heads, BitNet's norm before o) and turns the vector
        flip = _signs(hd, gen)
        out = run(rows, flip)
        heads = heads_changed(out)
        if not heads:
            raise ArchitectureError(f"probing {type(layer).__name__}: rows {b * hd}..{(b + 1) * hd - 1} of the "
                                    "attention's input projections change nothing")
        if (out[:, heads] - base[:, heads] * flip.to(base.device)).abs().max() <= tol * scale:
            v.append((heads, rows))  # attention is linear in the values: their heads' output flips too
        elif not heads_changed(run(rows, flip, position=0)):  # the query: position 0 sees one key
            if len(heads) != 1 or heads[0] in q:
                raise ArchitectureError(f"probing {type(layer).__name__}: a query block changes heads {heads}")
            q[heads[0]] = rows
        else:
            k.append((heads, rows))
    return _assemble(model, g, maps, layer, ids, tol, q, k, v)


def _assemble(model, g, maps, layer, ids, tol, q, k, v) -> Layout:
    what = type(layer).__name__
    if sorted(q) != list(range(g.heads)) or len(k) != len(v) or not k:
        raise ArchitectureError(f"probing {what}: found {len(q)} query, {len(k)} key and {len(v)} value heads "
                                f"for {g.heads} heads")
    groups = sorted({tuple(h) for h, _ in v})
    if sorted(tuple(h) for h, _ in k) != groups or sorted(h for grp in groups for h in grp) != list(range(g.heads)):
        raise ArchitectureError(f"probing {what}: keys and values do not serve the same groups of heads")
    by_group = {tuple(h): r for h, r in k}, {tuple(h): r for h, r in v}
    group = torch.empty(g.heads, dtype=torch.long)
    for j, grp in enumerate(groups):
        group[list(grp)] = j
    layout = Layout(q=torch.stack([q[h] for h in range(g.heads)]).cpu(),
                    k=torch.stack([by_group[0][grp] for grp in groups]).cpu(),
                    v=torch.stack([by_group[1][grp] for grp in groups]).cpu(), group=group)
    _probe_mlp(model, maps, layer, ids, tol, layout)
    return layout


def _probe_mlp(model, maps: LayerMaps, layer, ids, tol, layout: Layout) -> None:
    """Up/gate rows (by linearity into the down projection) and the norms (by data flow)."""
    norms = {m: n for n, m in layer.named_modules()
             if n and not list(m.children()) and linear_shape(m) is None
             and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 1}
    record = dict.fromkeys(norms)
    attn_in = {layer.get_submodule(maps.inputs[0]): None}
    mlp_in = {layer.get_submodule(maps.mlp_inputs[0]): None} if maps.down else {}
    inputs = {**attn_in, **mlp_in}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0])) for m in inputs]
    try:
        _run(model, ids, record=record)
    finally:
        for h in hooks:
            h.remove()

    def source(module):
        x = inputs[module]
        return next((norms[m] for m, out in record.items() if torch.is_tensor(out) and out.shape == x.shape
                     and torch.equal(out, x)), None)

    layout.attn_norm = source(next(iter(attn_in)))
    if not maps.down:
        return
    layout.mlp_norm = source(next(iter(mlp_in)))
    if not maps.gated:
        layout.up = torch.arange(maps.ffn)
        return
    down = layer.get_submodule(maps.down)
    mods = [layer.get_submodule(n) for n in maps.mlp_inputs]
    widths = [linear_shape(m)[1] for m in mods]
    base = _run(model, ids, down)
    f = maps.ffn
    halves = torch.arange(f), torch.arange(f, 2 * f)
    pairs = [halves, halves[::-1], (torch.arange(0, 2 * f, 2), torch.arange(1, 2 * f, 2))]
    flip = _signs(f, torch.Generator().manual_seed(1)).to(base.device)
    scale = float(base.abs().max()) or 1.0
    for gate, up in pairs:  # gate first, up first, interleaved
        out = _run(model, ids, down, _rows_edit(mods, widths, up, flip))
        if (out - base * flip).abs().max() <= tol * scale:  # act(gate) * up is linear in up
            layout.gate, layout.up = gate, up
            return
    raise ArchitectureError(f"probing {type(layer).__name__}: no split of the MLP's input maps into gate and up "
                            "acts linearly on the down projection's input")


def layer_weights(layer, maps: LayerMaps, layout: Layout) -> dict[str, torch.Tensor]:
    """One layer's maps as ``(out, in)`` matrices, split by role with ``layout``.

    ``q``: ``(heads * head_dim, hidden)``, head by head in the order the output projection
    reads them; ``k``, ``v``: ``(kv_heads * head_dim, hidden)``; ``group``: the key/value head
    of each query head; ``o``: ``(hidden, heads * head_dim)``; ``up``, ``gate`` (gated MLPs):
    ``(ffn, hidden)``; ``down``: ``(hidden, ffn)``; ``attn_norm``, ``mlp_norm``: the gains
    of the norms before attention and MLP (:func:`norm_gain`). Biases are left out. The MLP
    entries are missing when the layer has no linear MLP, the norms when it has none.
    """
    fused = torch.cat([weight_matrix(layer.get_submodule(n)) for n in maps.inputs])
    w = {"q": fused[layout.q.flatten().to(fused.device)], "k": fused[layout.k.flatten().to(fused.device)],
         "v": fused[layout.v.flatten().to(fused.device)], "group": layout.group,
         "o": weight_matrix(layer.get_submodule(maps.o))}
    for role, name in (("attn_norm", layout.attn_norm), ("mlp_norm", layout.mlp_norm)):
        if name:
            w[role] = norm_gain(layer.get_submodule(name), w["o"].shape[0])
    if maps.down and layout.up is not None:
        mlp = torch.cat([weight_matrix(layer.get_submodule(n)) for n in maps.mlp_inputs])
        w["up"] = mlp[layout.up.to(mlp.device)]
        if layout.gate is not None:
            w["gate"] = mlp[layout.gate.to(mlp.device)]
        w["down"] = weight_matrix(layer.get_submodule(maps.down))
    return w


@torch.no_grad()
def norm_gain(norm, width: int) -> torch.Tensor:
    """The per-feature gain a norm layer applies, measured: for ``x`` of alternating signs
    (mean 0, RMS 1), ``(norm(x) - norm(-x)) / 2x``. That is the weight of an RMSNorm or a
    LayerNorm (its bias cancels), and ``1 + weight`` for Gemma's RMSNorm."""
    param = next(norm.parameters())
    x = torch.ones(width, device=param.device, dtype=param.dtype)
    x[1::2] = -1
    x = x[None, None]
    return ((norm(x) - norm(-x)) / (2 * x)).flatten().float()
