"""The ladder side network and the causal-LM wrapper that trains it beside a frozen backbone.

Forward pass (Sung et al. 2022, adapted to a decoder-only LM)::

    h_0 .. h_L = backbone hidden states             (frozen, computed without autograd)
    s = down_0(h_0)
    for each kept layer i (block j):  s = block_j(mu_j * down_j(h_i) + (1 - mu_j) * s)
    logits = lm_head(h_final + up(norm(s)))         (lm_head frozen, up initialised to zero)

with ``mu_j = sigmoid(alpha_j / T)``. Autograd keeps only the ladder inputs and the side
network's own (width d/r) activations; nothing of the backbone's layers.

This module imports nothing of leitai: ``leitai export`` copies it beside ``modeling_lst.py`` into
an exported model directory, which transformers then loads without leitai
(``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class SideShape:
    """The side network's dimensions for one backbone and one set of settings."""

    hidden: int  # d, the backbone's width
    width: int  # d / r, the side network's width
    heads: int  # the backbone's number of attention heads, kept
    head_dim: int  # the backbone's head dim / r
    ffn: int  # the backbone's MLP width / r
    gated: bool  # SwiGLU-style MLP (gate * up), as the backbone's
    act: str  # the backbone's activation (a transformers ACT2FN name)
    layers: tuple  # 0-based backbone layers whose output feeds a side block
    eps: float  # norm epsilon
    gate_temperature: float

    @property
    def attn(self) -> int:
        return self.heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)


class SideCache:
    """Keys and values of each side block for the tokens seen so far (greedy generation)."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def update(self, j: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append block ``j``'s new keys/values; return all of them."""
        if j == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[j] = torch.cat([self.keys[j], k], dim=2)
            self.values[j] = torch.cat([self.values[j], v], dim=2)
        return self.keys[j], self.values[j]


def attention_mask_for(attention_mask, q_len: int, past: int) -> tuple[torch.Tensor | None, bool]:
    """``(attn_mask, is_causal)`` for ``scaled_dot_product_attention`` over ``past + q_len`` keys.

    A right-padded (or unpadded) batch needs only the causal mask: real positions come first,
    so no real query ever sees a pad. Anything else gets an explicit mask of causal and
    non-padded keys; each query may always see itself, so no row is empty (no NaN).
    """
    if attention_mask is None or bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
        if q_len == 1:
            return None, False
        if past == 0:
            return None, True
        attention_mask = None
    total = past + q_len
    q_pos = torch.arange(past, total, device=attention_mask.device if attention_mask is not None else None)
    allowed = torch.arange(total, device=q_pos.device)[None, :] <= q_pos[:, None]  # (q, k)
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, -total:].bool()
        allowed = allowed | (torch.arange(total, device=q_pos.device)[None, :] == q_pos[:, None])
    return allowed, False


class SideBlock(nn.Module):
    """A pre-norm causal transformer block of the side network's width (attention + MLP)."""

    def __init__(self, shape: SideShape):
        super().__init__()
        from transformers.activations import ACT2FN

        w, a, f = shape.width, shape.attn, shape.ffn
        self.heads = shape.heads
        self.attn_norm = nn.RMSNorm(w, eps=shape.eps)
        self.q, self.k, self.v = (nn.Linear(w, a, bias=False) for _ in range(3))
        self.o = nn.Linear(a, w, bias=False)
        self.mlp_norm = nn.RMSNorm(w, eps=shape.eps)
        self.gate = nn.Linear(w, f, bias=False) if shape.gated else None
        self.up = nn.Linear(w, f, bias=False)
        self.down = nn.Linear(f, w, bias=False)
        self.act = ACT2FN[shape.act]

    def forward(self, x, mask, is_causal: bool, cache: SideCache | None = None, index: int = 0):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q, k, v = (p(h).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        if cache is not None:
            k, v = cache.update(index, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, -1))
        h = self.mlp_norm(x)
        m = self.act(self.gate(h)) * self.up(h) if self.gate is not None else self.act(self.up(h))
        return x + self.down(m)


class SideNetwork(nn.Module):
    """Downsamplers, gates, side blocks, final norm and upsampler: everything LST trains."""

    def __init__(self, shape: SideShape):
        super().__init__()
        self.shape = shape
        n = len(shape.layers)
        # down[0] reads the embeddings, down[j + 1] the output of backbone layer shape.layers[j]
        self.down = nn.ModuleList(nn.Linear(shape.hidden, shape.width, bias=False) for _ in range(n + 1))
        # each ladder input standardised per dimension (see :meth:`calibrate`); saved with the side
        self.register_buffer("ladder_mean", torch.zeros(n + 1, shape.hidden))
        self.register_buffer("ladder_scale", torch.ones(n + 1, shape.hidden))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        self.alpha = nn.Parameter(torch.zeros(n))  # the gates' logits (times T): mu = 0.5 at start
        self.blocks = nn.ModuleList(SideBlock(shape) for _ in range(n))
        self.norm = nn.RMSNorm(shape.width, eps=shape.eps)
        self.up = nn.Linear(shape.width, shape.hidden, bias=False)

    def gates(self) -> torch.Tensor:
        """mu_j = sigmoid(alpha_j / T), the weight each ladder gives the backbone's state."""
        return torch.sigmoid(self.alpha / self.shape.gate_temperature)

    @torch.no_grad()
    def calibrate(self, ladders: list[torch.Tensor], attention_mask=None) -> None:
        """Set each ladder's per-dimension mean and scale from the real tokens of one batch.

        A backbone's residual stream has outlier dimensions (tiny-zh: |h| of 36-56 in one
        dimension, about 1 elsewhere) that its own layers read through norms with small gains
        there. Read raw, they dominate the side network's unit-gain norms and its state hardly
        varies with the input. Standardised, every kept dimension counts. Data-dependent
        initialisation (as in weight normalisation, Salimans & Kingma 2016): the first training
        batch, once; the statistics are buffers, saved and loaded with the side network.
        """
        for j, h in enumerate(ladders):
            x = h.float().flatten(0, 1)
            if attention_mask is not None and attention_mask.shape == h.shape[:2]:
                x = x[attention_mask.flatten().bool()]
            self.ladder_mean[j] = x.mean(0)
            self.ladder_scale[j] = 1.0 / x.std(0, correction=0).clamp_min(1e-6)
        self.calibrated.fill_(True)

    def forward(self, ladders: list[torch.Tensor], attention_mask=None, cache: SideCache | None = None):
        """The side output in the backbone's width, for ``ladders`` = [h_0, h_i for kept i]."""
        if self.training and torch.is_grad_enabled() and not self.calibrated.is_meta and not bool(self.calibrated):
            self.calibrate(ladders, attention_mask)  # a weightless (meta) model, as leitai plan builds, has no data
        dtype = self.up.weight.dtype
        past = cache.length if cache is not None else 0
        mask, causal = attention_mask_for(attention_mask, ladders[0].shape[1], past)
        mu = self.gates()

        def down(j):
            return self.down[j]((ladders[j].to(dtype) - self.ladder_mean[j]) * self.ladder_scale[j])

        s = down(0)
        for j, block in enumerate(self.blocks):
            s = mu[j] * down(j + 1) + (1 - mu[j]) * s
            s = block(s, mask, causal, cache, j)
        return self.up(self.norm(s))


class LadderSideModel(nn.Module):
    """A frozen causal LM with a trainable side network; used like a transformers causal LM.

    ``forward(input_ids, attention_mask, labels)`` returns ``.loss`` (transformers' own shifted
    causal-LM loss, -100 ignored) and ``.logits``; ``generate`` decodes greedily with a KV cache
    for both the backbone and the side network.
    """

    def __init__(self, base: nn.Module, side: SideNetwork, body: str | None = None):
        super().__init__()
        self.base = base
        self.side = side
        # the module that runs the decoder layers and returns their hidden states, by name (not a
        # second parent): the layers' parent as leitai found it (OPT's ``model.decoder``, which its
        # causal LM calls directly), else transformers' ``base_model``
        if body is None:
            body = next((n for n, m in base.named_modules() if m is base.base_model and m is not base), None)
        if not body:
            raise ValueError(f"lst: cannot find the transformer body of {type(base).__name__}")
        self._body_name = body
        if base.get_output_embeddings() is None:
            raise ValueError(f"lst: {type(base).__name__} has no output embeddings (LM head)")

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return self.base.generation_config

    def _run(self, input_ids, attention_mask=None, labels=None, base_cache=None, side_cache=None, **kwargs):
        """The backbone's own forward pass, with the side output added to its final hidden state.

        Hooks on the transformer body run it without autograd (none of its activations kept)
        and add the side network's output to what it returns, so the backbone's own head and
        whatever it does to the logits (Gemma-2's soft-capping, Cohere's ``logit_scale``,
        Granite's ``logits_scaling``) and its own loss apply unchanged.
        """
        body, grad, added = self.base.get_submodule(self._body_name), torch.is_grad_enabled(), []

        def enter(module, args):
            torch.set_grad_enabled(False)  # the frozen backbone: no graph

        def leave(module, args, out):
            torch.set_grad_enabled(grad)
            hs = getattr(out, "hidden_states", None)
            if hs is None:
                raise RuntimeError(f"lst: {type(module).__name__} returned no hidden states")
            added.append(True)
            ladders = [hs[0]] + [hs[i + 1] for i in self.side.shape.layers]
            out.hidden_states = None  # hidden states of dropped layers are freed here
            side = self.side(ladders, attention_mask, side_cache)
            out.last_hidden_state = out.last_hidden_state + side.to(out.last_hidden_state.dtype)
            return out

        hooks = [body.register_forward_pre_hook(enter), body.register_forward_hook(leave)]
        try:
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                            past_key_values=base_cache, use_cache=base_cache is not None, output_hidden_states=True,
                            return_dict=True, **kwargs)
        finally:
            for h in hooks:
                h.remove()
            torch.set_grad_enabled(grad)
        if len(added) != 1:  # never silently the backbone alone
            raise RuntimeError(f"lst: {type(self.base).__name__}'s forward ran {type(body).__name__} {len(added)} times")
        return out

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        for key in ("return_dict", "use_cache", "output_hidden_states"):  # set by the wrapper itself
            kwargs.pop(key, None)
        out = self._run(input_ids, attention_mask, labels, **kwargs)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, generation_config=None, **kwargs):
        """Greedy decoding with KV caches, returning prompt + new tokens as transformers does.

        Finished rows are filled with the pad token until every row has ended. Only greedy
        search is offered, and only unpadded prompts (the arena batches equal-length prompts).
        """
        from transformers import DynamicCache

        config = copy.deepcopy(generation_config or self.base.generation_config)
        unused = config.update(**kwargs)
        if unused:
            raise TypeError(f"lst generate: unsupported arguments {sorted(unused)}")
        if config.do_sample or (config.num_beams or 1) != 1:
            raise NotImplementedError("lst generate: only greedy decoding (do_sample=False, num_beams=1)")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise NotImplementedError("lst generate: padded prompts are not supported; batch equal lengths")
        eos = config.eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), device=input_ids.device)
        pad = config.pad_token_id if config.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
        max_new = config.max_new_tokens
        if max_new is None:
            max_new = max(config.max_length - input_ids.shape[1], 0)
        base_cache, side_cache = DynamicCache(config=self.base.config), SideCache()
        seq, step = input_ids, input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new):
            mask = torch.ones_like(seq)
            logits = self._run(step, mask, base_cache=base_cache, side_cache=side_cache).logits
            token = torch.where(done, torch.full_like(done, pad, dtype=torch.long), logits[:, -1].argmax(-1))
            seq = torch.cat([seq, token[:, None]], dim=1)
            done = done | torch.isin(token, eos)
            if bool(done.all()):
                break
            step = token[:, None]
        return seq
