"""LoKr: the weight update as a Kronecker product of a small and a low-rank matrix (through peft)."""
from suite import hookimpl

from .peft_base import SWEPT, LinearTuner


class LoKr(LinearTuner):
    name = "lokr"
    description = "Kronecker-product update W1 ⊗ (W2a·W2b) (peft LoKrConfig, LyCORIS)"
    quantized_base_reason = "peft cannot put LoKr on a bitsandbytes 4- or 8-bit layer"
    paper = (
        "Edalati et al., 2022, KronA: Parameter Efficient Tuning with Kronecker Adapter (arXiv 2212.10650), "
        "as LyCORIS's LoKr (Yeh et al., 2024, ICLR 2024): dW = W1 ⊗ W2, the matrix split by peft's "
        "default factorisation, W2 itself rank r, scaled by alpha/r, zero-initialised so training starts "
        "from the base. alpha = 2r as in PEFT's method_comparison; r 4 and targets (q, v) as the arena's "
        f"LoRA. lr 1e-2, the best of {SWEPT}: 0.688 (3e-3: 0.469, 0.032: 0.609)."
    )
    default = False
    mergeable = True
    defaults = {"lr": 1e-2, "r": 4, "alpha": 8, "targets": None}
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2, 0.1]}

    def peft_config(self, model, params):
        from peft import LoKrConfig, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING as LOKR_DEFAULTS

        return LoKrConfig(task_type=TaskType.CAUSAL_LM, r=params["r"], alpha=params["alpha"],
                          target_modules=self.targets(model, params["targets"], LOKR_DEFAULTS)[0])


@hookimpl
def register_methods(register):
    register(LoKr())
