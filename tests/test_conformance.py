"""The conformance kit: every built-in method passes it, and each kind of broken method fails
it with its own one-line message."""
import pytest
import torch
from safetensors.torch import save_file

from plugins.lora import LoRA
from suite import Method
from suite.plugins import load_registry
from suite.testing import CHECKS, ConformanceError, check_method


def built_in_methods() -> list[str]:
    """Every method the leitai distribution itself registers (LST too, once it lands)."""
    reg = load_registry()
    return sorted(n for n in reg.methods if reg.plugins[reg.origin[("methods", n)]].source.startswith("leitai "))


@pytest.mark.parametrize("name", built_in_methods())
def test_built_in_method_conforms(name, registry):
    report = check_method(name)  # raises ConformanceError with the failure lines
    assert report.ok and report.architectures == ("llama", "qwen2", "gpt2")
    method = registry.methods[name]
    checks = set(CHECKS) - {
        check for check, applies in [("starts-from-base", method.starts_from_base), ("merge", method.mergeable),
                                     ("base-view", name not in ("full", "pissa"))] if not applies
    }
    passed = {(r.check, r.architecture) for r in report.results if r.status == "passed"}
    assert passed == {(c, a) for c in checks for a in report.architectures}


# Deliberately broken methods, each with one fault -------------------------------------------

class Unfrozen(LoRA):
    """Declares the base frozen, but leaves the embeddings trainable."""

    name = "unfrozen"

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        model.get_input_embeddings().weight.requires_grad_(True)
        return peft_model


class Sneaky(LoRA):
    """Keeps the base frozen on paper, but nudges a base weight in place on every backward."""

    name = "sneaky"

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        norm = model.get_decoder().norm
        lora_b = next(p for n, p in peft_model.named_parameters() if "lora_B" in n)

        def nudge(grad):
            with torch.no_grad():
                norm.weight.add_(1e-3)
            return grad

        lora_b.register_hook(nudge)
        return peft_model


class NothingTrains(Method):
    name = "nothing-trains"
    defaults = {"lr": 1e-3}

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(False)
        return model


class Miscount(LoRA):
    """Reports half the parameters it trains."""

    name = "miscount"

    def trainable_count(self, model):
        return super().trainable_count(model) // 2


class DeadWeight(LoRA):
    """Pads its trainable count with a parameter the forward never uses."""

    name = "dead-weight"

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        model.unused = torch.nn.Parameter(torch.zeros(64))
        return peft_model

    def trainable_count(self, model):
        return None


class CacheBlind(Method):
    """Adds a trainable shift to the first position's embedding: right in a full forward pass,
    wrong with the generation cache, where every new token arrives as position 0 of its chunk."""

    name = "cache-blind"
    defaults = {"lr": 1e-2}
    starts_from_base = False

    def apply(self, model, params):
        for p in model.parameters():
            p.requires_grad_(False)
        model.shift = torch.nn.Parameter(torch.randn(model.config.hidden_size))

        def first_position(module, args, out):
            return torch.cat([out[:, :1] + model.shift, out[:, 1:]], dim=1)

        model.get_input_embeddings().register_forward_hook(first_position)
        return model


class Lossy(LoRA):
    """Saves only the A matrices (a name filter that misses lora_B)."""

    name = "lossy"
    defaults = {**LoRA.defaults, "lr": 1e-2}

    def save(self, model, directory, params):
        directory.mkdir(parents=True, exist_ok=True)
        kept = {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora_A" in n}
        save_file(kept, str(directory / "trainable.safetensors"))

    def load(self, base_model, directory, params):
        return Method.load(self, base_model, directory, params)


class Unseeded(LoRA):
    """Initialises B from a generator it seeds from the clock, not from the run's seed."""

    name = "unseeded"
    starts_from_base = False

    def apply(self, model, params):
        peft_model = super().apply(model, params)
        g = torch.Generator()
        g.seed()
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        return peft_model


class Liar(LoRA):
    """Claims to start from the base model, but initialises B away from zero."""

    name = "liar"

    def peft_config(self, model, params):
        config = super().peft_config(model, params)
        config.init_lora_weights = False
        return config


class Peeker(LoRA):
    """Says its base view is the base model, but leaves the adapter switched on."""

    name = "peeker"

    def base_view(self, model):
        import contextlib

        return contextlib.nullcontext(model)


class FakeMerge(LoRA):
    """Declares that it merges, but drops the adapter instead of folding it in."""

    name = "fake-merge"

    def merge(self, model):
        return model.unload()


class Ungrouped(LoRA):
    """Gives the optimiser the A matrices only: the B matrices would never train."""

    name = "ungrouped"

    def param_groups(self, model, params):
        return [{"params": [p for n, p in model.named_parameters() if "lora_A" in n]}]


class Meddler(LoRA):
    """Nudges a base weight after every optimiser step."""

    name = "meddler"

    def after_step(self, model, step, steps):
        with torch.no_grad():
            model.get_decoder().norm.weight.add_(1e-3)


BROKEN = [
    # PEFT saves only the adapter, so the embeddings it trained are lost too
    (Unfrozen, "llama", {"frozen", "save-load", "base-view"},
     "conformance: unfrozen: frozen: 4,096 base parameters declared frozen require grad "
     "(e.g. model.embed_tokens.weight) on llama"),
    (Sneaky, "qwen2", {"frozen", "save-load", "base-view"},
     "conformance: sneaky: frozen: 1 base tensors declared frozen changed after one step (e.g. model.norm.weight) on qwen2"),
    (NothingTrains, "gpt2", {"trainable", "loss"},
     "conformance: nothing-trains: trainable: no parameter requires grad on gpt2"),
    (Miscount, "llama", {"trainable"},
     "conformance: miscount: trainable: the method counts 448 trainable parameters, the core counts 896 on llama"),
    (DeadWeight, "llama", {"trainable"},
     "conformance: dead-weight: trainable: 1 trainable tensors get no gradient (e.g. base_model.model.unused) on llama"),
    (CacheBlind, "qwen2", {"generation"},
     "conformance: cache-blind: generation: cached generate differs from forward decoding on qwen2 (prompt 0)"),
    (Lossy, "llama", {"save-load"},
     "conformance: lossy: save-load: the loaded model's logits differ from the saved model's by up to"),
    (Unseeded, "qwen2", {"seed"}, "conformance: unseeded: seed: two runs from seed 0 give different losses"),
    (Liar, "gpt2", {"starts-from-base"},
     "conformance: liar: starts-from-base: claims to start from the base model, but before training "
     "its logits differ from the base model's by up to"),
    (Peeker, "llama", {"base-view"},
     "conformance: peeker: base-view: with the method switched off (base_view) the logits differ from the base"),
    (FakeMerge, "gpt2", {"merge"}, "conformance: fake-merge: merge: merged logits differ from unmerged ones by up to"),
    (Ungrouped, "llama", {"loss"},
     "conformance: ungrouped: loss: raised GuardError: method 'ungrouped': param_groups leaves 4 trainable tensors "
     "out of every group (e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight) on llama"),
    (Meddler, "qwen2", {"frozen", "base-view"},
     "conformance: meddler: frozen: 1 base tensors declared frozen changed after one step (e.g. model.norm.weight) on qwen2"),
]


@pytest.mark.parametrize("cls, arch, failing, line", BROKEN, ids=[b[0].name for b in BROKEN])
def test_broken_method_fails_with_one_line(cls, arch, failing, line):
    report = check_method(cls(), architectures=(arch,), raise_on_failure=False)
    assert {r.check for r in report.failures} == failing, report.lines
    assert any(l.startswith(line) for l in report.lines), report.lines
    assert all("\n" not in l and f" on {arch}" in l for l in report.lines)


def test_failure_raises_with_every_line():
    with pytest.raises(ConformanceError) as err:
        check_method(NothingTrains(), architectures=("llama", "gpt2"))
    lines = str(err.value).splitlines()
    assert lines == [
        "conformance: nothing-trains: trainable: no parameter requires grad on llama",
        "conformance: nothing-trains: loss: nothing to optimise: no parameter requires grad on llama",
        "conformance: nothing-trains: trainable: no parameter requires grad on gpt2",
        "conformance: nothing-trains: loss: nothing to optimise: no parameter requires grad on gpt2",
    ]


def test_a_method_that_cannot_apply_skips_the_rest():
    class Raiser(Method):
        name = "raiser"
        defaults = {"lr": 1e-3}

        def apply(self, model, params):
            raise RuntimeError("no such module: q_proj")

    report = check_method(Raiser(), architectures=("gpt2",), raise_on_failure=False)
    assert report.lines == ["conformance: raiser: applies: raised RuntimeError: no such module: q_proj on gpt2"]
    assert {r.check for r in report.results if r.status == "skipped"} == set(CHECKS) - {"applies"}
    assert "0 checks passed, 1 failed on gpt2" in report.summary()
