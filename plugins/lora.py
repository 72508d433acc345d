"""LoRA: trainable low-rank updates B·A beside frozen weight matrices (through peft).

The LoRA variants (``dora``, ``pissa``, ``lora-plus``, ``adalora``) build on :class:`LoRA`:
they share its settings (``r``, ``alpha``, ``dropout``, ``targets``) through
:func:`shared_options` and add their own through :meth:`LoRA.variant_options`.
"""
from suite import PeftMethod, hookimpl

from .targets import split_names


def shared_options(params: dict) -> dict:
    """The ``LoraConfig`` keyword arguments every LoRA variant takes from its settings."""
    from peft import TaskType

    return dict(
        task_type=TaskType.CAUSAL_LM,
        lora_alpha=params["alpha"],
        lora_dropout=params["dropout"],
        target_modules=split_names(params["targets"]),
    )


class LoRA(PeftMethod):
    name = "lora"
    description = "low-rank updates on the attention projections (peft LoraConfig)"
    paper = (
        "Hu et al., 2021, LoRA: Low-Rank Adaptation of Large Language Models (ICLR 2022): "
        "W_q and W_v adapted (Sec. 7.1), B initialised to zero, update scaled by alpha/r; "
        "r, alpha and dropout from the paper's GPT-2 setting (Table 11). lr raised from the "
        "paper's 2e-4 for the arena's short default budget."
    )
    mergeable = True  # W + (alpha/r)·B·A is one matrix again: no extra inference cost
    defaults = {
        "lr": 1e-3,
        "r": 4,
        "alpha": 32,
        "dropout": 0.1,
        # None: peft's default for the architecture (q_proj,v_proj on LLaMA/Qwen2, c_attn on GPT-2)
        "targets": None,
    }

    def variant_options(self, model, params) -> dict:
        """Further ``LoraConfig`` keyword arguments of a variant (DoRA, PiSSA); none for LoRA."""
        return {}

    def peft_config(self, model, params):
        from peft import LoraConfig

        return LoraConfig(r=params["r"], **shared_options(params), **self.variant_options(model, params))


@hookimpl
def register_methods(register):
    register(LoRA())
