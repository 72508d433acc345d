"""LST (ladder side-tuning) as a transformers model, for a directory ``leitai export`` wrote.

The directory holds this file, ``model.py`` (the side network; it imports nothing of leitai),
``config.json`` (``auto_map`` names the classes below), the frozen backbone in ``base/`` (a
transformers model directory) and the side network's weights in ``side.safetensors``. It loads
with transformers alone::

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)  # it reads config.json too
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=32)  # greedy only

``model(input_ids, attention_mask, labels)`` returns ``.loss`` and ``.logits`` as a causal LM does.
"""
from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, PretrainedConfig

from .model import LadderSideModel, SideNetwork, SideShape


class LstConfig(PretrainedConfig):
    """The side network's shape (``side``), the backbone's body module (``body``) and where the
    backbone is (``base_dir``, relative to the directory)."""

    model_type = "leitai-lst"

    def __init__(self, side: dict | None = None, body: str | None = None, base_dir: str = "base", **kwargs):
        super().__init__(**kwargs)
        self.side = side or {}
        self.body = body
        self.base_dir = base_dir


class LstForCausalLM(LadderSideModel):
    """The frozen backbone with its trained side network beside it."""

    config_class = LstConfig

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModelForCausalLM"):
        """transformers calls this on a class it loads as remote code; nothing to register."""

    @classmethod
    def from_pretrained(cls, path, *args, config=None, dtype="auto", device_map=None, **kwargs):
        """The backbone from ``path/base`` (transformers' own loading; ``dtype``: its weights'),
        the side network (float32, as trained) from ``path/side.safetensors``."""
        from safetensors.torch import load_file

        path = Path(path)
        config = config if isinstance(config, LstConfig) else LstConfig.from_pretrained(str(path))
        base = AutoModelForCausalLM.from_pretrained(str(path / config.base_dir), dtype=dtype, device_map=device_map)
        shape = SideShape(**{**config.side, "layers": tuple(config.side["layers"])})
        side = SideNetwork(shape).to(next(base.parameters()).device)
        side.load_state_dict(load_file(str(path / "side.safetensors")), strict=True)
        model = cls(base, side, config.body)
        model.lst_config = config
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()
