"""Hook registration, where things come from, and broken plugins being skipped with a message."""
import re
import types

from conftest import leitai, plugin_env

from suite import Method, hookimpl
from suite.plugins import load_registry

BUILT_IN_METHODS = {"lora", "prefix-tuning", "p-tuning", "prompt-tuning", "lst", "full"}


def test_built_ins_register_through_entry_points(registry):
    assert BUILT_IN_METHODS <= set(registry.methods)
    assert "zh-sentiment" in registry.tasks
    assert "tiny-zh" in registry.models
    for name in BUILT_IN_METHODS:
        plugin = registry.origin[("methods", name)]
        assert registry.plugins[plugin].source.startswith("leitai ")  # the distribution, as for a third party


def test_every_method_declares_defaults_and_paper(registry):
    for name in BUILT_IN_METHODS:
        m = registry.methods[name]
        assert "lr" in m.defaults and m.paper and m.description


def _plugin(**hooks):
    mod = types.ModuleType("fake_plugin")
    for name, fn in hooks.items():
        setattr(mod, name, hookimpl(fn))
    return mod


class Echo(Method):
    name = "echo"
    defaults = {"lr": 1.0}


def test_in_process_plugin_registers():
    reg = load_registry(extra=[_plugin(register_methods=lambda register: register(Echo()))])
    assert reg.methods["echo"].name == "echo"
    assert reg.plugins["fake_plugin"].registered == {"methods": ["echo"]}


def test_hook_that_raises_is_reported_and_skipped():
    def boom(register):
        raise RuntimeError("kaputt")

    reg = load_registry(extra=[_plugin(register_methods=boom)])
    assert reg.plugins["fake_plugin"].error == "register_methods raised RuntimeError: kaputt"
    assert BUILT_IN_METHODS <= set(reg.methods)


def test_duplicate_name_is_reported():
    class Dup(Method):
        name = "lora"
        defaults = {"lr": 1.0}

    reg = load_registry(extra=[_plugin(register_methods=lambda register: register(Dup()))])
    assert "already registered" in reg.plugins["fake_plugin"].error
    assert type(reg.methods["lora"]).__name__ == "LoRA"


def test_broken_plugin_import_is_skipped_with_its_name_and_error(tmp_path):
    env = plugin_env(tmp_path, "broken_plugin", "import no_such_module_anywhere\n")
    listed = leitai("list", "plugins", env=env)
    assert listed.returncode == 0
    assert "broken_plugin" in listed.stdout
    assert "FAILED: ModuleNotFoundError: No module named 'no_such_module_anywhere'" in listed.stdout
    methods = leitai("list", "methods", env=env)
    assert methods.returncode == 0 and "lora" in methods.stdout
    assert "skipped plugin broken_plugin" in methods.stderr


def test_list_shows_origin_and_defaults():
    out = leitai("list", "methods").stdout
    assert "lora" in out and "[leitai " in out and "defaults: lr=" in out
    tasks = leitai("list", "tasks").stdout
    assert "zh-sentiment" in tasks and "accuracy" in tasks
    models = leitai("list", "models").stdout
    assert "tiny-zh" in models and "tested on tiny models of llama, qwen2, gpt2" in models and "glm4, bloom" in models
    # what `leitai run` uses when the user names none is marked, and the mark explained
    assert re.search(r"^tiny-zh +\(default\) embedded", models, re.M) and "tiny-zh-random   tiny-zh's" in models
    assert models.rstrip().endswith("(default): the model used without --model")
    assert re.search(r"^zh-sentiment +\(default\) ", tasks, re.M) and re.search(r"^zh-idiom +解释", tasks, re.M)
    assert re.search(r"^lora +\(default\) ", out, re.M) and re.search(r"^vera +shared", out, re.M)


def test_list_marks_what_the_default_shootout_runs(registry):
    from suite.cli.app import defaults_of
    from suite.config.sources import build_config

    config = build_config({}).fill_defaults(registry)
    assert defaults_of(registry, "methods") == set(config.methods)
    assert defaults_of(registry, "tasks") == set(config.tasks)
    for kind, chosen in [("models", config.model), ("executors", config.executor), ("side_corpora", config.side_corpus)]:
        assert defaults_of(registry, kind) == {chosen}
    assert defaults_of(registry, "commands") == set()
