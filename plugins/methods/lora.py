"""LoRA: trainable low-rank updates B·A beside frozen weight matrices (through peft).

The LoRA variants (``dora``, ``pissa``, ``lora-plus``, ``adalora``) build on :class:`LoRA`:
they share its settings (``r``, ``alpha``, ``dropout``, ``targets``) through
:func:`shared_options` and add their own through :meth:`LoRA.variant_options`.
"""
from suite import PeftMethod, hookimpl


def shared_options(method: PeftMethod, model, params: dict) -> dict:
    """The ``LoraConfig`` keyword arguments every LoRA variant takes from its settings; the
    targets as :meth:`~suite.PeftMethod.targets` chooses them (the user's, peft's default for
    the model type, or the query and value projections found by role)."""
    from peft import TaskType

    return dict(
        task_type=TaskType.CAUSAL_LM,
        lora_alpha=params["alpha"],
        lora_dropout=params["dropout"],
        target_modules=method.targets(model, params["targets"])[0],
    )


class LoRA(PeftMethod):
    name = "lora"
    description = "low-rank updates on the attention projections (peft LoraConfig)"
    quantized_base = True  # peft puts LoRA on bitsandbytes 4- and 8-bit layers (QLoRA)
    paper = (
        "Hu et al., 2021, LoRA: Low-Rank Adaptation of Large Language Models (ICLR 2022): "
        "W_q and W_v adapted (Sec. 7.1), B initialised to zero, update scaled by alpha/r; "
        "r, alpha and dropout from the paper's GPT-2 setting (Table 11). lr 1e-3 (the paper's 2e-4 "
        "is for far longer runs), the best of the arena's sweep "
        "(docs/benchmarks.md, the defaults sweep: `leitai run --tasks zh-sentiment --sweep lr`, 150 steps, seed 0, 64 dev examples): "
        "dev accuracy 0.797 (3e-3: 0.781, 3e-4: 0.438); again with tiny-zh's prompts without <s> "
        "(`--sweep lora.lr=3e-4,1e-3,3e-3`): 0.781 (3e-3: 0.766, 3e-4: 0.438)."
    )
    mergeable = True  # W + (alpha/r)·B·A is one matrix again: no extra inference cost
    defaults = {
        "lr": 1e-3,
        "r": 4,
        "alpha": 32,
        "dropout": 0.1,
        # None: peft's default for the model type (q_proj,v_proj on LLaMA/Qwen2, c_attn on GPT-2),
        # else the attention's query and value projections found by role (suite.models.architecture)
        "targets": None,
    }

    def variant_options(self, model, params) -> dict:
        """Further ``LoraConfig`` keyword arguments of a variant (DoRA, PiSSA); none for LoRA."""
        return {}

    def peft_config(self, model, params):
        from peft import LoraConfig

        return LoraConfig(r=params["r"], **shared_options(self, model, params), **self.variant_options(model, params))

    def run_info(self, model, params):
        """peft's resolved target modules, and where they came from (settings, peft's default
        for the model type, or found by role)."""
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

        info = super().run_info(model, params)
        model_type = getattr(model.get_base_model().config, "model_type", None)
        if params["targets"]:
            info["targets_from"] = "settings"
        elif sorted(mapping.get(model_type) or []) == info.get("target_modules"):
            info["targets_from"] = f"peft default for {model_type}"
        else:
            info["targets_from"] = "found by role"
        return info


@hookimpl
def register_methods(register):
    register(LoRA())
