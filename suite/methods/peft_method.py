"""A method backed by peft: the PEFT config it builds, the modules it targets, peft's own save format."""
from __future__ import annotations

import torch

from .method import Method


class PeftMethod(Method):
    """A method backed by a PEFT config; saved and loaded in PEFT's own format."""

    def peft_config(self, model: torch.nn.Module, params: dict):
        """Return the ``peft.PeftConfig`` for ``model`` with hyper-parameters ``params``."""
        raise NotImplementedError

    def targets(self, model: torch.nn.Module | None, given=None, mapping: dict | None = None,
                setting: str = "targets") -> tuple[list[str] | None, str]:
        """The modules an adapter tuner adapts on ``model``, and where that choice came from.

        ``given`` (a list, or a comma-separated string: the user's setting) is used as it is
        (``"settings"``). Otherwise peft's default for the model type in ``mapping`` (peft's
        ``TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING`` of the tuner; LoRA's by default),
        when it names modules the model has (``"peft default for <model_type>"``); otherwise
        the attention's query and value projections, or the fused projection that holds
        them, found by role (:func:`suite.models.architecture.attention_targets`; ``"found by
        role"``), which raises a one-line :class:`~suite.models.architecture.ArchitectureError`
        listing the model's linear modules, and naming the method's ``setting``, when nothing
        fits. Without a model (:meth:`check_params` with no stand-in), ``(None, "peft default")``:
        peft then checks the config alone.
        """
        if isinstance(given, str):
            given = [t.strip() for t in given.split(",") if t.strip()]
        if given:
            return list(given), "settings"
        if model is None:
            return None, "peft default"
        if mapping is None:
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
        default = peft_default(model, mapping)
        if default:
            return default, f"peft default for {getattr(model.config, 'model_type', None)}"
        from ..models.architecture import ArchitectureError, attention_targets

        try:
            return attention_targets(model), "found by role"
        except ArchitectureError as e:
            raise ArchitectureError(f"{self.name}: {e}; name the modules to adapt with "
                                    f"--set {self.name}.{setting}=NAME,NAME") from None

    def prompt_sizes(self, model: torch.nn.Module, prefix: bool = False) -> dict:
        """``num_layers``, ``token_dim`` and ``num_attention_heads`` for a peft prompt-learning
        config, read from the model itself rather than from config keys (peft knows only some
        spellings: not MPT's ``n_heads``, not Falcon's ``num_kv_heads``): the decoder layers
        and heads found by role, the input embeddings' width. With ``prefix``, the width of
        the keys the model caches per layer (:func:`suite.models.architecture.kv_cache_shape`), which
        a prefix of keys and values must match. Empty where they cannot be found (peft then
        reads the config as usual)."""
        from ..models import architecture

        if prefix:
            shape = architecture.kv_cache_shape(model)
            if shape is not None:
                layers, heads, head_dim = shape
                return {"num_layers": layers, "num_attention_heads": heads, "token_dim": heads * head_dim}
            # no cache to measure (the weightless stand-in of a settings check): the sizes by role
        try:
            g = architecture.find(model).geometry
        except architecture.ArchitectureError:
            return {}
        return {"num_layers": g.layers, "num_attention_heads": g.heads,
                "token_dim": model.get_input_embeddings().embedding_dim} if g.layers else {}

    def apply(self, model, params):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, params))

    def check_params(self, params, model=None):
        """Build the peft config (peft validates it as it is built) and, given a stand-in, the
        peft model on it: shapes, target modules and the method's own checks, without weights."""
        from peft import get_peft_model

        config = self.peft_config(model, params)
        if model is not None:
            get_peft_model(model, config)

    def trainable_count(self, model):
        return model.get_nb_trainable_parameters()[0]

    def run_info(self, model, params):
        """The peft type and, for adapter tuners, the sorted ``target_modules`` as the peft
        model's own config holds them after ``get_peft_model`` resolved them."""
        config = model.peft_config[model.active_adapter]
        info = {"peft_type": str(getattr(config.peft_type, "value", config.peft_type))}
        targets = getattr(config, "target_modules", None)
        if targets:
            info["target_modules"] = sorted(targets) if not isinstance(targets, str) else targets
        return info

    def base_view(self, model):
        from contextlib import contextmanager

        @contextmanager
        def disabled():
            with model.disable_adapter():  # peft switches every adapter (and prompt) off
                yield model

        return disabled()

    def merge(self, model):
        return model.merge_and_unload()

    def save(self, model, directory, params):
        model.save_pretrained(str(directory))

    def export(self, model, directory, params, dtype=None):
        """PEFT's own format (the adapter as trained; the base is named in ``adapter_config.json``)."""
        model.save_pretrained(str(directory))
        return "peft"

    def load(self, base_model, directory, params):
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(directory))


def peft_default(model: torch.nn.Module, mapping: dict) -> list[str] | None:
    """peft's default target modules for ``model``'s type in ``mapping`` (a tuner's
    ``TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING``), when they name modules the model has."""
    default = mapping.get(getattr(getattr(model, "config", None), "model_type", None))
    default = [default] if isinstance(default, str) else list(default or [])
    names = [n for n, _ in model.named_modules()]
    return default if any(n == t or n.endswith("." + t) for n in names for t in default) else None
