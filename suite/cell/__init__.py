"""The cell stage, one cell (method x task x seed) in a process of its own: what a cell is
(:mod:`.spec`, its ``cell.json``), the run read top to bottom (:mod:`.run`, ``python -m
suite.cell SPEC``), the training loop (:mod:`.train`), its checkpoints (:mod:`.checkpoint`), a
cell sharded over its processes (:mod:`.sharding`), the versions and machine it ran on
(:mod:`.provenance`) and the record it writes (:mod:`.records`)."""


def __getattr__(name: str):  # what ``suite.cell`` held before it became this package (suite.api.MOVED)
    from ..api import forward

    return forward(__name__, name)
