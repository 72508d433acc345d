"""P-tuning: continuous prompt embeddings produced by a small prompt encoder (through peft)."""
from suite import PeftMethod, hookimpl


class PTuning(PeftMethod):
    name = "p-tuning"
    description = "virtual-token embeddings from an LSTM+MLP prompt encoder (peft PromptEncoderConfig)"
    paper = (
        "Liu et al., 2021, GPT Understands, Too: prompt embeddings produced by a bidirectional "
        "LSTM followed by an MLP (Sec. 3.2); peft prepends them to the input. Virtual tokens "
        "and encoder width chosen for the embedded model; lr tuned for the arena's short budget."
    )
    defaults = {"lr": 3e-3, "virtual_tokens": 20, "encoder": "LSTM", "encoder_hidden": 128}
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
