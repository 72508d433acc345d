"""Test plugin: kill -9 a cell's main process as training reaches step $CRASH_AT, once per run
(a file ``crashed`` in its run directory says it happened)."""
import os
import signal

import suite.cell.train as train
from suite import progress

_beat = train.beat


def _crashing_beat(phase, step=None, total=None):
    if phase == "training" and step == int(os.environ.get("CRASH_AT", "0")) and progress._path is not None:
        marker = progress._path.parent / "crashed"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    _beat(phase, step, total)


train.beat = _crashing_beat
