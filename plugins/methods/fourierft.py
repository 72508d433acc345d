"""FourierFT: the weight update as the inverse DFT of a few trained spectral coefficients (peft)."""
from suite import PeftMethod, hookimpl

from .peft_base import SWEPT, targeted_modules


class FourierFT(PeftMethod):
    name = "fourierft"
    description = "n trained Fourier coefficients per matrix at fixed random frequencies; dW is their inverse DFT (peft FourierFTConfig)"
    quantized_base_reason = "peft cannot put FourierFT on a bitsandbytes 4- or 8-bit layer"
    paper = (
        "Gao et al., 2024, Parameter-Efficient Fine-Tuning with Discrete Fourier Transform (ICML 2024): "
        "dW = alpha · Re(IDFT2(F)), F zero except at n random frequencies (fixed by random_loc_seed), where "
        "its entries train; n 1000 and alpha 300 as in PEFT's method_comparison (the paper's "
        "LLaMA instruction-tuning setting uses n 1000); at most every entry of a smaller matrix. The "
        "paper initialises the coefficients from a Gaussian; here they start at zero (peft "
        "init_weights=True), so training starts from the base. targets: peft's defaults. lr 0.3, the best "
        f"of {SWEPT}: 0.703 at 0.316 (0.1: 0.594, 1.0: 0.547; peft's 3e-3 answers nothing well-formed in 150 steps)."
    )
    default = False
    mergeable = True
    defaults = {"lr": 0.3, "n_frequency": 1000, "scaling": 300.0, "targets": None}
    grid = {"lr": [0.03, 0.1, 0.3, 1.0]}

    def peft_config(self, model, params):
        from peft import FourierFTConfig, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_FOURIERFT_TARGET_MODULES_MAPPING as FOURIERFT_DEFAULTS

        config = FourierFTConfig(task_type=TaskType.CAUSAL_LM, n_frequency=params["n_frequency"],
                                 scaling=params["scaling"], init_weights=True,
                                 target_modules=self.targets(model, params["targets"], FOURIERFT_DEFAULTS)[0])
        # peft refuses n larger than a matrix's entries: such matrices get all of theirs
        for name, module in targeted_modules(model, config):
            weight = getattr(module, "weight", None)
            if weight is not None and weight.numel() < config.n_frequency:
                config.n_frequency_pattern[name] = weight.numel()
        return config


@hookimpl
def register_methods(register):
    register(FourierFT())
