"""LoRA+: LoRA with the B matrices trained at a higher learning rate than the A matrices."""
from suite import hookimpl

from .lora import LoRA


class LoRAPlus(LoRA):
    name = "lora-plus"
    description = "LoRA whose B matrices train at lr x ratio (an optimiser parameter group; peft LoraConfig)"
    paper = (
        "Hayou, Ghosh & Yu, 2024, LoRA+: Efficient Low Rank Adaptation of Large Models (ICML 2024): B at a "
        "learning rate lambda = 16 times A's (the ratio 2^4 the paper recommends, Sec. 4; peft's "
        "loraplus_lr_ratio), the rest of the optimiser unchanged. r, alpha, dropout and targets are the arena's "
        "LoRA settings; lr (A's) is half of LoRA's, since the paper finds the best A rate below LoRA's "
        "(Sec. 5) and B then trains at 8 times LoRA's."
    )
    default = False
    defaults = {**LoRA.defaults, "lr": 5e-4, "ratio": 16}
    grid = {"lr": [5e-5, 1.5e-4, 5e-4, 1.5e-3, 5e-3]}

    def param_groups(self, model, params):
        """A (and everything else that trains) at lr; every LoRA B matrix at lr x ratio."""
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        b = [p for n, p in named if "lora_B" in n or "lora_embedding_B" in n]
        rest = [p for n, p in named if not ("lora_B" in n or "lora_embedding_B" in n)]
        return [{"params": rest}, {"params": b, "lr": float(params["lr"]) * float(params["ratio"])}]


@hookimpl
def register_methods(register):
    register(LoRAPlus())
