"""The public API, defined once: what a plugin may import from leitai.

``import suite`` gives the contracts every plugin implements (:data:`CORE`). :data:`HELPERS`
names the rest, by the kind of plugin that needs it and module by module: a method's helpers
(layers found by role), a task's (splits, scorers), a model's, an executor's (starting a cell's
process, its record), a command's. Anything else in ``suite`` is internal and may move.
``docs/api.md`` is generated from this module (``python -m suite.cli.docgen``), and
``tests/test_api.py`` fails when a module under ``plugins/`` imports a core name not listed here.

:data:`MOVED` keeps the import paths of leitai before its modules were grouped by stage
(``suite.tasks`` is now ``suite.data.tasks``, ``plugins.lora`` ``plugins.methods.lora``...)
working: importing an old path gives the module that lives at the new one (:func:`install`),
and an old module whose name is now a package's (``suite.data``, ``suite.models``...) hands
out its names through that package (:func:`forward`). The docs name the new paths only.
"""
from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import sys
import types

#: what ``suite`` exports (``from suite import ...``): the plugin contracts and the hook marker,
#: each with the module it is defined in
CORE = {
    "hookimpl": "suite.hookspecs", "Method": "suite.methods.method", "PeftMethod": "suite.methods.peft_method",
    "ModelSpec": "suite.models.loading", "Task": "suite.data.tasks", "Example": "suite.data.tasks",
    "Turn": "suite.data.tasks", "SideCorpus": "suite.data.side_corpus", "Executor": "suite.shootout.executors",
    "Command": "suite.cli.plugin_command", "UsageError": "suite.errors",
}

#: the helpers beyond :data:`CORE`, by the kind of plugin that needs them: {kind: {module: names}}
HELPERS = {
    "methods": {
        "suite.methods.method": ("method_params",),
        "suite.methods.peft_method": ("peft_default",),
        "suite.models.architecture": ("find", "Architecture", "Geometry", "LayerMaps", "attention_targets",
                                      "linear_modules", "linear_shape", "weight_matrix", "kv_cache_shape",
                                      "ArchitectureError"),
        "suite.models.layout": ("probe", "Layout", "layer_weights"),
        "suite.measures.resources": ("count_parameters",),
    },
    "tasks": {
        "suite.data.tasks": ("assign_splits", "take", "take_short", "split_of", "stable_order", "normalise",
                             "score_answers"),
        "suite.data.scorers": ("SCORERS", "exact_match", "char_accuracy", "micro_f1", "mean_rouge_l", "bleu4_zh"),
        "suite.data.cache": ("load_json", "store_json"),
    },
    "models": {
        "suite.models.loading": ("resolve",),
        "suite.models.precision": ("cast_weights",),
        "suite.data.chat": ("PLAIN_TEMPLATE",),
    },
    "executors": {
        "suite.shootout.executors": ("ExecutorSettings",),
        "suite.shootout.processes": ("run_cell_process", "thread_env", "cpu_count", "gpu_count", "RUNNING", "Interrupted"),
        "suite.shootout.warm": ("WarmServer",),
        "suite.cell.spec": ("Cell",),
        "suite.cell.records": ("run_dir", "failed_record", "read_json"),
        "suite.atomic": ("write_json_atomic",),
        "suite.stopping": ("reinstall",),
    },
    "commands": {
        "suite.plugins": ("registry", "load_registry", "Registry"),
    },
    "testing": {
        "suite.testing": ("check_method", "check_plugin_import", "ConformanceReport", "CheckResult", "ConformanceError",
                          "tiny_model", "tiny_config", "ARCHITECTURES", "ALL_ARCHITECTURES"),
    },
}


def public(module: str, name: str | None = None) -> bool:
    """Whether ``from module import name`` (or ``import module``, with no name) is public."""
    if module == "suite":
        return name in CORE or name == "__version__"
    listed = {m: names for kinds in HELPERS.values() for m, names in kinds.items()}
    if name is None:
        return module in listed
    return name in listed.get(module, ()) or f"{module}.{name}" in listed  # a listed module, imported from its package


#: the module paths before the regrouping by stage, and where each module lives now
MOVED = {
    "suite.settings": "suite.config.settings",
    "suite.config": "suite.config.sources",
    "suite.sweep": "suite.config.sweep",
    "suite.variants": "suite.config.variants",
    "suite.tasks": "suite.data.tasks",
    "suite.data": "suite.data.batches",
    "suite.chat": "suite.data.chat",
    "suite.userdata": "suite.data.user_files",
    "suite.userformats": "suite.data.user_formats",
    "suite.cache": "suite.data.cache",
    "suite.taskdata": "suite.data.prepared",
    "suite.scoring": "suite.data.scorers",
    "suite.replay": "suite.data.replay",
    "suite.models": "suite.models.loading",
    "suite.precision": "suite.models.precision",
    "suite.quantize": "suite.models.quantize",
    "suite.architecture": "suite.models.architecture",
    "suite.layout": "suite.models.layout",
    "suite.measure": "suite.measures.resources",
    "suite.generate": "suite.measures.generation",
    "suite.evaluation": "suite.measures.task_scores",
    "suite.forgetting": "suite.measures.forgetting",
    "suite.inference": "suite.measures.inference",
    "suite.attention": "suite.measures.attention",
    "suite.diagnostics": "suite.measures.diagnostics",
    "suite.methods": "suite.methods.method",
    "suite.peft_file": "suite.methods.peft_file",
    "suite.guards": "suite.methods.guards",
    "suite.planner": "suite.memory.prediction",
    "suite.cellspec": "suite.cell.spec",
    "suite.cell": "suite.cell.run",
    "suite.train": "suite.cell.train",
    "suite.env": "suite.cell.provenance",
    "suite.records": "suite.cell.records",
    "suite.runner": "suite.shootout.runner",
    "suite.executors": "suite.shootout.executors",
    "suite.warm": "suite.shootout.warm",
    "suite.outdir": "suite.shootout.outdir",
    "suite.cli": "suite.cli.app",
    "suite.plancmd": "suite.cli.plan",
    "suite.scaffold": "suite.cli.scaffold",
    "suite.commands": "suite.cli.plugin_command",
    "suite.docgen": "suite.cli.docgen",
    **{f"plugins.{m}": f"plugins.methods.{m}" for m in (
        "adalora", "bitfit", "boft", "dora", "fourierft", "full", "ia3", "ln_tuning", "loha", "lokr", "lora",
        "lora_plus", "oft", "p_tuning", "pissa", "prefix_tuning", "prompt_tuning", "vera", "lst")},
    "plugins.targets": "plugins.methods.peft_base",
    **{f"plugins.{m}": f"plugins.tasks.{m}" for m in (
        "zh_dialogue", "zh_idiom", "zh_ner", "zh_numbers", "zh_segment", "zh_sentiment", "zh_t2s", "corpora",
        "peoples_daily")},
    "plugins.zh_side_corpus": "plugins.tasks.zh_news_side",
    "plugins.tiny_zh": "plugins.models.tiny_zh",
    "plugins.local_executor": "plugins.executors.local_executor",
    "plugins.ray_executor": "plugins.executors.ray_executor",
}
#: names a moved module's own names were found under, beyond the module itself (split modules)
SPLIT = {
    "suite.methods.method": ("suite.methods.peft_method", "suite.config.sweep"),
    "suite.cell.train": ("suite.measures.loss", "suite.models.loading"),
    "suite.measures.forgetting": ("suite.data.side_corpus",),
    "suite.shootout.executors": ("suite.shootout.processes",),
    "suite.shootout.warm": ("suite.shootout.fork_server",),
    "suite.memory.prediction": ("suite.memory.tracing",),
    "suite.cli.plan": ("suite.memory.plan",),
}


#: the packages of the new layout whose names were modules before (their ``__getattr__``
#: hands out the old module's names, :func:`forward`)
PACKAGES = ("suite.config", "suite.data", "suite.models", "suite.methods", "suite.cell", "suite.cli")


def new_path(name: str) -> str | None:
    """Where the old module path ``name`` lives now (None: it did not move): the module itself
    (``suite.tasks``), or a module inside a moved package (``plugins.lst.config``)."""
    if name in PACKAGES:
        return None
    if name in MOVED:
        return MOVED[name]
    head, _, rest = name.rpartition(".")
    while head:
        if head in MOVED and head not in PACKAGES:
            return f"{MOVED[head]}.{name[len(head) + 1:]}"
        head, _, rest = head.rpartition(".")
    return None


@functools.cache
def _old_module(name: str):
    """The module an old path means: where it lives now; for a module that was split, a module
    holding the names of every part (the same objects)."""
    module = importlib.import_module(new_path(name) if name not in PACKAGES else MOVED[name])
    if module.__name__ not in SPLIT:
        return module
    merged = types.ModuleType(name, module.__doc__)
    for source in (*SPLIT[module.__name__][::-1], module.__name__):
        merged.__dict__.update({k: v for k, v in vars(importlib.import_module(source)).items() if not k.startswith("__")})
    merged.__file__ = module.__file__
    return merged


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old path as the module that lives at its new one (:func:`new_path`)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(("suite.", "plugins.")) and new_path(fullname):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = _old_module(spec.name)
        self._spec = getattr(module, "__spec__", None)  # the import system sets the alias's; put it back
        return module

    def exec_module(self, module):
        if self._spec is not None:
            module.__spec__ = self._spec


def forward(package: str, name: str):
    """A name of the module ``package`` was before it became a package (``suite.data.collate``),
    from where it lives now; the package's ``__getattr__``."""
    if package in MOVED and not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}") is None:
        module = _old_module(package)  # (a submodule's name is the import system's to import)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {package!r} has no attribute {name!r}")


def install() -> None:
    """Make the old import paths work (once per process; :mod:`suite` calls it). First on the
    meta path, so that a module of a moved package (``plugins.lst.config``) is never imported
    a second time under its old name."""
    if not any(isinstance(f, _Aliases) for f in sys.meta_path):
        sys.meta_path.insert(0, _Aliases())
