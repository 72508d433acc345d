"""P-tuning: continuous prompt embeddings produced by a small prompt encoder (through peft)."""
from suite import PeftMethod, hookimpl


class PTuning(PeftMethod):
    name = "p-tuning"
    description = "virtual-token embeddings from a prompt encoder, an MLP by default (peft PromptEncoderConfig)"
    quantized_base = True  # only the prompt encoder trains; the base is only read
    paper = (
        "Liu et al., 2021, GPT Understands, Too: prompt embeddings produced by a bidirectional "
        "LSTM followed by an MLP (Sec. 3.2); peft prepends them to the input. Virtual tokens "
        "and encoder width chosen for the embedded model. peft's MLP encoder (its alternative to the "
        "paper's LSTM) at lr 0.3: the lowest dev loss of the arena's sweeps once tiny-zh's prompts lost "
        "their leading <s> (zh-sentiment, 150 steps, seed 0, 64 dev examples, the grids bracketed): MLP at "
        "3e-3, 3e-2, 0.3, 1: dev loss 2.72, 2.64, 2.34, 2.40; LSTM at 3e-2, 0.1, 0.3, 1: 2.61, 2.41, 2.36, 2.38. "
        "At no setting does it answer a label within 150 steps (dev accuracy 0 at every one; the class "
        "prior is 0.23): it does not learn the answer format, which prompt tuning, with the same 20 "
        "virtual tokens trained directly, learns at 0.3."
    )
    defaults = {"lr": 3e-1, "virtual_tokens": 20, "encoder": "MLP", "encoder_hidden": 128}
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
