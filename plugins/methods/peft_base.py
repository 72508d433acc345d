"""Which modules of a base model a method acts on, shared by the PEFT-backed methods.

A method's ``targets`` setting is either None (PEFT's default for the architecture) or module
names (a list, or one comma-separated string as ``--set lora.targets=q_proj,v_proj`` gives it).
Normalisation layers are found by their role, not by name: leaf modules whose class is a norm
(``LayerNorm``, ``LlamaRMSNorm``, ``Glm4RMSNorm``...), so LN tuning and BitFit work on any
architecture.
"""
from __future__ import annotations

import copy

import torch

from suite import PeftMethod

#: where the catalogue's learning rates come from: the best dev accuracy (ties to the lower dev
#: loss) of an lr sweep whose grid the runner extends until the best lies inside it
#: (docs/benchmarks.md, "The catalogue's learning rates"); quoted in the methods' ``paper`` texts
SWEPT = "the catalogue's lr sweep on tiny-zh, zh-sentiment, 150 steps, seed 0, 64 dev examples (dev accuracy)"


def split_names(value):
    """``"q_proj, v_proj"`` -> ``["q_proj", "v_proj"]``; a list or None is returned as it is."""
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return value


def targeted_modules(model: torch.nn.Module, config) -> list[tuple[str, torch.nn.Module]]:
    """The ``(name, module)`` pairs that PEFT's ``config`` will adapt on ``model``: its
    ``target_modules``, or PEFT's default for the model type when those are None (then empty
    when PEFT has none: applying the config raises PEFT's own error)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.tuners_utils import check_target_module_exists

    if config.target_modules is None:
        mapping = getattr(PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type], "target_module_mapping", {})
        config = copy.copy(config)
        config.target_modules = mapping.get(getattr(model.config, "model_type", None))
        if config.target_modules is None:
            return []
    return [(name, module) for name, module in model.named_modules() if name and check_target_module_exists(config, name)]


def is_norm(module: torch.nn.Module) -> bool:
    """A normalisation layer: a leaf module whose class is a norm and that holds only 1-D
    parameters (the scale, and maybe a shift)."""
    params = list(module.parameters(recurse=False))
    return (type(module).__name__.lower().endswith("norm") and not list(module.children())
            and bool(params) and all(p.dim() == 1 for p in params))


def norm_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every normalisation layer of ``model`` with its name (:func:`is_norm`)."""
    return [(name, module) for name, module in model.named_modules() if name and is_norm(module)]


def norm_targets(model: torch.nn.Module) -> list[str]:
    """``target_modules`` that select exactly the normalisation layers of ``model``: their last
    name parts (``input_layernorm``, ``norm``...), or their full names where a part also names
    another kind of module."""
    norms = norm_modules(model)
    if not norms:
        raise ValueError(f"no normalisation layers found in {type(model).__name__}")
    leaves = {name.rsplit(".", 1)[-1] for name, _ in norms}
    others = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and not is_norm(module)}
    if leaves & others:
        return [name for name, _ in norms]
    return sorted(leaves)


def conv1d_as_linear(model: torch.nn.Module, config) -> list[str]:
    """Replace each GPT-2-style ``Conv1D`` (transformers' ``y = x·W + b``, ``W`` of shape
    ``(in, out)``) that ``config`` targets by the equivalent ``nn.Linear``, for PEFT tuners that
    adapt only ``nn.Linear`` layers (OFT, BOFT, LoHa, LoKr). The weight becomes a transposed
    view of the same storage (no copy; frozen like the original) and keeps its name; the
    outputs are the same. The tuners freeze the base, and so is the ``Conv1D``'s own weight,
    which now lives only in the ``nn.Linear``. Returns the names of the replaced modules."""
    from transformers.pytorch_utils import Conv1D

    replaced = []
    for name, module in targeted_modules(model, config):
        if not isinstance(module, Conv1D):
            continue
        weight = module.weight
        linear = torch.nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None,
                                 device="meta", dtype=weight.dtype)
        weight.requires_grad_(False)
        linear.weight = torch.nn.Parameter(weight.detach().t(), requires_grad=False)
        if module.bias is not None:
            linear.bias = module.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
        replaced.append(name)
    return replaced


class LinearTuner(PeftMethod):
    """A PEFT-backed method whose PEFT layers adapt ``nn.Linear`` only: GPT-2-style ``Conv1D``
    targets are made ``nn.Linear`` first (:func:`conv1d_as_linear`), when applied and when
    loaded, so the method runs on GPT-2-style models too."""

    def apply(self, model, params):
        conv1d_as_linear(model, self.peft_config(model, params))
        return super().apply(model, params)

    def load(self, base_model, directory, params):
        conv1d_as_linear(base_model, self.peft_config(base_model, params))
        return super().load(base_model, directory, params)

    def check_params(self, params, model=None):
        if model is not None:
            conv1d_as_linear(model, self.peft_config(model, params))
        super().check_params(params, model)
