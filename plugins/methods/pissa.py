"""PiSSA: LoRA initialised from the principal singular vectors of each adapted weight."""
from suite import hookimpl

from .lora import LoRA
from .peft_base import SWEPT, targeted_modules


class PiSSA(LoRA):
    name = "pissa"
    description = "LoRA whose A, B start as the top-r singular triplets of W; the residual stays frozen (peft init 'pissa')"
    quantized_base = False
    quantized_base_reason = "its initialisation rewrites W as a residual, which peft does not do in 4 or 8 bits"
    paper = (
        "Meng, Wang & Zhang, 2024, PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large "
        "Language Models (NeurIPS 2024): A and B from the top r singular values and vectors of W, the base "
        "weight replaced by the residual W - BA, so the model still starts from the base; "
        "lora_alpha equal to r (scale 1), as in the paper. Full SVD (peft's 'pissa'), exact and deterministic; "
        "the paper's fast SVD ('pissa_niter_k') is for large matrices. r, dropout and targets are the "
        "arena's LoRA settings. lr 3e-2 (the paper's 2e-5 is for 7B models and epochs of data), the best "
        f"of {SWEPT}: 0.703 at 0.032 (0.01: 0.656, 0.1: 0.531)."
    )
    default = False
    defaults = {**LoRA.defaults, "lr": 3e-2, "alpha": 4}
    grid = {"lr": [3e-3, 1e-2, 3e-2, 0.1, 0.3]}

    def variant_options(self, model, params):
        # the stand-in check_params gets has no weights to decompose: LoRA's init there
        on_meta = model is not None and any(p.is_meta for p in model.parameters())
        return {} if on_meta else {"init_lora_weights": "pissa"}

    def trained_base(self, model, params):
        """The adapted weights: PiSSA rewrites them to the residual W - BA when applied (they do
        not train, but they change, so they are not declared frozen)."""
        names = {n for n, _ in model.named_parameters()}
        return {f"{m}.weight" for m, _ in targeted_modules(model, self.peft_config(model, params))} & names

    def base_view(self, model):
        """None: with the adapter switched off PiSSA computes the residual model, not the base."""
        return None


@hookimpl
def register_methods(register):
    register(PiSSA())
