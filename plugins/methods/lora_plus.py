"""LoRA+: LoRA with the B matrices trained at a higher learning rate than the A matrices."""
from suite import hookimpl

from .lora import LoRA
from .peft_base import SWEPT


class LoRAPlus(LoRA):
    name = "lora-plus"
    description = "LoRA whose B matrices train at lr x ratio (an optimiser parameter group; peft LoraConfig)"
    paper = (
        "Hayou, Ghosh & Yu, 2024, LoRA+: Efficient Low Rank Adaptation of Large Models (ICML 2024): B trains "
        "at a learning rate lambda = 16 times A's (the ratio 2^4 the paper recommends; peft's "
        "loraplus_lr_ratio), through an optimiser parameter group; the optimiser is otherwise the arena's. "
        "r, alpha, dropout and targets are the arena's LoRA settings. lr (A's) 3e-4, so B trains at 4.8e-3: "
        f"the best of {SWEPT}: 0.812 (9.5e-5: 0.469, lora's 1e-3: 0.688, 3e-3: 0.453)."
    )
    default = False
    defaults = {**LoRA.defaults, "lr": 3e-4, "ratio": 16}
    grid = {"lr": [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]}

    def param_groups(self, model, params):
        """A (and everything else that trains) at lr; every LoRA B matrix at lr x ratio."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        b = [p for n, p in named if "lora_B" in n or "lora_embedding_B" in n]
        rest = [p for n, p in named if not ("lora_B" in n or "lora_embedding_B" in n)]
        return [{"params": rest}, {"params": b, "lr": float(params["lr"]) * float(params["ratio"])}]


@hookimpl
def register_methods(register):
    register(LoRAPlus())
