"""``zh-idiom``: explain a Chinese idiom (成语) in plain words.

The idioms and their explanations are the dictionary that the ``chengyu-cli`` package ships
(30,895 entries: word, pinyin, explanation, source, example). Each idiom's split depends only
on the idiom itself. The dictionary lost the opening quotation marks of its explanations
(``亦作各霸一方”``); the stray closing marks are removed.

Scored with character ROUGE-L F1 (partial credit for a partly right explanation); corpus
BLEU-4 with sacrebleu's ``zh`` tokenizer is recorded next to it.
"""
from __future__ import annotations

from functools import cached_property

from suite import Example, Task, hookimpl
from suite.data.scorers import bleu4_zh, mean_rouge_l
from suite.data.tasks import assign_splits, take_short


class ZhIdiom(Task):
    name = "zh-idiom"
    description = "解释成语的意思 → explanation (chengyu-cli's idiom dictionary)"
    source = "chengyu-cli data/chengyu.json"
    score_name = "rouge_l_f1"
    max_new_tokens = 96  # the longest explanation has 74 characters
    version = "1"
    instruction = "解释这个成语的意思。"
    default_sizes = {"train": 512, "dev": 64, "test": 64}
    max_chars = 20

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        from plugins.tasks.corpora import chengyu_entries

        out = []
        for entry in chengyu_entries():
            word = entry["word"].strip()
            explanation = entry["explanation"].replace("”", "").strip()
            if word and explanation and explanation != "无":
                out.append(Example("", self.instruction, word, explanation))
        return assign_splits(out, key=lambda e: e.input)

    def splits(self, sizes=None):
        return take_short(self._splits, sizes, self.max_chars, lambda e: e.output)

    def score(self, predictions, references):
        return mean_rouge_l(predictions, references)

    def metrics(self, predictions, references):
        return {"bleu4": bleu4_zh(predictions, references)}


@hookimpl
def register_tasks(register):
    register(ZhIdiom())
