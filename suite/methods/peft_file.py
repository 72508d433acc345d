"""Bring your own PEFT config: ``--methods peft:PATH``, or a TOML ``[method.NAME]`` table with
``peft_config = "PATH"``.

``PATH`` is an ``adapter_config.json`` (as ``PeftConfig.save_pretrained`` or a trained
adapter's ``save_pretrained`` writes it) or the directory holding one. Any config PEFT can load
runs, under the same protocol as the built-in methods: the core counts its trainable
parameters, checks that the base stays frozen, trains it with the same batches, optimiser and
schedule, and saves it in PEFT's format. Only the config is read, never adapter weights next to
it: the method trains from PEFT's initialisation like any other.

The method's name is what the user typed: ``peft:PATH`` on the command line, ``NAME`` for a
TOML table; ``--set NAME.lr=...`` (``--set peft:PATH.lr=...``) sets its learning rate, default
:data:`DEFAULT_LR`. The path is read in the shootout's process (so a bad file stops the run with
one line before anything runs) and again in each cell's, like a ``file:`` task's data: it must
be readable where the cells run.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from ..errors import UsageError
from .peft_method import PeftMethod

#: the learning rate of a PEFT config run without ``--set NAME.lr=...`` (the arena's LoRA lr)
DEFAULT_LR = 1e-3
CONFIG_FILE = "adapter_config.json"


def config_file(path: str) -> Path:
    """The config file ``path`` names: itself, or ``adapter_config.json`` in that directory."""
    p = Path(path).expanduser()
    return p / CONFIG_FILE if p.is_dir() else p


def load_peft_config(path: str):
    """The ``peft.PeftConfig`` in ``path``, for training a causal LM.

    Raises :class:`UsageError` with one line naming the file when it cannot be read, is not
    JSON, is not a config PEFT can load, or is for another task than causal language modelling.
    """
    from peft import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    file = config_file(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{file}: cannot read PEFT config ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{file}: not a PEFT config (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{file}: not a PEFT config (invalid JSON: {e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or "peft_type" not in data:
        raise UsageError(f"{file}: not a PEFT config (no peft_type)")
    if data["peft_type"] not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise UsageError(f"{file}: unknown peft_type {data['peft_type']!r} for the installed peft")
    try:
        config = PeftConfig.from_peft_type(**data)
    except Exception as e:  # unknown peft_type, bad values: PEFT's own checks
        message = str(e).strip().splitlines()[0].strip() if str(e).strip() else type(e).__name__
        raise UsageError(f"{file}: PEFT cannot load this config ({message})") from None
    if config.task_type not in (None, "CAUSAL_LM"):
        raise UsageError(f"{file}: task_type {config.task_type} is not CAUSAL_LM, which the arena trains")
    config.task_type = "CAUSAL_LM"
    config.inference_mode = False  # a trained adapter's config is saved in inference mode
    return config


class PeftFileMethod(PeftMethod):
    """A method defined by a user's PEFT config file rather than by a plugin."""

    grid: dict = {}  # a sweep tries DEFAULT_LR x the core's factors
    default = False
    starts_from_base = False  # not assumed for an arbitrary config, so not checked
    mergeable = False  # set by apply(): True when every layer PEFT added can merge

    def __init__(self, name: str, path: str, config):
        self.name = name
        self.config = config
        kind = getattr(config.peft_type, "value", config.peft_type)
        self.description = f"the PEFT config in {path} ({kind})"
        self.paper = f"A user's own PEFT config ({config_file(path)}); lr {DEFAULT_LR:g} unless set."
        self.defaults = {"lr": DEFAULT_LR, "peft_config": path}

    @classmethod
    def from_name(cls, name: str, path: str | None) -> PeftFileMethod:
        """The method for ``peft:PATH``, or for ``NAME`` with ``peft_config = PATH``."""
        if name.startswith("peft:"):
            if path is not None and path != name[len("peft:"):]:
                raise UsageError(f"method {name!r} names its config; it takes no peft_config setting")
            path = name[len("peft:"):]
        if not isinstance(path, str) or not path:
            raise UsageError(f"method {name!r}: peft_config must be the path of an {CONFIG_FILE}")
        return cls(name, path, load_peft_config(path))

    def peft_config(self, model, params):
        return copy.deepcopy(self.config)

    def apply(self, model, params):
        from peft.tuners.tuners_utils import BaseTunerLayer

        peft_model = super().apply(model, params)
        layers = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]
        self.mergeable = bool(layers) and all(type(m).merge is not BaseTunerLayer.merge for m in layers)
        return peft_model

    def trained_base(self, model, params):
        """None of the base, unless the config trains biases (``bias="all"`` or ``"*_only"``):
        then every base bias may train (a superset for ``*_only``)."""
        if getattr(self.config, "bias", "none") in (None, "none"):
            return set()
        return {name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"}

    def base_view(self, model):
        """PEFT's ``disable_adapter()``, except for LoRA initialisations that rewrite the base
        weights (PiSSA, OLoRA, CorDA, LoftQ...), where switching the adapter off does not give
        the base back."""
        init = getattr(self.config, "init_lora_weights", True)
        if isinstance(init, str) and init != "gaussian":
            return None
        return super().base_view(model)
