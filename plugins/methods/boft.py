"""BOFT: an orthogonal rotation of each adapted weight, as a product of butterfly factors (peft)."""
from suite import hookimpl

from .peft_base import SWEPT, LinearTuner


class BOFT(LinearTuner):
    name = "boft"
    description = "orthogonal rotation of W as a product of sparse butterfly factors (peft BOFTConfig)"
    quantized_base_reason = "peft cannot put BOFT on a bitsandbytes 4- or 8-bit layer"
    paper = (
        "Liu et al., 2024, Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization (ICLR 2024): "
        "the rotation R as a product of m butterfly factors of b x b orthogonal blocks, initialised to the "
        "identity, so training starts from the base; m = 2 factors of blocks of b = 8 (a setting "
        "of the paper's LLM experiments); targets (q, v) as the arena's LoRA. lr 0.1, "
        f"the best of {SWEPT}: 0.797 at 0.11 (0.033: 0.719, 0.37: 0.594; the paper's 3e-3: 0.594)."
    )
    default = False
    mergeable = True
    defaults = {"lr": 0.1, "block_size": 8, "butterfly_factors": 2, "dropout": 0.0, "targets": None}
    grid = {"lr": [1e-2, 3e-2, 0.1, 0.3, 1.0]}

    def peft_config(self, model, params):
        from peft import BOFTConfig, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_BOFT_TARGET_MODULES_MAPPING as BOFT_DEFAULTS

        return BOFTConfig(task_type=TaskType.CAUSAL_LM, boft_block_size=params["block_size"],
                          boft_n_butterfly_factor=params["butterfly_factors"], boft_dropout=params["dropout"],
                          target_modules=self.targets(model, params["targets"], BOFT_DEFAULTS)[0])


@hookimpl
def register_methods(register):
    register(BOFT())
