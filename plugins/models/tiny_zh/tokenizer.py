"""Build tiny-zh's character-level tokenizer from its pretraining text.

One token per character for every character seen at least twice in the text (simplified
and, through OpenCC, traditional), ASCII, full-width punctuation and digits, and the financial
numerals; anything else falls back to its UTF-8 bytes (``<0x..>`` tokens), so no text is ever
unknown. Its chat template is leitai's plain one (:data:`suite.data.chat.PLAIN_TEMPLATE`) without the
leading start token. ``leitai base build`` builds it together with the model (plugins/models/tiny_zh/pretrain.py).

Prompts do not start with ``<s>``, as Qwen's do not: tiny-zh was pretrained on packed
``<s> text </s>`` streams without document masking, so ``<s>`` became a reset that the
positions after it hardly look across. A method that places tokens before the prompt (prefix
tuning's prefix, prompt tuning's and P-tuning's virtual tokens) would put them behind that
reset and be silenced by the base, not by its own weakness (MODEL_CARD.md, "Prompt format").
"""
from __future__ import annotations

import collections
from pathlib import Path

from suite.data.chat import PLAIN_TEMPLATE

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
#: conversations: plain Human/Assistant turns (suite.data.chat), without the start token
TEMPLATE = PLAIN_TEMPLATE.removeprefix("{{ bos_token or '' }}")
ALWAYS = (
    "".join(chr(c) for c in range(0x20, 0x7F))
    + "\n\t"
    + "，。！？；：、“”‘’（）《》〈〉【】「」『』—…·～％＋－×÷／＝＜＞＃＆＊＠￥"
    + "".join(chr(c) for c in range(0xFF10, 0xFF1A))  # full-width digits
    + "".join(chr(c) for c in range(0xFF21, 0xFF3B))  # full-width Latin capitals
    + "".join(chr(c) for c in range(0xFF41, 0xFF5B))  # full-width Latin small
    + "零〇一二三四五六七八九十百千万亿壹贰叁肆伍陆柒捌玖拾佰仟圆元角分整负点"
)
HERE = Path(__file__).parent


def build(texts, out_dir: Path = HERE, min_count: int = 2) -> int:
    """Write tokenizer.json and tokenizer_config.json to ``out_dir`` for the characters of
    ``texts`` (and their traditional forms); return the vocab size."""
    import opencc
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast


    counts = collections.Counter()
    for text in texts:
        counts.update(text)
    counts.update(opencc.OpenCC("s2t").convert("\n".join(texts)))
    chars = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
    chars += [c for c in ALWAYS if c not in counts or counts[c] < min_count]
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in dict.fromkeys(chars):
        if c.isprintable() or c in "\n\t":
            vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="$A", pair="$A $B"  # no start token: see the module's docstring
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.model_max_length = 512
    fast.chat_template = TEMPLATE  # conversations: plain Human/Assistant turns (suite.data.chat)
    fast.save_pretrained(str(out_dir), save_jinja_files=False)  # the template inside tokenizer_config.json
    return len(vocab)

