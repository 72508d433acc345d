"""LoRA: trainable low-rank updates B·A beside frozen weight matrices (through peft)."""
from suite import PeftMethod, hookimpl


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

    def peft_config(self, model, params):
        from peft import LoraConfig, TaskType

        targets = params["targets"]
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=params["r"],
            lora_alpha=params["alpha"],
            lora_dropout=params["dropout"],
            target_modules=targets,
        )


@hookimpl
def register_methods(register):
    register(LoRA())
