"""Ladder side-tuning (LST) for causal LMs: a small side network trains beside a frozen
backbone, so backpropagation never enters the backbone and its activations are not kept.

Sung, Cho & Bansal, NeurIPS 2022. ``config`` holds the settings and the side network's shape,
``model`` the side network and the wrapper the arena trains, ``prune`` the initialisation of
the side network from the backbone's weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from suite import Method, hookimpl

from . import prune
from .config import DEFAULTS, PAPER, check_settings, side_shape
from .model import LadderSideModel, SideNetwork


def build(base: torch.nn.Module, params: dict) -> LadderSideModel:
    """Freeze ``base`` and put a side network with settings ``params`` beside it."""
    for p in base.parameters():
        p.requires_grad_(False)
    body = base.base_model
    layers = prune.decoder_layers(body)
    first = layers[0] if layers is not None else None
    cfg = base.config.get_text_config()
    act = getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None) or "gelu"
    shape = side_shape(base.config, params, gated=first is not None and prune.is_gated(first), act=act)
    side = SideNetwork(shape).to(next(base.parameters()).device)  # float32 whatever the backbone's dtype
    std = getattr(cfg, "initializer_range", None) or 0.02
    for module in side.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=std)
    if params["init"] == "prune":
        if layers is None:
            raise ValueError(f"lst: cannot find the decoder layers of {type(body).__name__}; use init='random'")
        weights = [prune.layer_weights(layer, base.config) for layer in layers]
        keep = prune.residual_dims(weights, shape.width)
        with torch.no_grad():
            for block, i in zip(side.blocks, shape.layers):
                prune.prune_into(block, weights[i], keep, shape.heads)
            for down in side.down:  # each ladder starts as the kept residual dimensions themselves
                down.weight.zero_()
                down.weight[torch.arange(shape.width, device=keep.device), keep] = 1.0
    torch.nn.init.zeros_(side.up.weight)  # untrained: logits are exactly the backbone's
    return LadderSideModel(base, side)


class LST(Method):
    name = "lst"
    description = "a d/r-wide side network fed by gated ladders from the frozen backbone (no backprop through it)"
    paper = PAPER
    defaults = DEFAULTS
    freezes_base = True

    def apply(self, model, params):
        return build(model, params)

    def check_params(self, params, model=None):
        """The side network is built beside the stand-in (``side_shape`` checks every setting
        against the backbone's width and depth); without one, the settings alone are checked."""
        if model is None:
            check_settings(params)
        else:
            build(model, params)

    def trainable_count(self, model):
        """The side network's size: LST trains it and nothing else."""
        return sum(p.numel() for p in model.side.parameters())

    def base_view(self, model):
        """The frozen backbone itself: LST adds to its output and never changes it."""
        import contextlib

        return contextlib.nullcontext(model.base)

    def save(self, model, directory: Path, params):
        """Only the side network: ``side.safetensors`` and its shape in ``method.json``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in model.side.state_dict().items()}
        save_file(state, str(directory / "side.safetensors"))
        info = {"method": self.name, "params": params, "side": model.side.shape.to_dict()}
        (directory / "method.json").write_text(json.dumps(info, indent=1))

    def load(self, base_model, directory: Path, params):
        """Rebuild the side network beside ``base_model`` and load the saved weights into it."""
        from safetensors.torch import load_file

        model = build(base_model, {**params, "init": "random"})  # every side weight is overwritten
        state = load_file(str(Path(directory) / "side.safetensors"))
        model.side.load_state_dict(state, strict=True)
        return model


@hookimpl
def register_methods(register):
    register(LST())
