"""LoHa: the weight update as the Hadamard product of two low-rank products (through peft)."""
from suite import hookimpl

from .peft_base import SWEPT, LinearTuner


class LoHa(LinearTuner):
    name = "loha"
    description = "low-rank Hadamard product update (W1a·W1b) ⊙ (W2a·W2b) (peft LoHaConfig, LyCORIS)"
    quantized_base_reason = "peft cannot put LoHa on a bitsandbytes 4- or 8-bit layer"
    paper = (
        "Hyeon-Woo, Ye-Bin & Oh, 2022, FedPara: Low-Rank Hadamard Product for Communication-Efficient "
        "Federated Learning (ICLR 2022), as LyCORIS's LoHa (Yeh et al., 2024, ICLR 2024): rank r per factor, "
        "so rank up to r² with 2x LoRA's parameters at the same r; update scaled by alpha/r, one factor of "
        "the second product zero so training starts from the base. alpha = 2r as in PEFT's "
        "method_comparison; r 4 and targets (q, v) as the arena's LoRA. lr 1e-2, the best "
        f"of {SWEPT}: 0.672 (3e-3: 0.453, 0.032: 0.656)."
    )
    default = False
    mergeable = True
    defaults = {"lr": 1e-2, "r": 4, "alpha": 8, "targets": None}
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2, 0.1]}

    def peft_config(self, model, params):
        from peft import LoHaConfig, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING as LOHA_DEFAULTS

        return LoHaConfig(task_type=TaskType.CAUSAL_LM, r=params["r"], alpha=params["alpha"],
                          target_modules=self.targets(model, params["targets"], LOHA_DEFAULTS)[0])


@hookimpl
def register_methods(register):
    register(LoHa())
