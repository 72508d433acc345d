"""HiRA: a high-rank update W0 ⊙ (B·A), the frozen weight times a low-rank product (through peft).

Written only against leitai's public plugin API (``suite.PeftMethod``, ``suite.hookimpl``), as
any third-party package would be.
"""
from __future__ import annotations

from suite import PeftMethod, hookimpl


class HiRA(PeftMethod):
    name = "hira"
    description = "HiRA: Hadamard product of the frozen weight with a low-rank update, W0 ⊙ BA (peft HiraConfig)"
    paper = (
        "Huang et al., 2025, HiRA: Parameter-Efficient Hadamard High-Rank Adaptation for Large Language "
        "Models (ICLR 2025): dW = W0 ⊙ (B·A), so the update can have a high rank with LoRA's parameter "
        "count; B initialised to zero, so training starts from the base. r 32 is peft's default; targets: "
        "peft's defaults for the architecture (q_proj, v_proj on LLaMA). lr 3e-3, set for the arena's "
        "short budget."
    )
    defaults = {
        "lr": 3e-3,
        "r": 32,
        "dropout": 0.0,
        # None: peft's defaults for the architecture; or comma-separated module names
        "targets": None,
    }
    grid = {"lr": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]}
    # B starts at zero: before training the model computes exactly the base model.
    starts_from_base = True
    # W0 + W0 ⊙ BA is one matrix again: no extra inference cost once merged.
    mergeable = True

    def peft_config(self, model, params):
        from peft import HiraConfig, TaskType

        targets = params["targets"]
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        return HiraConfig(task_type=TaskType.CAUSAL_LM, r=params["r"], hira_dropout=params["dropout"],
                          target_modules=targets)


@hookimpl
def register_methods(register):
    register(HiRA())
