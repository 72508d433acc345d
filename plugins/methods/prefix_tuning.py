"""Prefix tuning: trainable key/value prefixes in every attention layer (through peft)."""
from suite import PeftMethod, hookimpl


class PrefixTuning(PeftMethod):
    name = "prefix-tuning"
    description = "trainable key/value prefixes in every layer, MLP-reparametrised (peft PrefixTuningConfig)"
    quantized_base = True  # only the prefixes train; the base is only read
    paper = (
        "Li & Liang, 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation (ACL 2021): "
        "prefix length 10 (their table-to-text setting), prefix trained through an MLP "
        "reparametrisation (Sec. 4.3) that is dropped after training. lr 3e-3 (the paper's 5e-5 is for "
        "epochs of data), the best of the arena's sweep once tiny-zh's prompts lost their leading <s>, which "
        "had hidden the prefix (the answer position gave it 0.4-1.1% of its attention; now about 50%): "
        "`--sweep prefix-tuning.lr=1e-3,3e-3,1e-2`, 150 steps, 64 dev examples, dev accuracy 0.516, 0.547, "
        "0.469 (dev loss 0.272, 0.253, 0.246 against the class prior 0.231). It learns the answer format "
        "and little of the task in 150 steps: test accuracy 0.527 (seed 0), not above the majority label."
    )
    defaults = {"lr": 3e-3, "virtual_tokens": 10, "projection": True, "projection_hidden": 512}
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
