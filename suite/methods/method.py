"""What an adapter method is, as the core sees it.

A method turns a frozen base model into a model to train. The core never takes a method's
word for what it did: it counts trainable parameters itself, checks that base weights it
declares frozen stay frozen, and measures memory and time around it.
"""
from __future__ import annotations

import json
import math
import warnings
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
    #: True when the method runs on a quantized base (``--quantize nf4|fp4|int8``: the base's
    #: linear layers are bitsandbytes 4- or 8-bit layers, frozen by peft's k-bit preparation):
    #: it must train only its own float parameters, or float tensors of the base, and every
    #: layer it wraps must be one peft can put an adapter on in 4 and 8 bits (LoRA, (IA)³,
    #: prompt learning, a side network). A tuple names the kinds it runs on, e.g.
    #: ``("nf4", "fp4")``. False (the default): the shootout stops before anything runs with
    #: one line naming the method and the setting. The conformance kit (:mod:`suite.testing`)
    #: checks the claim on a quantized tiny model.
    quantized_base: bool | tuple = False
    #: why not, where :attr:`quantized_base` does not cover a kind: the end of that one line
    quantized_base_reason: str = ""
    #: False when the method reads its own trained parameters whole while it trains, beyond the
    #: layers' forward (AdaLoRA: its orthogonality penalty and its rank budget). In a sharded
    #: cell (``--shard fsdp``) they then stay whole on every process, outside FSDP, with their
    #: gradients averaged over the processes by the core, while the base is sharded. True (the
    #: default): FSDP shards them with the rest.
    shards_trained: bool = True
    #: the values ``leitai run --sweep KEY`` tries for each setting, e.g. ``{"lr": [1e-4, 3e-4,
    #: 1e-3, 3e-3, 1e-2], "r": [4, 16]}``; a method that declares no ``lr`` grid gets its default
    #: lr times 0.1, 0.3, 1, 3 and 10 (:func:`tuning_grid`)
    grid: dict = {}
    #: how far a sweep may extend a grid whose best value lies at its edge: ``{setting: (low,
    #: high)}``, e.g. ``{"lr": (1e-5, 0.3)}``; ``lr`` defaults to :data:`LR_BOUNDS`, and a setting
    #: without bounds is not extended (:func:`sweep_bounds`, :func:`suite.config.sweep.extend`)
    bounds: dict = {}

    def apply(self, model: torch.nn.Module, params: dict) -> torch.nn.Module:
        """Return the model to train, built around ``model`` (a fresh base model).

        The returned module must accept ``input_ids``, ``attention_mask`` and ``labels`` and
        return an object with ``.loss`` and ``.logits`` (logits for the given ``input_ids``
        positions, or with extra leading positions the method prepends, like PEFT's prompt
        methods), and must offer ``generate(input_ids=..., attention_mask=...,
        generation_config=...)`` the way transformers models do.
        """
        raise NotImplementedError

    def check_params(self, params: dict, model: torch.nn.Module | None = None) -> None:
        """Check the settings ``params`` (defaults merged with the user's overrides) before any
        cell starts; raise ``ValueError`` with a one-line reason when they cannot work.

        The core calls this in the parent process for every method of a shootout, so that
        ``--set lora.r=-1`` stops the shootout with one line (``leitai: error: lora.r=-1: ...``,
        exit status 2) instead of failing every cell. ``model`` is a *stand-in* of the base
        model: its architecture built from its config on the meta device (parameters with shapes
        and no values, no memory), fresh for this call, or None when the model's config is not
        available here. Do not run the model, load weights or download anything. The core names
        the setting to blame (the user's override that makes the check fail), and checks ``lr``
        itself (a finite positive number) before calling this.

        The default accepts anything. :class:`PeftMethod` builds its peft model on the stand-in.
        """

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

    def training_state(self, model: torch.nn.Module) -> dict:
        """What the method keeps outside the model's parameters and buffers that changes while it
        trains and that training depends on (tensors and plain values), for a checkpoint inside the
        cell (``--checkpoint-every``): the core saves the trainable parameters, every buffer, the
        optimiser, the schedule and the random states itself. AdaLoRA keeps its importance scores and rank
        pattern here. Called in every process of a cell; default: ``{}``."""
        return {}

    def load_training_state(self, model: torch.nn.Module, state: dict) -> None:
        """Put back what :meth:`training_state` returned, on the model :meth:`apply` built afresh
        with the checkpoint's parameters already loaded, before training goes on. Default: nothing."""

    def trainable_count(self, model: torch.nn.Module) -> int | None:
        """The method's own count of the trainable parameters of ``model``, if it keeps one.

        The core never reports this number (it counts for itself); the conformance kit
        (:mod:`suite.testing`) checks that it equals the core's count. None: no claim.
        """
        return None

    def run_info(self, model: torch.nn.Module, params: dict) -> dict:
        """What actually ran, for the record: a small JSON-serialisable dict (names, choices,
        fallbacks; no tensors), read from the model :meth:`apply` returned.

        The cell stores it as ``record["method_info"]`` and the report lists it per task, so
        a choice the method made on its own (the modules LoRA adapts, LST's initialisation) is
        visible. A ``"fallback"`` entry (text) says the method could not do what its settings
        asked and did something else; the report shows it as a warning. Default: ``{}``.
        """
        return {}

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

    def export(self, model: torch.nn.Module, directory: Path, params: dict, dtype: torch.dtype | None = None) -> str | None:
        """Write the trained ``model`` (what :meth:`load` rebuilt on a fresh base) to ``directory``
        in a standard format that loads without leitai, for ``leitai export``; return which:

        - ``"transformers"``: a model directory ``transformers.AutoModelForCausalLM.from_pretrained``
          loads (with ``trust_remote_code=True`` where its ``config.json`` has an ``auto_map``, the
          code then being in the directory: LST);
        - ``"peft"``: an adapter ``peft.PeftModel.from_pretrained(base, directory)`` loads on the base.

        ``dtype``: what the user asked the exported base weights in (None: as they are); a method
        keeps its own trained tensors as it sees fit (a PEFT adapter stays as trained). The core
        adds the tokenizer, the chat template and ``leitai-export.json``, and checks the result
        by loading it back the way the format says (``leitai export --check``). The default
        returns None: no standard format, and the core exports what :meth:`save` writes, with a
        README saying how to load it through leitai's plugin classes.
        """
        return None

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


def run_info(method: Method, model: torch.nn.Module, params: dict) -> dict:
    """:meth:`Method.run_info`, checked: a dict that JSON can hold (anything else is a bug in
    the method, raised as a ``TypeError`` naming it)."""
    info = method.run_info(model, dict(params))
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise TypeError(f"method {method.name!r}: run_info must return a JSON-serialisable dict ({e})") from None
    if not isinstance(info, dict):
        raise TypeError(f"method {method.name!r}: run_info must return a dict, not {type(info).__name__}")
    return info


def method_params(method: Method, overrides: dict | None) -> dict:
    """The method's defaults with the user's overrides; unknown keys, and an ``lr`` that is not
    a finite positive number, are a ``ValueError`` naming the setting."""
    params = dict(method.defaults)
    for key, value in (overrides or {}).items():
        if key not in params:
            known = ", ".join(sorted(params))
            raise ValueError(f"method {method.name!r} has no setting {key!r} (settings: {known})")
        params[key] = value
    if "lr" not in params:
        raise ValueError(f"method {method.name!r} declares no default 'lr'")
    lr = params["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"{method.name}.lr={lr!r}: the learning rate must be a finite positive number")
    return params


def check_params(method: Method, params: dict, overrides: dict | None = None, stand_in=None) -> None:
    """Run ``method.check_params`` on ``params`` (each call on a fresh ``stand_in()`` model, when
    ``stand_in`` is given); a failure is a one-line ``ValueError`` that names the setting to
    blame: the first of the user's ``overrides`` that, added to the method's defaults, makes the
    check fail (``lora.r=-1: ...``), else the method itself."""

    def error(trial: dict) -> str | None:
        try:
            with warnings.catch_warnings():  # a library's warnings about a stand-in are noise here
                warnings.simplefilter("ignore")
                method.check_params(dict(trial), stand_in() if stand_in else None)
        except Exception as e:  # a plugin's check may raise anything; it is the reason either way
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            text = text.removeprefix(f"{method.name}: ")  # the message names the method already
            return text if isinstance(e, ValueError) and text else f"{type(e).__name__}: {text}"
        return None

    reason = error(params)
    if reason is None:
        return
    blame, trial = method.name, dict(method.defaults)
    if overrides and error(trial) is None:
        for key, value in overrides.items():
            trial[key] = value
            if error(trial) is not None:
                blame = f"{method.name}.{key}={value!r}"
                break
    raise ValueError(f"{blame}: {reason}")
