"""How much attention a prompt's last position gives to the positions a method put before it.

Prefix tuning adds keys and values before the prompt; prompt tuning and P-tuning add virtual
tokens. A base model that learned to look past what comes before its prompt (tiny-zh before
its start token was dropped: ``plugins/models/tiny_zh/MODEL_CARD.md``) silences such a method
whatever it learns. The core measures it on every run that prepends, so a user sees that
handicap on a real model too: the share of the answer position's attention that lands on the
added positions, averaged over layers, heads and prompts, beside the share a uniform
attention would give them.
"""
from __future__ import annotations

import contextlib

import torch

#: test prompts the share is measured on, one at a time
ATTENTION_PROMPTS = 8


@contextlib.contextmanager
def eager_attention(model):
    """The transformers model inside ``model`` with eager attention (the only implementation
    that returns attention weights), restored afterwards; yields False where it cannot be set."""
    from transformers import PreTrainedModel

    inner = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    before = getattr(getattr(inner, "config", None), "_attn_implementation", None)
    try:
        if inner is not None and before != "eager":
            inner.set_attn_implementation("eager")
        ok = inner is not None and inner.config._attn_implementation == "eager"
    except Exception:  # a model that cannot switch (remote code): no measurement
        ok = False
    try:
        yield ok
    finally:
        if ok and before not in (None, "eager"):
            inner.set_attn_implementation(before)


@torch.inference_mode()
def prepended_attention(model, prompts: list[list[int]], device) -> dict:
    """``{"prepended_positions", "prepended_attention_share", "prepended_uniform_share"}`` over
    ``prompts`` (token ids, one at a time, unpadded); empty where the method prepends nothing or
    the model returns no attention weights.

    Prepended positions are counted from the outputs, not taken from the method: logits longer
    than the prompt (virtual tokens) plus keys beyond the queries (a prefix in the cache).
    """
    if not prompts:
        return {}
    model.eval()
    shares, uniform, added = [], [], 0
    with eager_attention(model) as ok:
        if not ok:
            return {}
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            out = model(input_ids=x, attention_mask=torch.ones_like(x), output_attentions=True)
            maps = [a for a in (getattr(out, "attentions", None) or ()) if a is not None]
            if not maps:
                return {}
            queries, keys = maps[0].shape[-2:]
            added = (out.logits.shape[1] - x.shape[1]) + (keys - queries)
            if added <= 0:
                return {}
            last = torch.stack([a[0, :, -1, :added].float().sum(-1).mean() for a in maps])  # per layer
            shares.append(float(last.mean()))
            uniform.append(added / keys)
    return {"prepended_positions": added, "prepended_attention_share": sum(shares) / len(shares),
            "prepended_uniform_share": sum(uniform) / len(uniform)}
