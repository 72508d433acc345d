"""The conformance kit: every built-in method passes it, and each kind of broken method fails
it with its own one-line message."""
import importlib.util

import pytest
from conftest import built_in_methods
from misbehaving import (
    CacheBlind,
    DeadWeight,
    FakeMerge,
    Liar,
    Lossy,
    Meddler,
    Miscount,
    NothingTrains,
    Peeker,
    Picky,
    Sneaky,
    Unfrozen,
    Ungrouped,
    Unseeded,
)

from suite import Method
from suite.testing import CHECKS, ConformanceError, check_method


@pytest.mark.parametrize("name", built_in_methods())
def test_built_in_method_conforms(name, registry):
    report = check_method(name)  # raises ConformanceError with the failure lines
    assert report.ok and report.architectures == ("llama", "qwen2", "gpt2")
    method = registry.methods[name]
    checks = set(CHECKS) - {
        check for check, applies in [("starts-from-base", method.starts_from_base), ("merge", method.mergeable),
                                     ("base-view", name not in ("full", "pissa"))] if not applies
    } - {"quantized"}
    passed = {(r.check, r.architecture) for r in report.results if r.status == "passed"}
    # a quantized_base claim is checked once, on a 64-wide model in 4 and 8 bits
    quantized = {("quantized", "mistral")} if method.quantized_base else set()
    assert passed == {(c, a) for c in checks for a in report.architectures} | quantized


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
    (Picky, "qwen2", {"params"}, "conformance: picky: params: check_params rejects the settings apply() worked with "
     "(r must be a power of three) on qwen2"),
    (Ungrouped, "llama", {"loss"},
     "conformance: ungrouped: loss: raised GuardError: method 'ungrouped': param_groups leaves 4 trainable tensors "
     "out of every group (e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight) on llama"),
    (Meddler, "qwen2", {"frozen", "save-load", "base-view"},  # the nudged weight is not in the saved adapter
     "conformance: meddler: frozen: 1 base tensors declared frozen changed after one step (e.g. model.norm.weight) on qwen2"),
]


#: the broken methods whose defect the ``quantized`` check finds too (they inherit LoRA's
#: quantized_base claim; the check runs once per method, on its own 64-wide model in nf4 and int8)
QUANTIZED_TOO = {
    "miscount": "conformance: miscount: quantized: the core counts 1,792 trainable parameters, the method 896 "
                "on mistral in nf4",
    "liar": "conformance: liar: quantized: claims to start from the base model, but before training its logits "
            "differ from the base model's by up to",
    "ungrouped": "conformance: ungrouped: quantized: raised GuardError: method 'ungrouped': param_groups leaves 4 "
                 "trainable tensors out of every group",
}


@pytest.mark.parametrize("cls, arch, failing, line", BROKEN, ids=[b[0].name for b in BROKEN])
def test_broken_method_fails_with_one_line(cls, arch, failing, line):
    report = check_method(cls(), architectures=(arch,), raise_on_failure=False)
    quantized = [text for text in report.lines if ": quantized: " in text]  # only with bitsandbytes installed
    lines = [text for text in report.lines if text not in quantized]
    assert {r.check for r in report.failures if r.check != "quantized"} == failing, report.lines
    assert any(text.startswith(line) for text in lines), report.lines
    assert all("\n" not in text and f" on {arch}" in text for text in lines)
    if importlib.util.find_spec("bitsandbytes") and cls.name in QUANTIZED_TOO:
        assert len(quantized) == 1 and quantized[0].startswith(QUANTIZED_TOO[cls.name]), report.lines
    else:
        assert not quantized, report.lines


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
    assert [r.check for r in report.skipped] == list(CHECKS[1:])
    # the summary counts the skipped checks and names them (ConformanceReport.lines holds failures only)
    summary = report.summary()
    assert summary.startswith("conformance: raiser: 0 checks passed, 1 failed, 11 skipped on gpt2 ("), summary
    assert summary.endswith("".join(f"; skipped {check} on every architecture" for check in CHECKS[1:])), summary


def test_built_in_plugins_are_safe_to_import_before_a_fork(tmp_path, monkeypatch):
    """Every built-in plugin module, imported and registered together as the driver does, leaves
    the process safe to fork cells from; a module that computes with torch at import is caught."""
    from importlib import metadata

    from suite.testing import check_plugin_import

    modules = sorted({ep.value for ep in metadata.entry_points(group="leitai") if ep.dist.name == "leitai"})
    assert len(modules) >= 30 and check_plugin_import(*modules) == []
    (tmp_path / "eager_plugin.py").write_text("import torch\nTABLE = torch.zeros(1000, 1000).add_(1)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(ConformanceError, match=r"eager_plugin: import: a process forked from it hung"):
        check_plugin_import("eager_plugin")
