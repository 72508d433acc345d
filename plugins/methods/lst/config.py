"""LST's settings, where they come from, and the side-network shape they give on a backbone."""
from __future__ import annotations

import math

from .model import SideShape  # noqa: F401  (defined beside the network, which loads without leitai)

DEFAULTS = {
    "lr": 1e-2,
    # side width = backbone width / reduction (the paper's reduction factor r, 8 in its main results)
    "reduction": 8,
    # the ladder gates mu = sigmoid(alpha / T), alpha initialised to 0, T = 0.1 as in the paper
    "gate_temperature": 0.1,
    # the paper's layer dropping: a side block (and its ladder) for every k-th backbone layer only
    "keep_every": 1,
    # "prune": side weights from the backbone's by structured pruning; "random": normal init
    "init": "prune",
}

PAPER = (
    "Sung, Cho & Bansal, 2022, LST: Ladder Side-Tuning for Parameter and Memory Efficient "
    "Transfer Learning (NeurIPS 2022). A side network of width d/r (r = 8) next to the frozen "
    "backbone, fed by a linear downsampler from each backbone layer through a gate "
    "mu = sigmoid(alpha/T), alpha = 0, T = 0.1; side weights initialised by structured "
    "pruning of the backbone's. The paper ranks rows by Fisher information, which needs "
    "gradients on task data that apply() does not see; here rows, head dimensions and MLP units "
    "are ranked by the L1 norm of their weights (Li et al., 2017, Pruning Filters for Efficient "
    "ConvNets): data-free and deterministic, so every run of a shootout starts from the same side. "
    "Adapted to decoder-only LMs: causal side blocks (no positional encoding: the ladders carry "
    "the backbone's positions), the upsampled side output added to the backbone's final hidden "
    "state before the frozen LM head, the upsampler initialised to zero so the untrained model "
    "equals the backbone. Layer dropping is off by default (keep_every=1: one side block per "
    "backbone layer; set keep_every=2 to keep every other one). Each ladder input is standardised per "
    "dimension (mean and scale from the first training batch's real tokens, then fixed, saved with the side): "
    "a backbone's residual stream has outlier dimensions (tiny-zh: |h| 36-56 in one of 256) that its own "
    "layers read through norms with small gains there, and read raw through the side's unit-gain norms "
    "they left the side state 99.5% the same for every input; tried on the arena's loop (zh-sentiment, "
    "150 steps, seed 0) against the old raw ladders, dev accuracy 0.50 -> 0.77 and test accuracy 0.50 -> 0.68. "
    "lr 1e-2: the arena's sweep (docs/benchmarks.md, the defaults sweep: `--sweep lst.lr=3e-3,1e-2,3e-2`, "
    "150 steps, 64 dev examples) gave dev accuracy 0.562, 0.766 and 0.516 (dev loss 0.231, 0.178, 0.235)."
)

INITS = ("prune", "random")


def check_settings(params: dict, width: int | None = None, layers: int | None = None) -> None:
    """Raise ``ValueError`` for a setting LST cannot use; the bounds that depend on the backbone
    (its ``width`` and number of ``layers``) are checked when they are given."""
    r, k, temperature = params["reduction"], params["keep_every"], params["gate_temperature"]
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not whole(r) or r < 1 or (width is not None and r > width):
        raise ValueError(f"lst: reduction must be an integer from 1 to the model width {width or 'd'}, got {r!r}")
    if not whole(k) or k < 1 or (layers is not None and k > layers):
        raise ValueError(f"lst: keep_every must be an integer from 1 to the layer count {layers or 'L'}, got {k!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"lst: gate_temperature must be a positive number, got {temperature!r}")
    if params["init"] not in INITS:
        raise ValueError(f"lst: init must be one of {', '.join(INITS)}, got {params['init']!r}")


def side_shape(config, params: dict, gated: bool, act: str, ffn: int | None = None,
               head_dim: int | None = None) -> SideShape:
    """The side network's shape for a transformers ``config``; bad settings raise ``ValueError``.

    ``ffn`` and ``head_dim`` are the backbone's MLP width and head dimension where they were
    found from its layers (:mod:`suite.models.architecture`); otherwise they are read from the config.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, n_layers, heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
    check_settings(params, d, n_layers)
    r, k, temperature = params["reduction"], params["keep_every"], params["gate_temperature"]
    head_dim = head_dim or getattr(cfg, "head_dim", None) or d // heads
    ffn = ffn or getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    eps = next((getattr(cfg, a) for a in ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps")
                if getattr(cfg, a, None) is not None), 1e-6)
    return SideShape(
        hidden=d, width=max(1, d // r), heads=heads, head_dim=max(1, head_dim // r), ffn=max(1, ffn // r),
        gated=gated, act=act, layers=tuple(i for i in range(n_layers) if (i + 1) % k == 0), eps=float(eps),
        gate_temperature=float(temperature),
    )
