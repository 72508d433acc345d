"""The data stage: what a task is (:mod:`.tasks`), users' files and their record formats
(:mod:`.user_files`, :mod:`.user_formats`), conversations through a chat template
(:mod:`.chat`), tokenising and batches (:mod:`.batches`), a cell's task data prepared once and
cached (:mod:`.prepared`, :mod:`.cache`), the task scorers (:mod:`.scorers`), side corpora
(:mod:`.side_corpus`) and replay's general text (:mod:`.replay`)."""


def __getattr__(name: str):  # what ``suite.data`` held before it became this package (suite.api.MOVED)
    from ..api import forward

    return forward(__name__, name)
