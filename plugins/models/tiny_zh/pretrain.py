"""The pretraining recipe of ``tiny-zh``: ``leitai base build [--out DIR]``.

Builds the tokenizer from the pretraining text (:mod:`plugins.models.tiny_zh.corpus`), packs the
tokenised units (``<s> unit </s>``) into one stream cut into ``seq_len`` blocks, and trains a
LLaMA-architecture model from a seeded initialisation with AdamW, linear warm-up and cosine
decay. Which blocks form step ``s``'s batch depends only on the seed and ``s`` (one seeded
permutation per epoch), so a run resumed from its checkpoint takes exactly the steps an
uninterrupted one would. At the end it measures held-out perplexity for the trained model and
for the same initialisation untrained, and writes the weights, tokenizer, ``build.json`` and
``MODEL_CARD.md`` to the output directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
CHECKSUM = "weights.sha256"


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 704
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 2000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    #: held-out blocks scored for perplexity (at most)
    eval_blocks: int = 128


def model_config(recipe: Recipe, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads, head_dim=recipe.hidden_size // recipe.num_heads,
        max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def init_model(config, seed: int):
    """The model before training: the same weights for the same config and seed."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def blocks(units, tokenizer, seq_len: int):
    """``<s> unit </s>`` for every unit, concatenated and cut into ``[n, seq_len]`` (the tail dropped)."""
    import torch

    ids = tokenizer(list(units), add_special_tokens=False, verbose=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    stream = [t for seq in ids for t in (bos, *seq, eos)]
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


@lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n_blocks: int) -> list[int]:
    import torch

    return torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def batch_indices(step: int, recipe: Recipe, n_blocks: int) -> list[int]:
    """The blocks of training step ``step``: positions ``step*B ..`` of the seeded epoch permutations."""
    return [_epoch_order(recipe.seed, k // n_blocks, n_blocks)[k % n_blocks]
            for k in range(step * recipe.batch_size, (step + 1) * recipe.batch_size)]


def learning_rate(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def heldout_loss(model, data) -> float:
    """Mean cross-entropy per predicted token over held-out blocks."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for chunk in data.split(16):
            out = model(input_ids=chunk, labels=chunk)
            n = chunk.numel() - chunk.shape[0]
            total += float(out.loss) * n
            count += n
    model.train()
    return total / count


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def _optimizer(model, recipe: Recipe):
    import torch

    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=recipe.lr, betas=(0.9, 0.95),
    )


def build(out: Path, recipe: Recipe = Recipe(), resume: bool = False, progress: bool = True) -> dict:
    """Run the whole recipe into ``out``; return what build.json records."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from . import card
    from . import tokenizer as tokenizer_builder
    from .corpus import build_corpus

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    corpus = build_corpus()
    vocab = tokenizer_builder.build(corpus.train, out)
    tok = AutoTokenizer.from_pretrained(str(out))
    train, heldout = blocks(corpus.train, tok, recipe.seq_len), blocks(corpus.heldout, tok, recipe.seq_len)
    heldout = heldout[: recipe.eval_blocks]
    config = model_config(recipe, tok)
    model = init_model(config, recipe.seed)
    random_loss = heldout_loss(model, heldout)
    optimizer = _optimizer(model, recipe)

    ckpt_path, start, spent = out / CHECKPOINT, 0, 0.0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        if state["recipe"] != dataclasses.asdict(recipe) or state["fingerprint"] != corpus.fingerprint():
            raise SystemExit(f"{ckpt_path}: written by another recipe or corpus; delete it or drop --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, spent = state["step"], state["seconds"]
    prep_seconds = time.perf_counter() - started

    model.train()
    bar = tqdm(range(start, recipe.steps), initial=start, total=recipe.steps, desc="pretraining tiny-zh",
               disable=not progress)
    t0 = time.perf_counter()
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        batch = train[batch_indices(step, recipe, len(train))]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.steps:
            state = {"step": step + 1, "seconds": spent + time.perf_counter() - t0, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "recipe": dataclasses.asdict(recipe),
                     "fingerprint": corpus.fingerprint()}
            torch.save(state, ckpt_path.with_suffix(".tmp"))
            os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)
    train_seconds = spent + time.perf_counter() - t0
    bar.close()

    final_loss = heldout_loss(model, heldout)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    (out / CHECKSUM).write_text(f"{file_sha256(out / WEIGHTS)}  {WEIGHTS}\n", encoding="utf-8")
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "recipe": dataclasses.asdict(recipe),
        "corpus": {"sources": corpus.sizes, "train_units": len(corpus.train), "heldout_units": len(corpus.heldout),
                   "train_chars": sum(map(len, corpus.train)), "train_tokens": int(train.numel()),
                   "heldout_tokens_scored": int(heldout.numel()), "fingerprint": corpus.fingerprint()},
        "vocab_size": vocab,
        "parameters": n_params,
        "weights_bytes": (out / WEIGHTS).stat().st_size,
        "epochs": round(recipe.steps * recipe.batch_size / len(train), 2),
        "seconds": {"prepare": round(prep_seconds, 1), "train": round(train_seconds, 1)},
        "heldout": {"loss": round(final_loss, 4), "perplexity": round(math.exp(final_loss), 2),
                    "random_init_loss": round(random_loss, 4), "random_init_perplexity": round(math.exp(random_loss), 2)},
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    (out / "build.json").write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    card.write(out, info)
    return info
