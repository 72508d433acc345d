"""``zh-news-side``: the side corpus forgetting is measured on.

A fixed 3% of the People's Daily 1998 sentences (by a salted hash of the normalised text,
:func:`plugins.corpora.side_sentences`) that every People's Daily task leaves out and that
tiny-zh's pretraining leaves out too, so no method ever trains on them and the base model
never saw them. Selecting them means parsing the whole corpus (seconds), so the selection is
kept in the task data cache (:func:`suite.taskdata.cache_dir`) and every cell after the first
reads it from there.
"""
import json

from suite import hookimpl
from suite.forgetting import SideCorpus

#: bump when plugins.corpora.side_sentences selects differently
VERSION = "1"


class ZhNewsSide(SideCorpus):
    name = "zh-news-side"
    default = True
    description = "held-out People's Daily 1998 sentences (no task or pretraining uses them)"

    def texts(self, count):
        from plugins.corpora import SIDE_PCT, side_sentences
        from suite.records import write_json_atomic
        from suite.taskdata import cache_dir

        root = cache_dir()
        path = root / f"side-{self.name}-v{VERSION}-{SIDE_PCT}.json" if root else None
        try:
            sentences = json.loads(path.read_text(encoding="utf-8"))
        except (AttributeError, OSError, ValueError):  # no cache, not yet written, or unreadable
            sentences = list(side_sentences())
            if path is not None:
                try:
                    write_json_atomic(path, sentences)
                except OSError:
                    pass  # a read-only cache only makes the next cell slower
        return sentences[:count]


@hookimpl
def register_side_corpora(register):
    register(ZhNewsSide())
