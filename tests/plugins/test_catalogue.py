"""The built-in catalogue: every method's trainable count against PEFT's own and against the saved
adapter file, the closed forms of the simple ones, and the core hooks the catalogue needs
(optimiser parameter groups, a hook after every step, base tensors a method trains, sweep grids)."""
import math

import pytest
import torch
from conftest import built_in_methods
from safetensors import safe_open

from suite import Method
from suite.cell.train import TrainSettings, make_optimizer
from suite.config.sweep import LR_BOUNDS, LR_FACTORS, tuning_grid
from suite.errors import GuardError
from suite.measures.resources import count_parameters
from suite.methods.guards import check_method_output, checked_param_groups, trained_base_names
from suite.methods.method import method_params
from suite.methods.peft_method import PeftMethod
from suite.testing import ARCHITECTURES, fixed_batch, tiny_model

#: the six methods of the default shootout (one per family); the rest of the catalogue is opt-in
DEFAULT_SHOOTOUT = {"lora", "prefix-tuning", "p-tuning", "prompt-tuning", "lst", "full"}


def saved_parameters(directory) -> int:
    """Parameters stored in the safetensors files of an adapter directory."""
    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def saved_prompt_size(name: str, params: dict, cfg) -> int:
    """What PEFT saves for the prompt methods: the virtual tokens' embeddings (prefix tuning:
    the key/value prefixes of every layer) computed by the encoder, which is dropped."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * d // cfg.num_attention_heads if hasattr(cfg, "num_key_value_heads") else d
    if name == "prefix-tuning":
        return params["virtual_tokens"] * layers * 2 * kv
    return params["virtual_tokens"] * d


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("name", built_in_methods())
def test_core_count_equals_peft_and_the_saved_adapter(name, arch, registry, tmp_path):
    """The core's count equals PEFT's ``get_nb_trainable_parameters()`` and the parameters in the
    adapter file ``save`` writes (the prompt methods save their encoder's output instead of the
    encoder: that size is checked against its own formula)."""
    method = registry.methods[name]
    params = method_params(method, None)
    torch.manual_seed(0)
    model = method.apply(tiny_model(arch), params)
    count = count_parameters(model, trainable_only=True)
    assert count > 0
    if isinstance(method, PeftMethod):
        assert model.get_nb_trainable_parameters()[0] == count
    method.save(model, tmp_path, params)
    saved = saved_parameters(tmp_path)
    if name in ("prefix-tuning", "p-tuning"):
        assert saved == saved_prompt_size(name, params, model.config)
    elif name == "lst":  # the side network and each ladder's standardisation (mean and scale, and whether set)
        side = model.side
        assert saved == count + side.ladder_mean.numel() + side.ladder_scale.numel() + 1
    else:
        assert saved == count


def closed_form(name: str, params: dict, cfg) -> int:
    """Trainable parameters of the simple methods on a LLaMA config, from the papers' shapes."""
    d, layers, ffn = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
    lora = layers * params.get("r", 0) * (d + d + d + kv)  # A (r x in) and B (out x r) on q_proj, v_proj
    if name in ("lora", "lora-plus", "pissa"):
        return lora
    if name == "dora":  # plus a magnitude per output row of each adapted matrix
        return lora + layers * (d + kv)
    if name == "adalora":  # P (in x r0), Q (r0 x out), Lambda (r0) at the initial rank r0
        return layers * params["init_r"] * (d + d + 1 + d + kv + 1)
    if name == "ia3":  # l_k, l_v (kv width) and l_ff (feed-forward width) per layer
        return layers * (kv + kv + ffn)
    if name == "vera":  # d (r) and b (out) per adapted matrix
        return layers * (params["r"] + d + params["r"] + kv)
    if name == "fourierft":  # n coefficients per adapted matrix, at most its entries
        return layers * (min(params["n_frequency"], d * d) + min(params["n_frequency"], d * kv))
    if name in ("ln-tuning", "bitfit"):  # the two norms of every layer and the final one (no biases)
        return (2 * layers + 1) * d
    raise ValueError(name)


@pytest.mark.parametrize("name", ["lora-plus", "pissa", "dora", "adalora", "ia3", "vera", "fourierft", "ln-tuning",
                                  "bitfit"])
def test_closed_form_counts(name, registry):
    method = registry.methods[name]
    params = method_params(method, None)
    base = tiny_model("llama")
    model = method.apply(base, params)
    assert count_parameters(model, trainable_only=True) == closed_form(name, params, base.config)


def test_bitfit_trains_biases_or_norms_by_role(registry):
    """Biases where the model has them (Qwen2's q/k/v biases, every GPT-2 bias), the normalisation
    weights where it has none (LLaMA): the tensors it declares, and only those, train."""
    bitfit = registry.methods["bitfit"]
    for arch, expect in [("llama", lambda n: "norm" in n), ("qwen2", lambda n: n.endswith(".bias")),
                         ("gpt2", lambda n: n.endswith(".bias"))]:
        base = tiny_model(arch)
        names = [n for n, _ in base.named_parameters()]
        trained = trained_base_names(bitfit, base, {"lr": 1e-2})
        assert trained == {n for n in names if expect(n)} and trained
        model = bitfit.apply(base, {"lr": 1e-2})
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trained


def test_trained_base_is_checked_and_keeps_frozen_still_works():
    """A method naming parameters the base lacks is refused; one that leaves an undeclared base
    tensor trainable fails the guard; the older ``keeps_frozen(name)`` still declares."""

    class Norms(Method):  # the pre-trained_base way to declare what trains
        name = "norms"
        defaults = {"lr": 1e-2}

        def keeps_frozen(self, name):
            return "norm" not in name

        def apply(self, model, params):
            for n, p in model.named_parameters():
                p.requires_grad_(not self.keeps_frozen(n))
            return model

    class Greedy(Norms):  # declares the norms, but trains the embeddings too
        name = "greedy"

        def apply(self, model, params):
            super().apply(model, params)
            model.get_input_embeddings().weight.requires_grad_(True)
            return model

    class Phantom(Norms):
        name = "phantom"

        def trained_base(self, model, params):
            return {"model.no_such.weight"}

    base = tiny_model("llama")
    named = list(base.named_parameters())
    trained = trained_base_names(Norms(), base, {})
    assert trained == {n for n, _ in named if "norm" in n}
    assert check_method_output(Norms(), named, Norms().apply(base, {}), trained) == 5 * 32
    base = tiny_model("llama")
    named = list(base.named_parameters())
    with pytest.raises(GuardError, match=r"method 'greedy' left 4,096 base parameters trainable that its "
                                         r"trained_base does not declare \(e\.g\. model\.embed_tokens\.weight\)"):
        check_method_output(Greedy(), named, Greedy().apply(base, {}), trained_base_names(Greedy(), base, {}))
    with pytest.raises(GuardError, match="trained_base names 1 parameters the base model does not have"):
        trained_base_names(Phantom(), tiny_model("llama"), {})


def test_trained_base_follows_the_runs_params():
    """A method whose trained base tensors depend on a setting declares them exactly: trained_base
    gets the run's params (keeps_frozen gets none), and the guard and the kit hold it to them."""
    from suite.testing import check_method

    class Norms(Method):
        name = "norms"
        defaults = {"lr": 1e-2, "which": "all"}  # "all" norms, or only the "final" one

        def trained_base(self, model, params):
            names = [n for n, _ in model.named_parameters() if "norm" in n]
            return {n for n in names if params["which"] == "all" or n == "model.norm.weight"}

        def apply(self, model, params):
            trained = self.trained_base(model, params)
            for n, p in model.named_parameters():
                p.requires_grad_(n in trained)
            return model

    for which, expect in [("all", 5 * 32), ("final", 32)]:
        base = tiny_model("llama")
        named, params = list(base.named_parameters()), {"lr": 1e-2, "which": which}
        trained = trained_base_names(Norms(), base, params)
        assert check_method_output(Norms(), named, Norms().apply(base, params), trained) == expect
    assert check_method(Norms(), architectures=("llama",), params={"which": "final"}).ok


@pytest.fixture
def lora_model(registry):
    torch.manual_seed(0)
    return registry.methods["lora"].apply(tiny_model("llama"), method_params(registry.methods["lora"], None))


class Grouped(Method):
    """Hands the optimiser whatever groups it is given."""

    name = "grouped"
    defaults = {"lr": 1e-3}

    def __init__(self, groups):
        self.groups = groups

    def param_groups(self, model, params):
        return self.groups(model)


def lora_tensors(model, part):
    return [p for n, p in model.named_parameters() if part in n]


@pytest.mark.parametrize("groups, message", [
    (lambda m: [{"params": lora_tensors(m, "lora_A")}], r"leaves 4 trainable tensors out of every group"),
    (lambda m: [{"params": lora_tensors(m, "lora_")}, {"params": lora_tensors(m, "lora_B")}],
     r"holds base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_B\.default\.weight in more than one group"),
    (lambda m: [{"params": lora_tensors(m, "lora_") + lora_tensors(m, "embed_tokens")}],
     r"holds a tensor that does not require grad or is not the model's \(e\.g\. base_model\.model\.model\.embed_tokens"),
    (lambda m: [{"params": lora_tensors(m, "lora_"), "betas": (0.5, 0.5)}], r"sets betas: only lr and weight_decay"),
    (lambda m: [{"params": lora_tensors(m, "lora_"), "lr": -1}], r"gives lr=-1; it must be a number >= 0"),
    (lambda m: {"params": lora_tensors(m, "lora_")}, r"must return a list of dicts"),
])
def test_param_groups_are_checked(groups, message, lora_model):
    with pytest.raises(GuardError, match=r"method 'grouped': param_groups " + message):
        make_optimizer(lora_model, TrainSettings(lr=1e-3), 10, Grouped(groups), {"lr": 1e-3})


def test_lora_plus_trains_b_at_lr_times_ratio(registry):
    """LoRA+: the optimiser (the core's AdamW and schedule) holds every A at lr and every B at
    lr x ratio; the warm-up scales both."""
    method = registry.methods["lora-plus"]
    params = method_params(method, {"lr": 2e-3})
    model = method.apply(tiny_model("qwen2"), params)
    optimizer, schedule = make_optimizer(model, TrainSettings(lr=2e-3, warmup=0.5), 4, method, params)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["initial_lr"]: {names[id(p)].split(".")[-3] for p in g["params"]} for g in optimizer.param_groups}
    assert groups == {2e-3: {"lora_A"}, 2e-3 * params["ratio"]: {"lora_B"}}
    optimizer.step()  # no gradients yet: changes nothing
    schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3 * params["ratio"]])
    assert len(checked_param_groups(None, model, {})) == 1  # without a method: one group


def test_adalora_prunes_to_its_budget_on_the_runs_schedule(registry, tmp_path):
    """AdaLoRA through the arena's training loop: ``after_step`` sets the schedule from the run's
    step budget, the ranks fall to target_r per matrix by the final phase, and what ``save``
    writes (only the kept ranks) loads back to the same logits."""
    from accelerate import Accelerator

    from suite.cell.train import train
    from suite.data.batches import Encoded

    method = registry.methods["adalora"]
    params = method_params(method, {"lr": 1e-2})
    torch.manual_seed(0)
    model = method.apply(tiny_model("llama"), params)
    g = torch.Generator().manual_seed(3)
    batches = [[Encoded(f"{s}-{i}", torch.randint(3, 128, (8,), generator=g).tolist(),
                        torch.randint(3, 128, (3,), generator=g).tolist()) for i in range(4)] for s in range(10)]
    train(model, batches, 0, TrainSettings(lr=1e-2, warmup=0.0), Accelerator(cpu=True), method=method, params=params)
    config = model.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (10, 1, 3)
    kept = sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)
    assert kept == params["target_r"] * 2 * model.config.num_hidden_layers
    batch = fixed_batch()
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    method.save(model, tmp_path, params)
    loaded = method.load(tiny_model("llama"), tmp_path, params)
    loaded.eval()
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_gpt2_conv1d_becomes_an_equal_linear_for_linear_only_tuners():
    """OFT, BOFT, LoHa and LoKr adapt nn.Linear only: GPT-2's Conv1D targets become nn.Linear
    layers on the same storage, and the model computes the same logits."""
    from peft import OFTConfig

    from plugins.methods.peft_base import conv1d_as_linear

    model = tiny_model("gpt2").eval()
    batch = fixed_batch()
    with torch.no_grad():
        want = model(**batch).logits
    weight = model.transformer.h[0].attn.c_attn.weight
    assert conv1d_as_linear(model, OFTConfig(target_modules=["c_attn"])) == ["transformer.h.0.attn.c_attn",
                                                                           "transformer.h.1.attn.c_attn"]
    linear = model.transformer.h[0].attn.c_attn
    assert isinstance(linear, torch.nn.Linear) and linear.weight.data_ptr() == weight.data_ptr()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, want, atol=1e-6)


def test_every_catalogue_method_declares_its_grid_and_sources(registry):
    """An lr grid inside the lr bounds with the default strictly inside it for every method beyond
    the six, a paper text, a description; the default shootout stays the six; the core fills an lr
    grid for methods without one."""
    for name in built_in_methods():
        method = registry.methods[name]
        assert method.paper and method.description and "lr" in method.defaults
        assert (name in DEFAULT_SHOOTOUT) == method.default
        grid = tuning_grid(method)
        if name in DEFAULT_SHOOTOUT:
            assert grid == {"lr": [float(f"{method.defaults['lr'] * f:.3g}") for f in LR_FACTORS]}
        else:
            lrs = method.grid["lr"]
            low, high = LR_BOUNDS
            assert len(lrs) >= 4 and lrs == sorted(lrs) and method.defaults["lr"] in lrs[1:-1], name
            assert low <= lrs[0] and lrs[-1] <= high, name


def test_the_default_shootout_and_all(registry):
    from suite.config.sources import build_config

    assert set(build_config({}).fill_defaults(registry).methods) == DEFAULT_SHOOTOUT
    assert build_config({"methods": "all"}).fill_defaults(registry).methods == sorted(registry.methods)


def test_the_guides_peft_tuner_in_30_lines_conforms():
    """docs/plugins/examples.md's "A PEFT tuner in about 30 lines", run as written: it passes the kit."""
    import re
    import types

    from conftest import ROOT

    from suite.testing import check_method

    guide = (ROOT / "docs" / "plugins" / "examples.md").read_text(encoding="utf-8")
    section = guide.split("## A PEFT tuner in about 30 lines", 1)[1]
    code = re.search(r"^```python\n(.*?)^```$", section, flags=re.S | re.M).group(1)
    assert len(code.strip().splitlines()) <= 35
    module = types.ModuleType("guide_randlora")
    exec(compile(code, "docs/plugins/examples.md", "exec"), module.__dict__)
    report = check_method(module.RandLoRA())
    skipped = {r.check for r in report.results if r.status == "skipped"}
    assert report.ok and skipped <= {"quantized"}  # the guide's tuner claims no quantized base


@pytest.mark.parametrize("name", ["lora", "prompt-tuning", "adalora"])
def test_dev_loss_is_the_cross_entropy_whatever_the_model_adds(name, registry):
    """The dev loss is computed from the logits: the model's own loss for LoRA and for prompt
    tuning (virtual tokens dropped), but without AdaLoRA's orthogonality penalty, which its
    own loss adds even in eval mode; the same from the answer-only head as from full logits."""
    from suite.data.batches import Encoded, collate
    from suite.measures.loss import mean_loss

    method = registry.methods[name]
    torch.manual_seed(0)
    model = method.apply(tiny_model("llama"), method_params(method, None))
    g = torch.Generator().manual_seed(5)
    items = [Encoded(str(i), torch.randint(3, 128, (6 + i,), generator=g).tolist(),
                     torch.randint(3, 128, (2 + i,), generator=g).tolist()) for i in range(3)]
    ours = mean_loss(model, [items], 0, "cpu")  # checks whether the answer-only head gives the model's loss
    assert mean_loss(model, [items], 0, "cpu", answer_head=False) == pytest.approx(ours, rel=1e-6)  # full logits
    with torch.no_grad():
        own = sum(model(**collate([e], 0)).loss.item() * len(e.answer) for e in items) / sum(len(e.answer) for e in items)
    if name == "adalora":
        assert own > ours + 0.01  # the penalty, which the dev loss leaves out
    else:
        assert ours == pytest.approx(own, rel=1e-5)
