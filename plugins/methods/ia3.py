"""(IA)³: learned vectors that rescale keys, values and feed-forward activations (through peft)."""
from suite import PeftMethod, hookimpl
from suite.methods.peft_method import peft_default
from suite.models import architecture

from .peft_base import SWEPT, split_names


class IA3(PeftMethod):
    name = "ia3"
    description = "(IA)³: learned rescaling of keys, values and feed-forward activations (peft IA3Config)"
    quantized_base = True  # peft has (IA)³ layers for bitsandbytes 4 and 8 bits
    paper = (
        "Liu et al., 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context "
        "Learning (NeurIPS 2022): vectors l_k, l_v, l_ff rescale keys, values and the feed-forward "
        "activations, initialised to ones (Sec. 3.3); targets are peft's defaults for the architecture "
        "(k_proj, v_proj, down_proj on LLaMA), else the keys, values and MLP down maps found by role. "
        "The paper trains at lr 3e-3 with Adafactor for 1,000 steps; "
        f"lr 0.1 here, for the arena's AdamW and 150 steps: the best of {SWEPT}: 0.688 (0.03: 0.609, 0.32: 0.672)."
    )
    default = False
    mergeable = True  # each vector scales one matrix: folded into it, no extra inference cost
    defaults = {
        "lr": 0.1,
        # None: peft's defaults for the architecture; or module names, and which of them are
        # feed-forward (their input is rescaled instead of their output)
        "targets": None,
        "feedforward": None,
    }
    grid = {"lr": [1e-2, 3e-2, 0.1, 0.3, 1.0]}

    def peft_config(self, model, params):
        from peft import IA3Config, TaskType
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_DEFAULTS

        targets, feedforward = split_names(params["targets"]), split_names(params["feedforward"])
        if targets is None and model is not None and not peft_default(model, IA3_DEFAULTS):
            # peft has no default for this model type: keys, values and the MLP's down map by role
            targets, feedforward = architecture.find(model).key_value_targets()
        return IA3Config(task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=feedforward)


@hookimpl
def register_methods(register):
    register(IA3())
