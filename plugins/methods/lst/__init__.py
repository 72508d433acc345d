"""Ladder side-tuning (LST) for causal LMs: a small side network trains beside a frozen
backbone, so backpropagation never enters the backbone and its activations are not kept.

Sung, Cho & Bansal, NeurIPS 2022. ``config`` holds the settings and the side network's shape,
``model`` the side network and the wrapper the arena trains, ``prune`` the initialisation of
the side network from the backbone's weights.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from suite import Method, hookimpl
from suite.models import architecture
from suite.models.architecture import ArchitectureError

from . import prune
from .config import DEFAULTS, PAPER, check_settings, side_shape
from .model import LadderSideModel, SideNetwork


def _activation(cfg, gated: bool) -> str:
    """The backbone's activation (a transformers ACT2FN name); SiLU or GELU where it names none."""
    from transformers.activations import ACT2FN

    for key in ("hidden_act", "hidden_activation", "activation_function", "activation"):
        act = getattr(cfg, key, None)
        if isinstance(act, str) and act in ACT2FN:
            return act
    return "silu" if gated else "gelu"


def _body(arch) -> str | None:
    """The name of the module that runs the decoder layers: the layers' parent, found by role
    (OPT's ``model.decoder``, which its causal LM calls directly); None: transformers' ``base_model``."""
    return arch.layers_name.rpartition(".")[0] if arch is not None else None


def build(base: torch.nn.Module, params: dict) -> LadderSideModel:
    """Freeze ``base`` and put a side network with settings ``params`` beside it.

    The returned model's ``init_info`` says which initialisation ran (``{"init": "prune"}``,
    or ``"random"``), with ``"fallback"``: why, where pruning could not read the backbone's
    weights (or some of them) and the side weights stayed random.
    """
    for p in base.parameters():
        p.requires_grad_(False)
    try:
        arch, why_not = architecture.find(base), None
    except ArchitectureError as e:
        arch, why_not = None, str(e)
    first = arch.maps[0] if arch is not None else None
    gated = bool(first and first.down and first.gated)
    cfg = base.config.get_text_config()
    shape = side_shape(base.config, params, gated=gated, act=_activation(cfg, gated),
                       ffn=first.ffn if first and first.down else None,
                       head_dim=arch.geometry.head_dim if arch is not None else None)
    with torch.device(next(base.parameters()).device):  # built where the backbone is (on meta: no memory)
        side = SideNetwork(shape)  # float32 whatever the backbone's dtype
    std = getattr(cfg, "initializer_range", None) or 0.02
    for module in side.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=std)
    info = {"init": params["init"]}
    weightless = next(base.parameters()).device.type == "meta"  # leitai plan: shapes only, nothing to prune from
    if params["init"] == "prune" and not weightless:
        try:
            if arch is None:
                raise ArchitectureError(why_not)
            weights, partly = prune.backbone_weights(base, arch)
        except ArchitectureError as e:
            info = {"init": "random", "fallback": f"init='prune' cannot read the backbone's weights ({e}); "
                                                  "the side network starts from random weights"}
            warnings.warn(f"lst: {info['fallback']}", stacklevel=2)
        else:
            if partly:
                info["fallback"] = partly
            keep = prune.residual_dims(weights, shape.width)
            with torch.no_grad():
                for block, i in zip(side.blocks, shape.layers):
                    prune.prune_into(block, weights[i], keep, shape.heads)
                for down in side.down:  # each ladder starts as the kept residual dimensions themselves
                    down.weight.zero_()
                    down.weight[torch.arange(shape.width, device=keep.device), keep] = 1.0
    torch.nn.init.zeros_(side.up.weight)  # untrained: logits are exactly the backbone's
    model = LadderSideModel(base, side, _body(arch))
    model.init_info = info
    return model


class LST(Method):
    name = "lst"
    description = "a d/r-wide side network fed by gated ladders from the frozen backbone (no backprop through it)"
    paper = PAPER
    defaults = DEFAULTS
    freezes_base = True
    quantized_base = True  # the backbone is only read (its hidden states feed the ladders)

    def apply(self, model, params):
        return build(model, params)

    def check_params(self, params, model=None):
        """Every setting, against the backbone's width and depth when a stand-in gives them
        (``side_shape``); the side network is not built: pruning reads weights, which the
        weightless stand-in has not."""
        if model is None:
            check_settings(params)
        else:
            side_shape(model.config, params, gated=False, act="gelu")

    def run_info(self, model, params):
        """Which initialisation ran: ``{"init": "prune"}``, or ``"random"``; with ``"fallback"``
        (why) where pruning could not read the backbone's weights, or some of them."""
        return dict(getattr(model, "init_info", {"init": params["init"]}))

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

    def export(self, model, directory: Path, params, dtype=None):
        """A transformers model directory that loads without leitai's source:
        ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. The code travels
        with the weights, as remote code on the Hugging Face hub does: ``modeling_lst.py`` and
        ``model.py`` (the side network, which imports nothing of leitai); the frozen backbone in
        ``base/`` (in ``dtype``), the side network in ``side.safetensors`` (float32, as trained)."""
        import shutil

        from safetensors.torch import save_file

        from .modeling_lst import LstConfig

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        base = model.base
        if dtype is not None:
            base.to(dtype)
        base.save_pretrained(str(directory / "base"))
        state = {k: v.detach().contiguous().cpu() for k, v in model.side.state_dict().items()}
        save_file(state, str(directory / "side.safetensors"))
        here = Path(__file__).parent
        for name in ("modeling_lst.py", "model.py"):
            shutil.copyfile(here / name, directory / name)
        config = LstConfig(side=model.side.shape.to_dict(), body=model._body_name, base_dir="base",
                           architectures=["LstForCausalLM"],
                           auto_map={"AutoConfig": "modeling_lst.LstConfig", "AutoModelForCausalLM": "modeling_lst.LstForCausalLM"})
        config.save_pretrained(str(directory))
        return "transformers"

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
