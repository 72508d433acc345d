"""Full fine-tuning: every base weight trains. The baseline every method is measured against."""
from pathlib import Path

from suite import Method, hookimpl


class Full(Method):
    name = "full"
    description = "every base weight trainable (the baseline)"
    quantized_base_reason = "full fine-tuning trains every base weight, and 4- or 8-bit weights cannot train"
    paper = (
        "Baseline: every weight trains with the arena's AdamW. lr 1e-3, the best of the arena's sweep "
        "(docs/benchmarks.md, the defaults sweep: `leitai run --sweep lr`, 150 steps, seed 0, dev split): on zh-sentiment dev accuracy "
        "0.781 (1e-4: 0.703, 3e-4: 0.719), on zh-numbers dev loss 1.62 (1e-4: 2.48). High for large models; "
        "tiny-zh has 5.7M parameters and 150 steps."
    )
    defaults = {"lr": 1e-3}
    freezes_base = False

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, directory: Path, params):
        model.save_pretrained(str(directory))

    def load(self, base_model, directory: Path, params):
        """The saved checkpoint, through transformers' own loading: it maps keys a model class
        renamed (GPT-NeoX saves ``lm_head`` as ``embed_out``) and ties shared weights."""
        param = next(base_model.parameters())
        model, info = type(base_model).from_pretrained(str(directory), config=base_model.config, dtype=param.dtype,
                                                       output_loading_info=True)
        wrong = [k for key in ("missing_keys", "unexpected_keys", "mismatched_keys") for k in info.get(key) or []]
        if wrong:
            raise ValueError(f"full: saved weights do not match the model ({sorted(map(str, wrong))[:3]})")
        return model.to(param.device)

    def export(self, model, directory, params, dtype=None):
        """The whole model in the base's own architecture, as safetensors, its weights in ``dtype``."""
        if dtype is not None:
            model.to(dtype)
        model.save_pretrained(str(directory))
        return "transformers"


@hookimpl
def register_methods(register):
    register(Full())
