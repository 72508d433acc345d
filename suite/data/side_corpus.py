"""Side corpora: running text no task trains on, which forgetting is measured on and replay
mixes into training (hook ``register_side_corpora``; the built-in one is a held-out slice of
the People's Daily corpus, ``zh-news-side``)."""
from __future__ import annotations

from .batches import Encoded, collate


class SideCorpus:
    """Base class for side corpora. Register instances through ``register_side_corpora``."""

    #: the name users type after ``--side-corpus``
    name: str = ""
    description: str = ""
    #: the corpus used when no ``--side-corpus`` is given (one registered corpus sets this)
    default: bool = False

    def texts(self, count: int) -> list[str]:
        """The first ``count`` texts of the corpus, the same in every process. They must share
        no text with any task's splits (or the base model's pretraining text, where known).
        Forgetting is measured on a prefix of them; ``--replay NAME:FRACTION`` trains on the
        texts after the first :data:`suite.data.replay.MEASURED` (``texts(MEASURED + n)``), never on those."""
        raise NotImplementedError


def side_batches(tokenizer, texts: list[str], max_len: int, batch_size: int) -> list[dict]:
    """The side texts tokenised (start token first, cut to ``max_len``) into length-sorted,
    right-padded batches."""
    ids = tokenizer(texts, truncation=True, max_length=max_len, verbose=False)["input_ids"]
    items = sorted((Encoded(str(i), seq, []) for i, seq in enumerate(ids) if len(seq) >= 2), key=lambda e: e.length)
    return [collate(items[i : i + batch_size], tokenizer.pad_token_id) for i in range(0, len(items), batch_size)]
