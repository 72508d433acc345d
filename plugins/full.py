"""Full fine-tuning: every base weight trains. The baseline every method is measured against."""
from pathlib import Path

from suite import Method, hookimpl


class Full(Method):
    name = "full"
    description = "every base weight trainable (the baseline)"
    paper = "Baseline. lr in the range commonly used to fine-tune small causal LMs with AdamW."
    defaults = {"lr": 1e-4}
    freezes_base = False

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, directory: Path, params):
        model.save_pretrained(str(directory))

    def load(self, base_model, directory: Path, params):
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / "model.safetensors"))
        missing, unexpected = base_model.load_state_dict(state, strict=False)
        tied = set(getattr(base_model, "_tied_weights_keys", None) or [])  # saved once, under the other name
        if unexpected or set(missing) - tied:
            raise ValueError(f"full: saved weights do not match the model ({(unexpected or missing)[:3]})")
        return base_model


@hookimpl
def register_methods(register):
    register(Full())
