"""Prompt tuning: trainable input embeddings for a few virtual tokens (through peft)."""
from suite import PeftMethod, hookimpl


class PromptTuning(PeftMethod):
    name = "prompt-tuning"
    description = "trainable virtual-token embeddings prepended to the input (peft PromptTuningConfig)"
    quantized_base = True  # only the virtual tokens train; the base is only read
    paper = (
        "Lester, Al-Rfou & Constant, 2021, The Power of Scale for Parameter-Efficient Prompt "
        "Tuning (EMNLP 2021): prompt initialised from sampled vocabulary embeddings, and 20 "
        "tokens, past which longer prompts gained little (Sec. 3.2, Fig. 3). lr 0.3, the paper's "
        "(there with Adafactor), is also the best of the arena's sweep "
        "(docs/benchmarks.md, the defaults sweep: `leitai run --tasks zh-sentiment --sweep lr`, 150 steps, seed 0, "
        "64 dev examples): dev accuracy 0.672 where 0.09 scored 0.531 and the earlier default 0.03 scored 0.406. "
        "Again with tiny-zh's prompts without <s>, the grid bracketed (`--sweep prompt-tuning.lr=0.03,0.1,0.3,1`): "
        "0.438, 0.578, 0.594, 0.516 (dev loss 1.25, 0.732, 0.705, 0.888): 0.3 stays."
    )
    defaults = {"lr": 3e-1, "virtual_tokens": 20, "init": "SAMPLE_VOCAB"}
    starts_from_base = False  # the virtual tokens are prepended to the input

    def peft_config(self, model, params):
        from peft import PromptTuningConfig, TaskType

        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=params["virtual_tokens"],
            prompt_tuning_init=params["init"],
            **self.prompt_sizes(model),
        )


@hookimpl
def register_methods(register):
    register(PromptTuning())
