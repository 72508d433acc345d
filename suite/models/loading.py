"""Base models: named ones from plugins, anything else through transformers' Auto classes.

The parent process checks the model before any cell starts (:func:`model_config`): a local
path must be a model directory, a hub id must have a local copy when the hub is offline
(``HF_HUB_OFFLINE``); nothing is downloaded and no weights are loaded. The config it reads
gives methods a weightless stand-in of the model (:func:`stand_in`) to check their settings on.
"""
from __future__ import annotations

from pathlib import Path

#: what a model directory must hold besides config.json: weights in one of these forms
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


class ModelSpec:
    """Base class for named base models. Register instances through ``register_models``."""

    name: str = ""
    description: str = ""
    #: the model used when no ``--model`` is given (one registered model sets this)
    default: bool = False

    def load(self, dtype=None):
        """Return ``(model, tokenizer)``: a causal LM on the CPU with its floating-point weights
        in ``dtype`` (a ``torch.dtype``, the run's ``--dtype``; None: float32), and its tokenizer.

        Must work offline where the model ships with a package, and must give the same
        weights in every process (every method of a shootout starts from the same base).
        A ``load()`` without the ``dtype`` argument (written before there was one) still works:
        the core casts what it returns (:func:`load_base`).

        For ``--quantize``, a ``load`` that also takes ``quantization`` gets transformers'
        ``from_pretrained`` keyword arguments (``quantization_config``, ``device_map``) to pass
        on; without it the core loads the float model, saves it to a temporary directory and
        loads that back quantized (:func:`suite.models.quantize.load`).
        """
        raise NotImplementedError

    def load_config(self):
        """Return the model's ``transformers`` config, read without its weights, or None when
        there is none to read here (the default).

        Called in the parent process before any cell starts: raise ``ValueError`` or ``OSError``
        with a one-line reason when the model cannot be loaded (its files are missing), and
        never download or load weights. The core builds a weightless stand-in of the model from
        the config for the methods' :meth:`~suite.methods.method.Method.check_params`.
        """
        return None


class HubModel(ModelSpec):
    """Any Hugging Face model id or local path, loaded through ``AutoModelForCausalLM``."""

    def __init__(self, name: str, trust_remote_code: bool = False):
        self.name = name
        self.trust_remote_code = trust_remote_code
        self.description = f"{name} (transformers Auto classes)"

    def load(self, dtype=None, quantization=None):
        """``quantization``: transformers' keyword arguments for a quantized base
        (``quantization_config``, ``device_map``), passed to ``from_pretrained`` as they are."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.name, trust_remote_code=self.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            self.name, trust_remote_code=self.trust_remote_code, dtype=dtype or torch.float32, **(quantization or {})
        )
        return model, tokenizer

    def load_config(self):
        """A local directory must hold config.json and weights; a hub id is read from the local
        cache (its config), and must be there when the hub is offline. A hub id not cached while
        online gives None: the cells download it, the check does not."""
        from transformers import AutoConfig

        directory = self.local_copy()
        if directory is None:
            return None
        return AutoConfig.from_pretrained(str(directory), trust_remote_code=self.trust_remote_code)

    def local_copy(self) -> Path | None:
        """The directory the model loads from: the local path, or the hub id's cached snapshot
        (None: not cached, and the hub is online). ``ValueError`` when there is none to use."""
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        path = Path(self.name).expanduser()
        if path.exists():
            if not path.is_dir():
                raise ValueError("not a model directory (a file)")
            return check_model_dir(path)
        try:
            validate_repo_id(self.name)
        except HFValidationError:
            raise ValueError("no such directory, and not a Hugging Face model id") from None
        try:
            cached = Path(snapshot_download(self.name, local_files_only=True))
        except (OSError, ValueError):  # LocalEntryNotFoundError: nothing cached
            cached = None
        if cached is not None:
            return check_model_dir(cached, f"the cached copy {cached}")
        if constants.HF_HUB_OFFLINE:
            raise ValueError(f"no such directory, and no local copy of the hub model while HF_HUB_OFFLINE is set "
                             f"(download it first: hf download {self.name})")
        return None


def check_model_dir(path: Path, what: str = "the directory") -> Path:
    """``path`` if it looks like a model directory (config.json and weights); else ``ValueError``."""
    if not (path / "config.json").is_file():
        raise ValueError(f"{what} has no config.json (not a model directory)")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ValueError(f"{what} holds no weights ({', '.join(WEIGHT_PATTERNS)})")
    return path


def resolve(name: str, registry, trust_remote_code: bool = False) -> ModelSpec:
    """The ``ModelSpec`` that ``--model name`` means: the registered model of that name, else a
    :class:`HubModel` (a Hugging Face id or local path, loaded through transformers' Auto
    classes). Its ``load()`` returns ``(model, tokenizer)``."""
    if name in registry.models:
        return registry.models[name]
    return HubModel(name, trust_remote_code)


def load_base(spec: ModelSpec, dtype, quantize: str = "none", device=None) -> tuple:
    """``(model, tokenizer)`` of ``spec`` with its weights in ``dtype`` (a ``torch.dtype``): the
    spec loads them so where its ``load`` takes a ``dtype``; else what it returns is cast
    (floating-point parameters only, :func:`suite.models.precision.cast_weights`). With ``quantize``
    (``--quantize nf4``...), its linear layers quantized on ``device`` (:func:`suite.models.quantize.load`)."""
    import inspect

    from .precision import cast_weights

    if quantize not in ("none", "", None):
        from .quantize import load

        return load(spec, dtype, quantize, device, lambda: load_base(spec, dtype))

    if "dtype" in inspect.signature(spec.load).parameters:
        return spec.load(dtype=dtype)
    model, tokenizer = spec.load()
    return cast_weights(model, dtype), tokenizer


def model_config(name: str, registry, trust_remote_code: bool = False):
    """The config of model ``name`` (None when it cannot be read without a download), checked in
    the parent before any cell starts; a one-line ``ValueError`` naming ``--model`` when the
    model cannot be used here."""
    spec = resolve(name, registry, trust_remote_code)
    try:
        return spec.load_config()
    except (OSError, ValueError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--model {name}: {text}") from None


def stand_in(config, trust_remote_code: bool = False):
    """A weightless stand-in of the model with ``config``: its modules built on the meta device
    (shapes, no values, no memory); None when the architecture cannot be built that way."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # an architecture that cannot be built on meta: methods check without it
        return None


def set_attention(model, kernel: str) -> str | None:
    """Run ``model``'s attention with ``kernel`` (``--attn-implementation``: ``auto`` keeps
    transformers' choice) through transformers' own switch; the kernel that runs (None: a model
    that does not say). A kernel the model or the machine cannot run is the ``ImportError`` or
    ``ValueError`` transformers raises."""
    if kernel != "auto":
        model.set_attn_implementation(kernel)
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def check_attention(config, kernel: str, device: str, trust_remote_code: bool = False) -> None:
    """Before any cell: a one-line ``ValueError`` when the model of ``config`` cannot run
    attention ``kernel`` here (flash_attention_2 without its package or without CUDA, sdpa on a
    model that has none)."""
    if kernel == "auto" or config is None:
        return
    if kernel == "flash_attention_2" and device == "cpu":
        raise ValueError(f"--attn-implementation {kernel} runs on CUDA only, not with --device cpu")
    model = stand_in(config, trust_remote_code)
    if model is None:  # an architecture that cannot be built on meta: the cell finds out
        return
    try:
        set_attention(model, kernel)
    except (ImportError, ValueError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--attn-implementation {kernel}: {text}") from None


def prepare_tokenizer(tokenizer):
    """Make sure the tokenizer can pad (right side, for training) and has an end token."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def enable_gradient_checkpointing(model) -> None:
    """Recompute each layer's activations in backward instead of keeping them (transformers'
    non-reentrant checkpointing, which needs no gradient on the inputs, so frozen embeddings
    work): less memory for activations, about one more forward pass of time."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
