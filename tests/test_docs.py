"""The docs match the code: docs/plugins.md's generated reference is current, every signature
the prose quotes is the code's, the README's task table gives the sizes `leitai list tasks`
prints, and the figures quoted for the conformance kit's models are their parameter counts."""
import re
import types

import pytest
from conftest import ROOT

from suite import docgen

GUIDE = ROOT / "docs" / "plugins.md"
README = ROOT / "README.md"
#: a code span that quotes a signature: ``name(self, ...)``, or ``name(...) -> type``
SIGNATURE = re.compile(r"(\w+)\((?:(?:self|cls)\b.*\)(?: -> .+)?|.*\) -> .+)")


def hand_written(text: str) -> str:
    """``text`` without its generated regions."""
    return re.sub(r"<!-- begin generated: .*?<!-- end generated: [\w-]+ -->", "", text, flags=re.S)


def test_the_guides_reference_is_generated_from_the_code():
    stale = docgen.stale_regions(GUIDE.read_text(encoding="utf-8"))
    assert not stale, f"docs/plugins.md is out of date ({', '.join(stale)}): run python -m suite.docgen"


def test_docgen_check_fails_on_a_stale_guide_and_regenerating_fixes_it(tmp_path, capsys):
    text = GUIDE.read_text(encoding="utf-8")
    stale = tmp_path / "plugins.md"
    stale.write_text(text.replace("| `eval_loss` |", "| `dev_loss` |"), encoding="utf-8")
    assert docgen.main(["--check", str(stale)]) == 1
    assert capsys.readouterr().err == f"{stale} is out of date (columns): run python -m suite.docgen\n"
    assert docgen.main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == text
    with pytest.raises(KeyError, match="the guide has no region 'api'"):
        docgen.update(text.replace("<!-- end generated: api -->", ""))


def test_every_exported_name_and_contract_column_is_in_the_reference():
    import suite
    from suite.report.frames import EXTRA_COLUMNS, RESULT_COLUMNS
    from suite.scoring import SCORERS

    text = GUIDE.read_text(encoding="utf-8")
    api, scorers, columns = (docgen.region(text, name) for name in ("api", "scorers", "columns"))
    for name in set(suite.__all__) - {"__version__"}:
        assert f"### `suite.{name}" in api, name
    listed = re.findall(r"^\| `(\w+)` \|", columns, flags=re.M)
    assert listed[: len(RESULT_COLUMNS) + len(EXTRA_COLUMNS)] == [*RESULT_COLUMNS, *EXTRA_COLUMNS]
    assert re.search(r"^\| `eval_loss` \| the \*\*dev loss\*\*", columns, flags=re.M)
    assert re.search(r"^\| `trainable_pct` \| 100 × trainable_params / total_params: a percentage", columns, flags=re.M)
    assert re.findall(r"^\| `(\w+)` \| `\w+\(predictions", scorers, flags=re.M) == list(SCORERS)


@pytest.mark.parametrize("doc", [GUIDE, README], ids=lambda p: p.name)
def test_every_quoted_signature_is_the_codes(doc):
    """A signature quoted in the prose (``apply(self, model: torch.nn.Module, params: dict) ->
    torch.nn.Module``, ``take(...) -> dict[...]``) must be exactly the code's."""
    known = docgen.known_signatures()
    quoted = [span.replace("\\|", "|") for span in re.findall(r"`([^`\n]+)`", hand_written(doc.read_text(encoding="utf-8")))]
    checked = 0
    for span in quoted:
        match = SIGNATURE.fullmatch(span)
        if not match:
            continue
        checked += 1
        name = match.group(1)
        assert name in known, f"{doc.name} quotes a signature of {name}, which the documented API does not have: {span}"
        assert span in known[name], f"{doc.name} quotes {span}; the code has {' or '.join(sorted(known[name]))}"
    assert checked >= (15 if doc == GUIDE else 0)


def test_the_readme_task_table_gives_the_sizes_leitai_list_prints(registry):
    """The full train/dev/test sizes of every built-in task, as `leitai list tasks` computes and
    caches them (the test session's cache: test_plugins' `leitai list tasks` fills the same)."""
    from suite.cli import cached_split_sizes

    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Tasks\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w-]+)` \|.*\| (\d+/\d+/\d+) \|$", section, flags=re.M))
    built_in = {n for n in registry.tasks if registry.plugins[registry.origin[("tasks", n)]].source.startswith("leitai ")}
    assert set(rows) == built_in
    for name, sizes in rows.items():
        default, full = cached_split_sizes(registry.tasks[name])
        assert sizes == "/".join(str(full[s]) for s in ("train", "dev", "test")), name
        # "the CPU size, 512 training, 64 dev and 64 test examples per task (256 test for zh-sentiment)"
        assert default == {"train": 512, "dev": 64, "test": 256 if name == "zh-sentiment" else 64}, name
    assert ("the CPU size, 512 training, 64 dev and 64 test examples per task (256 test examples for zh-sentiment"
            in " ".join(section.split()))


def test_the_kits_model_sizes_are_quoted_right():
    from suite.measure import count_parameters
    from suite.testing import ARCHITECTURES, tiny_model

    counts = {kind: count_parameters(tiny_model(kind)) for kind in ARCHITECTURES}
    guide = " ".join(GUIDE.read_text(encoding="utf-8").split())
    assert (f"{counts['llama']:,} parameters for `llama`, {counts['qwen2']:,} for `qwen2`, {counts['gpt2']:,} for "
            f"`gpt2`") in guide
    low, high = (round(n, -3) for n in (min(counts.values()), max(counts.values())))
    readme = " ".join(README.read_text(encoding="utf-8").split())
    assert f"GPT-2 models ({low:,} to {high:,} parameters)" in readme


def test_the_guides_task_example_splits_as_documented():
    """The guide's antonym task, run as written: assign_splits gives it new ids, take cuts it to
    the sizes asked for, and the plugin registers."""
    from suite.plugins import load_registry

    text = GUIDE.read_text(encoding="utf-8")
    code = re.search(r"^```python\n(from suite import Example, Task, hookimpl\n.*?)^```$", text, flags=re.S | re.M).group(1)
    module = types.ModuleType("guide_antonyms")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    task = load_registry(extra=[module]).get("tasks", "zh-antonym")
    full = task.splits(None)
    assert sum(map(len, full.values())) == 60 and all(full.values())
    assert all(re.fullmatch(r"[0-9a-f]{12}", e.id) for split in full.values() for e in split)
    assert task.split_sizes(task.default_sizes) == task.default_sizes
    assert task.splits(task.default_sizes)["train"] == full["train"][:16]
    # both directions of a pair land in the same split
    where = {(e.input, e.output): split for split, examples in full.items() for e in examples}
    assert all(where[(a, b)] == where[(b, a)] for a, b in where)
    assert task.score(["小", "矮"], ["小", "高"]) == 0.5


def test_the_readme_methods_table_is_generated_from_the_plugins():
    text = README.read_text(encoding="utf-8")
    assert docgen.stale_regions(text, docgen.FILES[docgen.README]) == [], "README.md is out of date: run python -m suite.docgen"
    table = docgen.region(text, "methods")
    for name in ("lora", "dora", "lst", "full", "bitfit"):
        assert f"| `{name}` |" in table
