"""The source files a process imported, and whether they changed on disk (suite/code_files.py)."""
import importlib
import os
import sys
import time

from suite import code_files


def test_a_module_from_outside_the_installation_is_watched_until_it_changes(tmp_path, monkeypatch):
    """A module imported from a directory on ``sys.path`` (a plugin on PYTHONPATH): its file is in
    the snapshot, unchanged while it is left alone, changed once it is rewritten, removed, or
    touched with the same bytes (its modification time is the state, not its content)."""
    (tmp_path / "watched_sample.py").write_text("VALUE = 1\n")
    past = time.time_ns() - 10**9  # written before this process began importing leitai: as if so
    os.utime(tmp_path / "watched_sample.py", ns=(past, past))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(code_files, "STARTED_NS", time.time_ns())
    importlib.import_module("watched_sample")
    try:
        path = str(tmp_path / "watched_sample.py")
        taken = code_files.snapshot()
        assert path in taken and code_files.__file__ in taken  # leitai's own files too
        assert not any("site-packages" in p for p in taken)  # not the libraries'
        assert code_files.changed(taken) == []
        os.utime(path)  # same bytes, a new modification time
        assert code_files.changed(taken) == [path]
        taken = code_files.snapshot()
        assert code_files.changed(taken) == [path]  # modified after this process began importing leitai
        monkeypatch.setattr(code_files, "STARTED_NS", time.time_ns())
        assert code_files.changed(taken) == []
        (tmp_path / "watched_sample.py").write_text("VALUE = 22\n")
        assert code_files.changed(taken) == [path]
        os.remove(path)
        assert code_files.changed(taken) == [path]
        assert path not in code_files.snapshot()  # a file that is gone is not kept
    finally:
        sys.modules.pop("watched_sample", None)


def test_a_plugin_package_is_watched_wherever_it_is_installed():
    """A module in site-packages is watched only as part of a package named in ``tops`` (a
    loaded plugin's)."""
    import pluggy  # a library in site-packages, standing in for an installed plugin

    assert pluggy.__file__ not in code_files.watched()
    assert pluggy.__file__ in code_files.watched(("pluggy",))


def test_changed_files_are_named_briefly(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    here = str(tmp_path)
    assert code_files.describe([f"{here}/suite/a.py"]) == "suite/a.py"
    assert code_files.describe([f"{here}/a.py", "/elsewhere/b.py"]) == "a.py and /elsewhere/b.py"
    assert code_files.describe([f"{here}/a.py", "b.py", "c.py", "d.py"]) == "a.py, b.py, c.py and 1 more"
    assert code_files.describe([f"{here}/a.py", "b.py"], count=30) == "a.py, b.py and 28 more"
