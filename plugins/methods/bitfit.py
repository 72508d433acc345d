"""BitFit: only the base model's bias terms train (its normalisation weights where it has none)."""
import contextlib

import torch

from suite import Method, hookimpl

from .peft_base import SWEPT, norm_modules


def bitfit_parameters(model: torch.nn.Module) -> set[str]:
    """The names of ``model``'s bias parameters; where it has none (LLaMA, GLM-4), of its
    normalisation layers' parameters instead."""
    names = {n for n, _ in model.named_parameters()}
    biases = {n for n in names if n.rsplit(".", 1)[-1] == "bias"}
    if biases:
        return biases
    return {f"{m}.{p}" for m, module in norm_modules(model) for p, _ in module.named_parameters()} & names


class BitFit(Method):
    name = "bitfit"
    description = "trains the base model's own bias terms (its norm weights if it has no biases); no new weights"
    quantized_base_reason = "not yet checked on a quantized base (its quantized_base is False)"
    paper = (
        "Ben Zaken, Ravfogel & Goldberg, 2022, BitFit: Simple Parameter-efficient Fine-tuning for "
        "Transformer-based Masked Language-models (ACL 2022): every bias term trains, nothing else. "
        "LLaMA-style models have no biases: there the normalisation weights train instead, the closest "
        "vector-shaped parameters. The paper searches lr in 1e-4 to 1e-3 over many epochs; lr 3e-2 "
        f"here, the best of {SWEPT}: 0.688 (9e-3: 0.594, 0.1: 0.562)."
    )
    default = False
    defaults = {"lr": 3e-2}
    grid = {"lr": [3e-3, 1e-2, 3e-2, 0.1, 0.3]}
    # the model stays the base's own architecture: there is nothing to merge
    mergeable = False

    def trained_base(self, model, params):
        return bitfit_parameters(model)

    def apply(self, model, params):
        trained = bitfit_parameters(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trained)
        # the untouched values, so base_view can switch the method off
        model.bitfit_base = {n: p.detach().clone() for n, p in model.named_parameters() if n in trained}
        return model

    def base_view(self, model):
        """The base model: the trained tensors swapped for their untouched values while inside."""

        @contextlib.contextmanager
        def untouched():
            params = dict(model.named_parameters())
            trained = {n: params[n].detach().clone() for n in model.bitfit_base}
            with torch.no_grad():
                for n, value in model.bitfit_base.items():
                    params[n].copy_(value)
            try:
                yield model
            finally:
                with torch.no_grad():
                    for n, value in trained.items():
                        params[n].copy_(value)

        return untouched()

    def export(self, model, directory, params, dtype=None):
        """The whole model in the base's own architecture, as safetensors, its weights in ``dtype``."""
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(str(directory))
        return "transformers"


@hookimpl
def register_methods(register):
    register(BitFit())
