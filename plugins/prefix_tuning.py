"""Prefix tuning: trainable key/value prefixes in every attention layer (through peft)."""
from suite import PeftMethod, hookimpl


class PrefixTuning(PeftMethod):
    name = "prefix-tuning"
    description = "trainable key/value prefixes in every layer, MLP-reparametrised (peft PrefixTuningConfig)"
    quantized_base = True  # only the prefixes train; the base is only read
    paper = (
        "Li & Liang, 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation (ACL 2021): "
        "prefix length 10 (their table-to-text setting), prefix trained through an MLP "
        "reparametrisation (Sec. 4.3) that is dropped after training. lr 1e-2 (the paper's 5e-5 is for "
        "epochs of data): the arena's sweep (docs/benchmarks.md, the defaults sweep: `leitai run --tasks zh-sentiment --sweep lr`, 150 "
        "steps, 64 dev examples) found no lr from 1e-3 to 1e-1 that lifts it above the majority label "
        "(dev accuracy 0.50-0.55, dev loss 0.25-0.32 against the class-prior 0.23), so the default stays."
    )
    defaults = {"lr": 1e-2, "virtual_tokens": 10, "projection": True, "projection_hidden": 512}
    starts_from_base = False  # the prefixes shift every attention layer from the first step

    def peft_config(self, model, params):
        from peft import PrefixTuningConfig, TaskType

        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=params["virtual_tokens"],
            prefix_projection=params["projection"],
            encoder_hidden_size=params["projection_hidden"],
            **self.prompt_sizes(model, prefix=True),  # the prefix has the shape of the model's cached keys
        )


@hookimpl
def register_methods(register):
    register(PrefixTuning())
