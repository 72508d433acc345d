"""Loads the CSV files a task config of this folder names, from this folder (the harness's
``custom_dataset``: a task config's relative ``data_files`` would be read from the working
directory). For a local copy of C-Eval or CMMLU, a task config names its files by absolute path
instead, with ``dataset_path: csv`` (docs/after-the-shootout.md)."""
from pathlib import Path

HERE = Path(__file__).parent


def load(data_files: dict, **_):
    import datasets

    return datasets.load_dataset("csv", data_files={split: str(HERE / name) for split, name in data_files.items()})
