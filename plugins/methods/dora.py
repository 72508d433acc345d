"""DoRA: LoRA on the direction of each weight, with its magnitude trained apart (through peft)."""
from suite import hookimpl

from .lora import LoRA
from .peft_base import SWEPT


class DoRA(LoRA):
    name = "dora"
    description = "weight-decomposed LoRA: trained magnitude vector plus a LoRA update of the direction (peft use_dora)"
    quantized_base = ("nf4", "fp4")
    quantized_base_reason = ("peft's DoRA reads an 8-bit weight in a way that drops its scales on the CPU "
                             "(peft 0.21, bitsandbytes 0.50), so the next forward pass fails")
    paper = (
        "Liu et al., 2024, DoRA: Weight-Decomposed Low-Rank Adaptation (ICML 2024): W = m·(W0 + BA)/||W0 + BA||, "
        "m initialised to the column norms of W0 and B to zero, so training starts from the base. "
        "The paper adapts q, k, v, up and down projections at r 32 with lr 1e-4 to 2e-4 (App., commonsense "
        "reasoning on LLaMA); here r, alpha, dropout and targets are the arena's LoRA settings, so that "
        "dora differs from lora by the decomposition and its lr: 3e-3, the best of "
        f"{SWEPT}: 0.797 with dev loss 0.186 (lora's 1e-3: 0.797 / 0.244; 9.5e-3: 0.766)."
    )
    default = False
    defaults = {**LoRA.defaults, "lr": 3e-3}
    grid = {"lr": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}

    def variant_options(self, model, params):
        return {"use_dora": True}


@hookimpl
def register_methods(register):
    register(DoRA())
