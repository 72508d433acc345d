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

Which rows of a fused projection are queries, keys or values differs between models (GPT-2:
``[q; k; v]`` blocks; BLOOM and GPT-NeoX: interleaved per head; Falcon-40B and InternLM2: per
key/value group; CodeGen: ``[q; v; k]`` per partition). No shape says which: :mod:`suite.models.layout`
finds out by running the model's first layer, and gives each layer's maps split by role.
"""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass, field, replace

import torch
from torch import nn


class ArchitectureError(ValueError):
    """The model's layers or maps could not be found by role; the message is one line."""


# ---------------------------------------------------------------- sizes from the config


def text_config(model):
    """The model's config, its text part for multimodal ones (``get_text_config``)."""
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
    cfg = text_config(model)
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
    """A linear map's weight as ``(out, in)`` (``Conv1D`` stores it as ``(in, out)``); a
    bitsandbytes 4- or 8-bit layer's dequantized by peft (``--quantize``)."""
    weight = module.weight
    if hasattr(weight, "quant_state") or hasattr(weight, "SCB"):
        # not dequantize_module_weight: on the CPU it puts back an 8-bit weight without its scales
        from peft.utils.integrations import dequantize_bnb_weight

        return dequantize_bnb_weight(weight, state=getattr(module, "state", None))
    return weight.t() if _is_conv1d(module) else weight


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


@functools.cache
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


def _ordered_within(layer, block: str, names) -> list[str]:
    """``names`` (relative to ``layer``, all inside its submodule ``block``) in call order."""
    scope = layer.get_submodule(block) if block else layer
    cut = len(block) + 1 if block else 0
    return [f"{block}.{n}" if block else n for n in _ordered(scope, [n[cut:] for n in names])]


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
    inputs: tuple[str, ...]  # the attention's input projections, in the order forward calls them
    o: str  # the attention's output projection
    kv_heads: int  # key/value heads (fewer than the query heads under grouped- or multi-query attention)
    q: str | None = None  # the query projection, when not fused into qkv
    k: str | None = None  # the key projection, when separate
    v: str | None = None  # the value projection, when separate
    kv: str | None = None  # a fused key/value projection beside a separate q
    qkv: str | None = None  # one fused query/key/value projection
    mlp: str | None = None  # the MLP block (the common parent of its maps; "" = the layer)
    up: str | None = None  # reads the hidden size, writes ffn
    gate: str | None = None  # a gated MLP's gate: reads the hidden size, writes ffn
    gate_up: str | None = None  # gate and up fused in one map (writes 2 x ffn)
    down: str | None = None  # reads ffn, writes the hidden size
    ffn: int | None = None  # the MLP's inner width (the down projection's input)

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
        ordered = _ordered_within(layer, block, inner)
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
        gate, up = _ordered_within(layer, _common_parent(ins), ins)  # the gate is called first
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
        return self.targets(LayerMaps.attention_targets)

    def key_value_targets(self) -> tuple[list[str], list[str]]:
        """What (IA)³ rescales: the key and value projections (or the fused projection that
        holds them) and the MLP's down projection, as :meth:`targets`; and the down projections
        alone (rescaled at their input). Layers without a linear MLP contribute no down map."""
        down = self.targets(lambda maps: [maps.down] if maps.down else [])
        return self.targets(lambda maps: [maps.kv or maps.qkv] if (maps.kv or maps.qkv) else [maps.k, maps.v]) + down, down

    def targets(self, pick) -> list[str]:
        """Shortest module-name suffixes that name exactly the maps ``pick(layer_maps)`` returns
        (names relative to the layer) in every decoder layer, and nothing else."""
        wanted: dict[str, list[str]] = {}
        for i, maps in enumerate(self.maps):
            for rel in pick(maps) if maps else []:
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


def decoder_layers(model) -> torch.nn.ModuleList:
    """The module list of ``model``'s decoder layers (the first list of as many modules as the
    config has layers), wrapped or not (a peft model, LST's backbone): what a sharded cell makes
    its units of. Raises :class:`ArchitectureError` when there is none."""
    g = geometry(model)
    for _, layers in _layer_lists(model, g.layers):
        return layers
    raise ArchitectureError(f"cannot find {g.layers} decoder layers in {type(model).__name__}")


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
    the model returns no cache of transformers' shape, or has no weights to run (a stand-in
    on the meta device)."""
    param = next(model.parameters())
    if param.is_meta:
        return None
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
