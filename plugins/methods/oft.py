"""OFT: a trained block-diagonal orthogonal rotation of each adapted weight (through peft)."""
from suite import hookimpl

from .peft_base import SWEPT, LinearTuner


class OFT(LinearTuner):
    name = "oft"
    description = "block-diagonal orthogonal rotation of the input side of W, Cayley-parametrised (peft OFTConfig)"
    quantized_base_reason = "peft cannot put OFT on a bitsandbytes 4- or 8-bit layer"
    paper = (
        "Qiu et al., 2023, Controlling Text-to-Image Diffusion by Orthogonal Finetuning (NeurIPS 2023): W "
        "multiplied by a block-diagonal orthogonal R = (I + Q)(I - Q)^-1 from skew-symmetric Q, "
        "initialised to the identity, so training starts from the base; blocks of 32 (peft's "
        "OFT v2 default, with its Cayley-Neumann approximation of the inverse); targets (q, v) as the "
        "arena's LoRA. lr 1e-2, the best of "
        f"{SWEPT}: 0.734 with dev loss 0.200 (1e-3: 0.734 / 0.273, 3e-3: 0.719, 0.032: 0.547)."
    )
    default = False
    mergeable = True
    defaults = {"lr": 1e-2, "block_size": 32, "targets": None}
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2, 0.1]}

    def peft_config(self, model, params):
        from peft import OFTConfig, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_OFT_TARGET_MODULES_MAPPING as OFT_DEFAULTS

        return OFTConfig(task_type=TaskType.CAUSAL_LM, r=0, oft_block_size=params["block_size"],
                         target_modules=self.targets(model, params["targets"], OFT_DEFAULTS)[0])


@hookimpl
def register_methods(register):
    register(OFT())
