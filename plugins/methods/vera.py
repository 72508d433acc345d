"""VeRA: frozen random low-rank matrices shared by all layers, with trained scaling vectors."""
import warnings

from suite import PeftMethod, hookimpl

from .peft_base import SWEPT


class VeRA(PeftMethod):
    name = "vera"
    description = "shared frozen random A, B; per layer trained vectors d, b scale them (peft VeraConfig)"
    quantized_base_reason = "peft cannot put VeRA on a bitsandbytes 4- or 8-bit layer"
    paper = (
        "Kopiczko, Blankevoort & Asano, 2024, VeRA: Vector-based Random Matrix Adaptation (ICLR 2024): "
        "dW = diag(b)·B·diag(d)·A with A, B frozen, random and shared across layers, b initialised to zero "
        "and d to d_initial 0.1; r 256 as in PEFT's method_comparison (the paper uses 256 to "
        "1024). The projections are regenerated from projection_prng_key, not saved "
        "(save_projection=False): the paper's point that only the vectors and a seed need storing. "
        "The paper trains the vectors at about ten times LoRA's learning rate; lr 0.1 here, the best of "
        f"{SWEPT}: 0.609 with dev loss 0.239 at 0.09 (0.3: 0.609 / 0.268, 0.027: 0.484, 1.0: 0.172)."
    )
    default = False
    mergeable = True
    defaults = {"lr": 0.1, "r": 256, "d_initial": 0.1, "dropout": 0.0, "targets": None}
    grid = {"lr": [1e-2, 3e-2, 0.1, 0.3, 1.0]}

    def peft_config(self, model, params):
        from peft import TaskType, VeraConfig
        from peft.utils import TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING as VERA_DEFAULTS

        with warnings.catch_warnings():  # peft warns that the projections are not saved: on purpose
            warnings.filterwarnings("ignore", message="Specified to not save vera_A and vera_B")
            return VeraConfig(task_type=TaskType.CAUSAL_LM, r=params["r"], d_initial=params["d_initial"],
                              vera_dropout=params["dropout"], target_modules=self.targets(model, params["targets"], VERA_DEFAULTS)[0],
                              save_projection=False)

    def load(self, base_model, directory, params):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Specified to not save vera_A and vera_B")
            return super().load(base_model, directory, params)


@hookimpl
def register_methods(register):
    register(VeRA())
