"""Metrics over generated answers that more than one task uses, and the scorers a user can name
for a ``file:`` task (``file:PATH?score=NAME``).

Every scorer takes the predictions and references of a whole test split (two lists of equal
length) and returns a number where higher is better. Task-specific metrics (word F1 of a
segmentation, entity F1) live with their task plugins and build on :func:`micro_f1`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable


def _check(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def _chars(text: str) -> str:
    """A text as the sequence of its characters, whitespace dropped (Chinese has no word spaces)."""
    return "".join(text.split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to their reference after stripping surrounding whitespace."""
    _check(predictions, references)
    if not references:
        return math.nan
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """Character-level ROUGE-L F1 of one answer (Lin 2004, with β = 1 as rouge-score uses).

    Precision and recall are the longest common subsequence of the two character sequences
    (whitespace dropped) over the prediction's and the reference's length. The LCS comes from
    rapidfuzz; rouge-score itself drops every non-ASCII character with its default tokenizer.
    Two empty texts agree perfectly; one empty text scores 0.
    """
    from rapidfuzz.distance import LCSseq

    p, r = _chars(prediction), _chars(reference)
    if not p or not r:
        return float(p == r)
    lcs = LCSseq.similarity(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(predictions: list[str], references: list[str]) -> float:
    """Character ROUGE-L F1 averaged over the examples."""
    _check(predictions, references)
    if not references:
        return math.nan
    return sum(rouge_l_f1(p, r) for p, r in zip(predictions, references)) / len(references)


def char_accuracy(predictions: list[str], references: list[str]) -> float:
    """1 − character error rate: ``1 − edit distance / reference length`` per answer, floored at 0,
    averaged over the examples (Levenshtein distance from rapidfuzz, whitespace dropped)."""
    from rapidfuzz.distance import Levenshtein

    _check(predictions, references)
    if not references:
        return math.nan
    total = 0.0
    for p, r in zip(predictions, references):
        p, r = _chars(p), _chars(r)
        total += float(p == r) if not r else max(0.0, 1 - Levenshtein.distance(p, r) / len(r))
    return total / len(references)


def bleu4_zh(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 with sacrebleu's ``zh`` tokenizer (each Chinese character a token), on
    sacrebleu's usual 0–100 scale."""
    import sacrebleu

    _check(predictions, references)
    if not references:
        return math.nan
    return float(sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score)


def micro_f1(predictions: list[str], references: list[str], units: Callable[[str], set[Hashable]]) -> float:
    """Micro-averaged F1 of the units (words, entities...) that ``units(text)`` finds in each
    answer: a predicted unit is right when its reference has it; precision and recall are
    counted over all units of the split (0 when no predicted unit is right; 1 when there is no
    unit to find and none was predicted, as for one example with nothing to find)."""
    _check(predictions, references)
    if not references:
        return math.nan
    correct = predicted = gold = 0
    for p, r in zip(predictions, references):
        ps, rs = units(p), units(r)
        correct, predicted, gold = correct + len(ps & rs), predicted + len(ps), gold + len(rs)
    if not predicted and not gold:
        return 1.0
    if not correct:
        return 0.0
    precision, recall = correct / predicted, correct / gold
    return 2 * precision * recall / (precision + recall)


#: the scorers ``file:PATH?score=NAME`` accepts, each ``(predictions, references) -> float``
SCORERS = {
    "rouge_l_f1": mean_rouge_l,
    "exact_match": exact_match,
    "accuracy": exact_match,
    "char_accuracy": char_accuracy,
    "bleu4": bleu4_zh,
}
