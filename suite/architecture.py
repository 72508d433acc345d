"""Decoder layers, attention and MLP linear maps of any causal LM, found by role.

A method must not assume LLaMA's module names (``q_proj``...) or GPT-2's (``c_attn``...). This
module finds, in any transformers causal LM (or a model that ships its own code, like
ChatGLM, Baichuan or InternLM2), what each linear map of a decoder layer does:

- the **decoder layers**: the module list holding ``num_hidden_layers`` (``n_layer``,
  ``num_layers``...) blocks that each contain an attention block;
- in each layer's **attention block**: the output projection (it reads ``heads x head_dim``
  features and writes the hidden size) and the input projections (every other linear map of
  the block that reads the hidden size). Their widths must add up to ``(heads + 2 x kv_heads)
  x head_dim`` for some number of key/value heads dividing ``heads``: one map is a fused QKV
  projection (GPT-2's ``c_attn``, BLOOM's ``query_key_value``, Baichuan's ``W_pack``,
  InternLM2's ``wqkv``, Phi-3's ``qkv_proj``), two are a query and a fused key/value map,
  three are query, key and value (the query is the one ``heads x head_dim`` wide; where all
  three are as wide, they are told apart by the order in which the block's ``forward``
  calls them: query, key, value);
- the **MLP**: the layer's other linear maps; the one that writes the hidden size from a
  wider input is the down projection, the ones reading the hidden size are the up and gate
  projections (two of the MLP's width, or one fused of twice its width, like GLM's
  ``gate_up_proj``; the gate is the one the ``forward`` calls first).

Only shapes, the module tree, the config's sizes (hidden size, head counts, head dimension)
and the order of calls in a block's ``forward`` are used, never a list of names. ``nn.Linear``
(and its subclasses) and transformers' ``Conv1D`` (GPT-2: weight stored as ``(in, out)``)
count as linear maps.

Public API::

    find(model) -> Architecture             # raises ArchitectureError (a ValueError), one line
    attention_targets(model) -> list[str]   # module-name suffixes of the query and value
                                            # projections (or of the fused QKV projection)
    linear_modules(model) -> list[str]      # every linear map, layer indices folded, with shapes
    kv_cache_shape(model)                   # (layers, heads, head_dim) of the generation cache
    probe(model, arch) -> Layout            # which rows are each head's q/k/v, gate/up, norms
    layer_weights(layer, maps, layout)      # one layer's maps as (out, in) matrices, by role

Which rows of a fused projection are queries, keys or values differs between models (GPT-2:
``[q; k; v]`` blocks; BLOOM and GPT-NeoX: interleaved per head; Falcon-40B and InternLM2: per
key/value group; CodeGen: ``[q; v; k]`` per partition). No shape says which, so :func:`probe`
finds out by running the model's first layer (see its docstring).
"""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field

import torch
from torch import nn


class ArchitectureError(ValueError):
    """The model's layers or maps could not be found by role; the message is one line."""


# ---------------------------------------------------------------- sizes from the config


def _config(model):
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    return cfg


def _first(cfg, *names):
    for name in names:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class Geometry:
    """The sizes roles are found by: hidden size, attention heads, head dimension, layer count."""

    hidden: int
    heads: int
    head_dim: int
    layers: int | None

    @property
    def q_width(self) -> int:
        """Width of all query heads together (the output projection's input)."""
        return self.heads * self.head_dim


def geometry(model) -> Geometry:
    """The model's :class:`Geometry`, from its (text) config; the hidden size falls back to the
    input embeddings' width. Raises :class:`ArchitectureError` when the head count is unknown."""
    cfg = _config(model)
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model", "dim")
    if hidden is None and hasattr(model, "get_input_embeddings"):
        emb = model.get_input_embeddings()
        hidden = getattr(emb, "embedding_dim", None)
    heads = _first(cfg, "num_attention_heads", "n_head", "n_heads", "num_heads")
    if not hidden or not heads:
        raise ArchitectureError(f"{type(model).__name__}: its config gives no hidden size or attention head count")
    head_dim = _first(cfg, "head_dim", "kv_channels", "attention_head_size") or hidden // heads
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    return Geometry(hidden, heads, head_dim, layers)


# ---------------------------------------------------------------- linear maps


def linear_shape(module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear map (``nn.Linear`` or transformers'
    ``Conv1D``), None for any other module."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if _is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    return None


def _is_conv1d(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def weight_matrix(module) -> torch.Tensor:
    """A linear map's weight as ``(out, in)`` (``Conv1D`` stores it as ``(in, out)``)."""
    return module.weight.t() if _is_conv1d(module) else module.weight


def _linears(module) -> dict[str, tuple[int, int]]:
    return {n: s for n, m in module.named_modules() if (s := linear_shape(m)) is not None and n}


def linear_modules(model) -> list[str]:
    """Every linear map of ``model`` as ``name (in→out)``, layer indices folded to ``N``
    (``model.layers.N.self_attn.q_proj (64→64)``), each once: what a user can name in
    ``--set lora.targets=...``."""
    seen: dict[str, None] = {}
    for name, module in model.named_modules():
        shape = linear_shape(module)
        if shape is not None:
            seen.setdefault(f"{re.sub(r'(?<=[.])[0-9]+(?=[.]|$)', 'N', name)} ({shape[0]}→{shape[1]})")
    return list(seen)


# ---------------------------------------------------------------- call order


@functools.lru_cache(maxsize=None)
def _first_calls(cls) -> dict[str, int]:
    """Where ``cls.forward``'s source first calls each ``self.NAME(``."""
    try:
        source = inspect.getsource(inspect.unwrap(cls.forward))
    except (OSError, TypeError):
        return {}
    first: dict[str, int] = {}
    for m in re.finditer(r"self\.(\w+)\s*\(", source):
        first.setdefault(m.group(1), m.start())
    return first


def _call_order(module) -> list[str]:
    """``module``'s children in the order its ``forward`` source first calls them
    (``self.NAME(``); children it never calls by name follow in registration order."""
    names = [n for n, _ in module.named_children()]
    first = _first_calls(type(module))
    return sorted(names, key=lambda n: (n not in first, first.get(n, 0), names.index(n)))


def _ordered(root, names: list[str]) -> list[str]:
    """``names`` (relative to ``root``) sorted by call order, level by level down the tree."""

    def key(name: str) -> tuple:
        parts, module, out = name.split("."), root, []
        for part in parts:
            order = _call_order(module)
            out.append(order.index(part) if part in order else len(order))
            module = getattr(module, part)
        return tuple(out)

    return sorted(names, key=key)


def _within(name: str, block: str) -> bool:
    return not block or name == block or name.startswith(block + ".")


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


# ---------------------------------------------------------------- one decoder layer


@dataclass(frozen=True)
class LayerMaps:
    """The linear maps of one decoder layer by role; names are relative to the layer.

    Exactly one of ``qkv`` (fused query/key/value), ``q`` + ``kv`` (query and fused key/value)
    or ``q`` + ``k`` + ``v`` is set. ``inputs`` are the attention's input projections in call
    order. The MLP fields are None where the layer has no linear MLP (mixture-of-experts
    layers keep their experts in 3-d tensors): ``down`` writes the hidden size, ``up`` (and
    ``gate``, for a gated MLP) or the fused ``gate_up`` read it.
    """

    attention: str  # the attention block ("" when it is the layer itself)
    inputs: tuple[str, ...]
    o: str
    kv_heads: int
    q: str | None = None
    k: str | None = None
    v: str | None = None
    kv: str | None = None
    qkv: str | None = None
    mlp: str | None = None  # the MLP block (the common parent of its maps; "" = the layer)
    up: str | None = None
    gate: str | None = None
    gate_up: str | None = None
    down: str | None = None
    ffn: int | None = None  # the MLP's width (the down projection's input)

    @property
    def gated(self) -> bool:
        """Whether the MLP is gated (act(gate(x)) * up(x)), in two maps or one fused."""
        return self.gate is not None or self.gate_up is not None

    @property
    def mlp_inputs(self) -> tuple[str, ...]:
        """The MLP's maps that read the hidden size, gate first."""
        return tuple(n for n in (self.gate, self.up, self.gate_up) if n)

    def attention_targets(self) -> list[str]:
        """The query and value projections, or the projections that hold them (fused)."""
        if self.qkv:
            return [self.qkv]
        return [self.q, self.kv] if self.kv else [self.q, self.v]


def _kv_heads(total: int, g: Geometry) -> int | None:
    """Key/value heads making ``total`` = (heads + 2 x kv_heads) x head_dim, if any."""
    rest = total - g.q_width
    if rest <= 0 or rest % (2 * g.head_dim):
        return None
    kv = rest // (2 * g.head_dim)
    return kv if g.heads % kv == 0 else None


def _attention(layer, lin: dict, g: Geometry) -> LayerMaps | None:
    """The smallest block of ``layer`` with an output projection and input projections of
    query/key/value widths, its maps named by role (None if there is none)."""
    best = None
    for block, module in layer.named_modules():
        inner = {n: s for n, s in lin.items() if _within(n, block) and n != block}
        if linear_shape(module) is not None or not inner:
            continue
        scope = layer.get_submodule(block) if block else layer
        ordered = _ordered(scope, [n[len(block) + 1:] if block else n for n in inner])
        ordered = [f"{block}.{n}" if block else n for n in ordered]
        outs = [n for n in ordered if inner[n] == (g.q_width, g.hidden)]
        for o in reversed(outs):  # the output projection is called after the input projections
            ins = [n for n in ordered if n != o and inner[n][0] == g.hidden]
            widths = [inner[n][1] for n in ins]
            kv = _kv_heads(sum(widths), g) if ins and all(w % g.head_dim == 0 for w in widths) else None
            roles = _input_roles(ins, widths, kv, g) if kv else None
            if roles is not None:
                # q, k, v or fused qkv before q + fused kv (which any d-wide gated MLP also fits)
                rank = (len(ins) == 2, len(inner))
                if best is None or rank <= best[0]:  # equal: the deeper block
                    best = (rank, LayerMaps(attention=block, inputs=tuple(ins), o=o, kv_heads=kv, **roles))
                break
    return best[1] if best else None


def _input_roles(ins: list[str], widths: list[int], kv: int, g: Geometry) -> dict | None:
    kv_width = kv * g.head_dim
    if len(ins) == 1:
        return {"qkv": ins[0]}
    if len(ins) == 2:  # query, then fused key/value (in call order where the widths agree)
        if widths[0] == g.q_width:
            return {"q": ins[0], "kv": ins[1]}
        return {"q": ins[1], "kv": ins[0]} if widths[1] == g.q_width else None
    if len(ins) == 3:
        q = [n for n, w in zip(ins, widths) if w == g.q_width]
        q = q[0] if len(q) == 1 or kv_width == g.q_width else None
        rest = [n for n in ins if n != q]
        if q is None or any(widths[ins.index(n)] != kv_width for n in rest):
            return None
        return {"q": q, "k": rest[0], "v": rest[1]}
    return None


def _mlp(layer, lin: dict, maps: LayerMaps, g: Geometry) -> dict:
    """The MLP's maps among the layer's linear maps outside the attention block."""
    attention = maps.attention
    own = {n for n in lin if _within(n, attention)} if attention else {*maps.inputs, maps.o}
    rest = {n: s for n, s in lin.items() if n not in own}
    downs = [n for n, (i, o) in rest.items() if o == g.hidden and i != g.hidden]
    if len(downs) != 1:
        return {}
    down, ffn = downs[0], rest[downs[0]][0]
    ins = [n for n, (i, o) in rest.items() if i == g.hidden]
    widths = [rest[n][1] for n in ins]
    if widths == [ffn]:
        roles = {"up": ins[0]}
    elif widths == [2 * ffn]:
        roles = {"gate_up": ins[0]}
    elif widths == [ffn, ffn]:
        parent = _common_parent(ins)
        scope = layer.get_submodule(parent) if parent else layer
        gate, up = (f"{parent}.{n}" if parent else n for n in _ordered(scope, [n[len(parent) + 1:] if parent else n
                                                                             for n in ins]))
        roles = {"gate": gate, "up": up}
    else:
        return {}
    return {"mlp": _common_parent([*roles.values(), down]), "down": down, "ffn": ffn, **roles}


def layer_maps(layer, g: Geometry) -> LayerMaps | None:
    """The roles of one decoder layer's linear maps, or None when it has no attention block."""
    lin = _linears(layer)
    maps = _attention(layer, lin, g)
    if maps is None:
        return None
    from dataclasses import replace

    return replace(maps, **_mlp(layer, lin, maps, g))


# ---------------------------------------------------------------- the whole model


@dataclass
class Architecture:
    """What :func:`find` found: where the decoder layers are, their sizes and their maps."""

    layers_name: str  # e.g. "model.layers", "transformer.h"
    layers: nn.ModuleList
    geometry: Geometry
    maps: list[LayerMaps | None]  # one per layer; None for a layer without attention (hybrids)
    names: list[str] = field(default_factory=list, repr=False)  # every module name of the model

    def attention_targets(self) -> list[str]:
        """Shortest module-name suffixes that name exactly the query and value projections (or
        the fused projections holding them) of every decoder layer, and nothing else."""
        wanted: dict[str, list[str]] = {}
        for i, maps in enumerate(self.maps):
            for rel in maps.attention_targets() if maps else []:
                wanted.setdefault(rel, []).append(f"{self.layers_name}.{i}.{rel}")
        targets = []
        for rel, full in wanted.items():
            parts = rel.split(".")
            for k in range(1, len(parts) + 1):
                suffix = ".".join(parts[-k:])
                if {n for n in self.names if n == suffix or n.endswith("." + suffix)} == set(full):
                    targets.append(suffix)
                    break
            else:  # the same path elsewhere in the model (a vision tower): name each one
                targets += full
        return targets


def _layer_lists(model, n: int | None):
    """Module lists that may hold the decoder layers: those of ``n`` entries first."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    return sorted(lists, key=lambda item: n is None or len(item[1]) != n)


def find(model) -> Architecture:
    """Find the decoder layers of ``model`` and the role of each linear map in them.

    Raises :class:`ArchitectureError` (one line, listing the linear maps found) when no
    module list of the model holds layers with an attention block.
    """
    g = geometry(model)
    for name, layers in _layer_lists(model, g.layers):
        first = layer_maps(layers[0], g)
        if first is None:
            continue
        maps = [first] + [layer_maps(layer, g) for layer in list(layers)[1:]]
        return Architecture(name, layers, g, maps, [n for n, _ in model.named_modules()])
    raise ArchitectureError(
        f"cannot find decoder layers with attention projections in {type(model).__name__} "
        f"(hidden {g.hidden}, {g.heads} heads of {g.head_dim}); its linear modules: {', '.join(linear_modules(model))}"
    )


def attention_targets(model) -> list[str]:
    """Module-name suffixes of the attention's query and value projections in every decoder
    layer of ``model`` (``["q_proj", "v_proj"]`` on LLaMA), or of the fused projection that
    holds them (``["c_attn"]`` on GPT-2, ``["query_key_value"]`` on BLOOM and ChatGLM,
    ``["W_pack"]`` on Baichuan, ``["wqkv"]`` on InternLM2): what LoRA adapts by default
    (Hu et al., 2021, Sec. 7.1). The suffixes name exactly those modules, usable as peft's
    ``target_modules``. Raises :class:`ArchitectureError` (one line, listing the linear
    modules found) when nothing fits.
    """
    return find(model).attention_targets()


@torch.no_grad()
def kv_cache_shape(model, tokens: int = 3) -> tuple[int, int, int] | None:
    """``(layers, heads, head_dim)`` of the keys ``model`` caches for generation, measured
    with one forward pass: what a prefix of keys and values must look like. It is not always
    the weights' key/value heads: Falcon-40B's code caches one key per query head. None when
    the model returns no cache of transformers' shape."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        cache = model(input_ids=torch.full((1, tokens), 3, device=param.device), use_cache=True).past_key_values
    finally:
        model.train(was_training)
    layers = getattr(cache, "layers", None)
    keys = [getattr(layer, "keys", None) for layer in layers] if layers is not None else None
    if not keys or any(not torch.is_tensor(k) or k.dim() != 4 or k.shape[2] != tokens for k in keys):
        return None
    if len({tuple(k.shape) for k in keys}) != 1:
        return None  # layers cache different shapes (Gemma-3n-style): let peft decide
    return len(keys), keys[0].shape[1], keys[0].shape[3]


# ---------------------------------------------------------------- rows of fused maps, by probing


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

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    group: torch.Tensor
    up: torch.Tensor | None = None
    gate: torch.Tensor | None = None
    attn_norm: str | None = None
    mlp_norm: str | None = None


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
    return 1e-4 if dtype == torch.float32 or dtype == torch.float64 else 3e-2


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
    changes nothing, changing its key does.
    The heads a block changes give the head order and the key/value groups. For the MLP,
    the up rows are those that scale the down projection's input linearly. Works whatever
    the fused layout ([q; k; v], per head, per group, or another order). Raises
    :class:`ArchitectureError` when the blocks do not add up to a consistent attention.
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
    vocab = _first(_config(model), "vocab_size") or 16
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
