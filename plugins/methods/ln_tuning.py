"""LN tuning: only the normalisation layers train, as copies beside the frozen ones (through peft)."""
import warnings

from suite import PeftMethod, hookimpl

from .peft_base import SWEPT, norm_targets, split_names


class LNTuning(PeftMethod):
    name = "ln-tuning"
    description = "trains a copy of every normalisation layer, the rest frozen (peft LNTuningConfig)"
    quantized_base_reason = "not yet checked on a quantized base (its quantized_base is False)"
    paper = (
        "Zhao et al., 2024, Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning "
        "(ICLR 2024): only the LayerNorm (here RMSNorm too) scales and shifts train. Every "
        "normalisation layer of the model, found by its role (peft's default list for Qwen2 has only "
        "post_attention_layernorm; the paper tunes all of them). lr 3e-2 (the paper's runs are far "
        f"longer), the best of {SWEPT}: 0.688 (0.01: 0.594, 0.095: 0.578)."
    )
    default = False
    mergeable = True  # the trained copies replace the originals: the base's own architecture
    defaults = {"lr": 3e-2, "targets": None}
    grid = {"lr": [3e-3, 1e-2, 3e-2, 0.1, 0.3]}

    def peft_config(self, model, params):
        from peft import LNTuningConfig, TaskType

        targets = split_names(params["targets"]) or norm_targets(model)
        return LNTuningConfig(task_type=TaskType.CAUSAL_LM, target_modules=targets)

    # peft looks for in/out features on every target and warns that norms have none: noise here
    def apply(self, model, params):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unsupported layer type .*Norm")
            return super().apply(model, params)

    def load(self, base_model, directory, params):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unsupported layer type .*Norm")
            return super().load(base_model, directory, params)


@hookimpl
def register_methods(register):
    register(LNTuning())
