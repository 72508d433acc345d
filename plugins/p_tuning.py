"""P-tuning: continuous prompt embeddings produced by a small prompt encoder (through peft)."""
from suite import PeftMethod, hookimpl


class PTuning(PeftMethod):
    name = "p-tuning"
    description = "virtual-token embeddings from an LSTM+MLP prompt encoder (peft PromptEncoderConfig)"
    quantized_base = True  # only the prompt encoder trains; the base is only read
    paper = (
        "Liu et al., 2021, GPT Understands, Too: prompt embeddings produced by a bidirectional "
        "LSTM followed by an MLP (Sec. 3.2); peft prepends them to the input. Virtual tokens "
        "and encoder width chosen for the embedded model. lr 3e-2, the lowest dev loss of "
        "the arena's sweep "
        "(docs/benchmarks.md, the defaults sweep: `leitai run --tasks zh-sentiment --sweep lr`, 150 steps, seed 0, 64 dev examples): "
        "2.63 (3e-3: 2.81); no lr of the grid (3e-4 to 3e-2) made it answer "
        "a label within 150 steps (dev accuracy 0 at every one)."
    )
    defaults = {"lr": 3e-2, "virtual_tokens": 20, "encoder": "LSTM", "encoder_hidden": 128}
    starts_from_base = False  # the virtual tokens are prepended to the input

    def peft_config(self, model, params):
        from peft import PromptEncoderConfig, TaskType

        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=params["virtual_tokens"],
            encoder_reparameterization_type=params["encoder"],
            encoder_hidden_size=params["encoder_hidden"],
            **self.prompt_sizes(model),
        )


@hookimpl
def register_methods(register):
    register(PTuning())
