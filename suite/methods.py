"""What an adapter method is, as the core sees it.

A method turns a frozen base model into a model to train. The core never takes a method's
word for what it did: it counts trainable parameters itself, checks that base weights it
declares frozen stay frozen, and measures memory and time around it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class Method:
    """Base class for adapter methods. Register instances through ``register_methods``.

    Subclasses set the class attributes and implement :meth:`apply`. :meth:`save` and
    :meth:`load` default to storing the trainable tensors as safetensors, which is right for
    any method whose trainable state lives in ``requires_grad`` parameters of the model that
    :meth:`apply` returns.
    """

    #: the name users type after ``--methods``
    name: str = ""
    #: one line a user sees in ``leitai list methods``
    description: str = ""
    #: where the defaults come from (author, year, title, and the section or table)
    paper: str = ""
    #: hyper-parameters; ``lr`` is read by the core, the rest by :meth:`apply`. Users override
    #: any key per method (``--set lora.r=16`` or ``[method.lora]`` in a TOML config).
    defaults: dict = {}
    #: the values ``leitai run --sweep KEY`` tries for each setting, e.g.
    #: ``{"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]}``. When a method declares no ``lr`` grid the
    #: core uses its default lr × (0.1, 0.3, 1, 3, 10) (:func:`sweep_grid`).
    grid: dict = {}
    #: part of the shootout that runs when no ``--methods`` are given (``--methods all`` runs
    #: every installed method). The built-in catalogue keeps one method per family in it.
    default: bool = True
    #: True when the base model's own weights must not train; the core checks it. A method
    #: that trains some base tensors (biases, norms) keeps this True and overrides
    #: :meth:`trained_base` to name the ones it trains.
    freezes_base: bool = True
    #: True when the model :meth:`apply` returns, before any training, computes the same
    #: logits as the base model (LoRA with B = 0, full fine-tuning); False for methods that
    #: change the outputs from the start (prefix, P- and prompt tuning). The core checks a
    #: True claim before training and fails the cell if the outputs differ.
    starts_from_base: bool = True
    #: True when :meth:`merge` folds the trained weights into the base model's own matrices
    #: (LoRA): the core then also times inference merged, after checking that merged and
    #: unmerged outputs agree.
    mergeable: bool = False

    def apply(self, model: torch.nn.Module, params: dict) -> torch.nn.Module:
        """Return the model to train, built around ``model`` (a fresh base model).

        The returned module must accept ``input_ids``, ``attention_mask`` and ``labels`` and
        return an object with ``.loss`` and ``.logits`` (logits for the given ``input_ids``
        positions, or with extra leading positions the method prepends, like PEFT's prompt
        methods), and must offer ``generate(input_ids=..., attention_mask=...,
        max_new_tokens=..., do_sample=False)`` the way transformers models do.
        """
        raise NotImplementedError

    def trained_base(self, model: torch.nn.Module, params: dict) -> set[str]:
        """The names of the base parameters this method trains, as ``model.named_parameters()``
        names them. The core calls it with the fresh base model and the run's params *before*
        :meth:`apply`, and fails a cell whose method leaves any other base parameter trainable;
        the conformance kit checks that the others get no gradient and stay bit-identical.

        The default: none when :attr:`freezes_base`, else every one; a subclass that overrides
        the older, name-only :meth:`keeps_frozen` is consulted name by name. A method that
        trains chosen base tensors (BitFit: the biases) returns exactly those names.
        """
        return {name for name, _ in model.named_parameters() if not self.keeps_frozen(name)}

    def keeps_frozen(self, name: str) -> bool:
        """Whether the base parameter ``name`` must stay frozen: the older, name-only way to
        declare what :meth:`trained_base` declares (which calls it by default). Answers
        :attr:`freezes_base` for every name unless overridden."""
        return self.freezes_base

    def param_groups(self, model: torch.nn.Module, params: dict) -> list[dict] | None:
        """Optimiser parameter groups for the model :meth:`apply` returned, or None for one
        group at ``params["lr"]`` (the default).

        Each group is a dict with ``"params"`` (a list of parameters) and optionally ``"lr"``
        (absolute: compute it from ``params["lr"]``, so a sweep over lr moves every group) and
        ``"weight_decay"``; a group without them gets the run's. The optimiser stays the core's
        AdamW with its warm-up and cosine schedule (applied to every group). The core checks
        that the groups hold every parameter that requires grad exactly once and nothing else,
        and fails the cell otherwise (LoRA+ puts the B matrices in a group at a higher lr).
        """
        return None

    def after_step(self, model: torch.nn.Module, step: int, steps: int) -> None:
        """Called by the core after every optimiser step (and the schedule's step), before the
        gradients are cleared: ``step`` is the 0-based index of the step just taken, ``steps``
        the run's step budget. Default: nothing. AdaLoRA reallocates its ranks here
        (``update_and_allocate``), on a schedule set from ``steps``."""

    def trainable_count(self, model: torch.nn.Module) -> int | None:
        """The method's own count of the trainable parameters of ``model``, if it keeps one.

        The core never reports this number (it counts for itself); the conformance kit
        (:mod:`suite.testing`) checks that it equals the core's count. None: no claim.
        """
        return None

    def base_view(self, model: torch.nn.Module):
        """A context manager that yields a module computing the *untouched base model* with
        the method's parts switched off, or None when the method cannot (full fine-tuning
        trains the base itself).

        The core measures forgetting against the base; it checks the view's loss on the side
        corpus against the base model's own figure before and after training, so a view that
        is not the base fails the cell.
        """
        return None

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return the trained ``model`` with the method folded into plain base-model weights
        (called only when :attr:`mergeable`, after the adapter was saved; may work in place)."""
        raise NotImplementedError(f"method {self.name!r} cannot merge")

    def save(self, model: torch.nn.Module, directory: Path, params: dict) -> None:
        """Write what is needed to restore the trained model on top of the base weights."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(directory / "trainable.safetensors"))
        (directory / "method.json").write_text(json.dumps({"method": self.name, "params": params}, indent=1))

    def load(self, base_model: torch.nn.Module, directory: Path, params: dict) -> torch.nn.Module:
        """Rebuild the trained model from ``base_model`` and what :meth:`save` wrote."""
        model = self.apply(base_model, params)
        state = load_file(str(Path(directory) / "trainable.safetensors"))
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"{self.name}: saved tensors not in the model: {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)
        return model


class PeftMethod(Method):
    """A method backed by a PEFT config; saved and loaded in PEFT's own format."""

    def peft_config(self, model: torch.nn.Module, params: dict):
        """Return the ``peft.PeftConfig`` for ``model`` with hyper-parameters ``params``."""
        raise NotImplementedError

    def apply(self, model, params):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, params))

    def trainable_count(self, model):
        return model.get_nb_trainable_parameters()[0]

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

    def load(self, base_model, directory, params):
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(directory))


def method_params(method: Method, overrides: dict | None) -> dict:
    """The method's defaults with the user's overrides; unknown keys are an error."""
    params = dict(method.defaults)
    for key, value in (overrides or {}).items():
        if key not in params:
            known = ", ".join(sorted(params))
            raise ValueError(f"method {method.name!r} has no setting {key!r} (settings: {known})")
        params[key] = value
    if "lr" not in params:
        raise ValueError(f"method {method.name!r} declares no default 'lr'")
    return params


#: the lr multipliers a sweep tries when a method declares no lr grid
LR_FACTORS = (0.1, 0.3, 1, 3, 10)


def sweep_grid(method: Method) -> dict:
    """The values a sweep tries for each of ``method``'s settings: its :attr:`Method.grid`,
    with ``lr`` filled from the default lr × :data:`LR_FACTORS` when it declares no lr grid."""
    grid = {key: list(values) for key, values in method.grid.items()}
    if "lr" not in grid:
        grid["lr"] = [float(f"{float(method.defaults['lr']) * f:.3g}") for f in LR_FACTORS]
    return grid


def resolve_method(name: str, registry, settings: dict | None = None) -> Method:
    """The method called ``name``: a registered one, or a user's PEFT config for
    ``peft:PATH`` (or for a name whose ``settings`` hold ``peft_config = "PATH"``, as a TOML
    ``[method.NAME]`` table does). ``settings`` are the user's overrides in the shootout, or a
    cell's params in the cell's process.

    Raises :class:`suite.errors.UsageError` with a one-line reason for an unknown name or an
    unusable config file.
    """
    from .errors import UsageError

    path = (settings or {}).get("peft_config")
    if name.startswith("peft:") or path is not None:
        from .peft_file import PeftFileMethod

        if name in registry.methods:
            raise UsageError(f"method {name!r} is installed; give your PEFT config another name")
        return PeftFileMethod.from_name(name, path)
    if name not in registry.methods:
        known = ", ".join(sorted(registry.methods))
        raise UsageError(f"unknown method {name!r} (known: {known}, or peft:PATH for a PEFT config)")
    return registry.methods[name]
