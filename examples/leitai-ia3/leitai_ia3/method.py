"""(IA)³: learned vectors that rescale keys, values and feed-forward activations (through peft).

Written only against leitai's public plugin API (``suite.PeftMethod``, ``suite.hookimpl``), as
any third-party package would be.
"""
from __future__ import annotations

from suite import PeftMethod, hookimpl


class IA3(PeftMethod):
    name = "ia3"
    description = "(IA)³: learned rescaling of keys, values and feed-forward activations (peft IA3Config)"
    paper = (
        "Liu et al., 2022, Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than "
        "In-Context Learning (NeurIPS 2022): vectors l_k, l_v, l_ff rescale keys, values and the "
        "feed-forward activations, initialised to ones (Sec. 3.3); lr 3e-3 as in the paper "
        "(Sec. 3.3 and App. D), there with Adafactor, here with the arena's AdamW. Targets: "
        "peft's defaults for the architecture (k_proj, v_proj, down_proj on LLaMA)."
    )
    defaults = {
        "lr": 3e-3,
        # None: peft's defaults for the architecture; or comma-separated module names, and
        # which of them are feed-forward (their input is rescaled instead of their output)
        "targets": None,
        "feedforward": None,
    }
    # The vectors start at one: before training the model computes exactly the base model.
    starts_from_base = True

    def peft_config(self, model, params):
        from peft import IA3Config, TaskType

        def names(value):
            return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value

        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=names(params["targets"]),
            feedforward_modules=names(params["feedforward"]),
        )


@hookimpl
def register_methods(register):
    register(IA3())
