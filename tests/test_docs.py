"""The docs match the code: the generated reference regions of docs/ are current, every
signature the prose quotes is the code's, the task table gives the sizes `leitai list tasks`
prints, the figures quoted for the conformance kit's models are their parameter counts, and the
README stays a short front page whose reference table is the docs' own."""
import re
import types

import pytest
from conftest import ROOT

from suite.cli import docgen

DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
#: a code span that quotes a signature: ``name(self, ...)``, or ``name(...) -> type``
SIGNATURE = re.compile(r"(\w+)\((?:(?:self|cls)\b.*\)(?: -> .+)?|.*\) -> .+)")


def read(path) -> str:
    return path.read_text(encoding="utf-8")


def flat(path) -> str:
    """``path``'s text with every run of whitespace as one space (prose wraps anywhere)."""
    return " ".join(read(path).split())


def hand_written(text: str) -> str:
    """``text`` without its generated regions."""
    return re.sub(r"<!-- begin generated: .*?<!-- end generated: [\w-]+ -->", "", text, flags=re.S)


def test_the_docs_reference_is_generated_from_the_code():
    assert set(docgen.REGIONS) == {name for regions in docgen.FILES.values() for name in regions}
    for page, regions in docgen.FILES.items():
        stale = docgen.stale_regions(read(page), regions)
        assert not stale, f"{page.relative_to(ROOT)} is out of date ({', '.join(stale)}): run python -m suite.cli.docgen"


def test_docgen_check_fails_on_a_stale_page_and_regenerating_fixes_it(tmp_path, capsys):
    text = read(docgen.page_of("columns"))
    stale = tmp_path / "records.md"
    stale.write_text(text.replace("| `eval_loss` |", "| `dev_loss` |"), encoding="utf-8")
    assert docgen.main(["--check", str(stale)]) == 1
    assert capsys.readouterr().err == f"{stale} is out of date (columns): run python -m suite.cli.docgen\n"
    assert docgen.main([str(stale)]) == 0
    assert read(stale) == text
    api = read(docgen.page_of("api"))
    with pytest.raises(KeyError, match="the page has no region 'api'"):
        docgen.update(api.replace("<!-- end generated: api -->", ""), {"api": docgen.api_region})


def test_every_exported_name_and_contract_column_is_in_the_reference():
    import suite
    from suite.data.scorers import SCORERS
    from suite.report.frames import EXTRA_COLUMNS, RESULT_COLUMNS

    api, scorers, columns = (docgen.region(read(docgen.page_of(name)), name) for name in ("api", "scorers", "columns"))
    for name in set(suite.__all__) - {"__version__"}:
        assert f"### `suite.{name}" in api, name
    listed = re.findall(r"^\| `(\w+)` \|", columns, flags=re.M)
    assert listed[: len(RESULT_COLUMNS) + len(EXTRA_COLUMNS)] == [*RESULT_COLUMNS, *EXTRA_COLUMNS]
    assert re.search(r"^\| `eval_loss` \| the \*\*dev loss\*\*", columns, flags=re.M)
    assert re.search(r"^\| `trainable_pct` \| 100 × trainable_params / total_params: a percentage", columns, flags=re.M)
    assert re.findall(r"^\| `(\w+)` \| `\w+\(predictions", scorers, flags=re.M) == list(SCORERS)


def test_every_quoted_signature_is_the_codes():
    """A signature quoted in the prose of any page (``apply(self, model: torch.nn.Module, params:
    dict) -> torch.nn.Module``, ``take(...) -> dict[...]``) must be exactly the code's."""
    known = docgen.known_signatures()
    checked = {}
    for doc in [README, *PAGES]:
        spans = re.findall(r"`([^`\n]+)`", hand_written(read(doc)))
        for span in (s.replace("\\|", "|") for s in spans):
            match = SIGNATURE.fullmatch(span)
            if not match:
                continue
            checked[doc] = checked.get(doc, 0) + 1
            name = match.group(1)
            where = doc.relative_to(ROOT)
            assert name in known, f"{where} quotes a signature of {name}, which the documented API does not have: {span}"
            assert span in known[name], f"{where} quotes {span}; the code has {' or '.join(sorted(known[name]))}"
    assert sum(n for doc, n in checked.items() if doc.parent.name == "plugins") >= 15


def test_the_task_table_gives_the_sizes_leitai_list_prints(registry):
    """The full train/dev/test sizes of every built-in task, as `leitai list tasks` computes and
    caches them (the test session's cache: test_plugins' `leitai list tasks` fills the same)."""
    from suite.cli.app import cached_split_sizes

    section = read(DOCS / "tasks.md")
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
    from suite.measures.resources import count_parameters
    from suite.testing import ARCHITECTURES, tiny_model

    counts = {kind: count_parameters(tiny_model(kind)) for kind in ARCHITECTURES}
    kit = flat(DOCS / "plugins" / "kit.md")
    assert (f"{counts['llama']:,} parameters for `llama`, {counts['qwen2']:,} for `qwen2`, {counts['gpt2']:,} for "
            f"`gpt2`") in kit
    low, high = (round(n, -3) for n in (min(counts.values()), max(counts.values())))
    assert f"GPT-2 models ({low:,} to {high:,} parameters)" in flat(DOCS / "methods.md")


def test_the_guides_task_example_splits_as_documented():
    """The guide's antonym task, run as written: assign_splits gives it new ids, take cuts it to
    the sizes asked for, and the plugin registers."""
    from suite.plugins import load_registry

    text = read(DOCS / "plugins" / "tasks.md")
    code = re.search(r"^```python\n(from suite import Example, Task, hookimpl\n.*?)^```$", text, flags=re.S | re.M).group(1)
    module = types.ModuleType("guide_antonyms")
    exec(compile(code, "docs/plugins/tasks.md", "exec"), module.__dict__)
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


def test_the_methods_table_is_generated_from_the_plugins():
    table = docgen.region(read(DOCS / "methods.md"), "methods")
    for name in ("lora", "dora", "lst", "full", "bitfit"):
        assert f"| `{name}` |" in table


def _block(text: str, opening: str) -> str:
    """The fenced block or table of ``text`` that starts at the line ``opening``."""
    start = text.index(opening)
    end = text.index("\n\n", start)
    return text[start:end]


def test_the_readme_is_a_short_front_page_that_quotes_the_docs():
    """Under 200 lines; its set-up commands, the reference table and the verdict are the docs'
    own, word for word (one home for each figure: the docs; the README quotes); every link
    into the repository resolves."""
    text = read(README)
    assert len(text.splitlines()) < 200
    setup = _block(text, "```bash\n# the default shootout")
    assert setup == _block(read(DOCS / "getting-started.md"), "```bash\n# the default shootout")
    assert ".venv/bin/pip install torch==2.13.0 -e . && .venv/bin/leitai run" in setup
    reference = read(DOCS / "reference-run.md")
    for opening in ("| method | accuracy | choice accuracy", "- Full fine-tuning is best"):
        assert _block(text, opening) == _block(reference, opening)
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert len(local) > 10 and all((ROOT / link).exists() for link in local), [x for x in local if not (ROOT / x).exists()]
    assert (DOCS / "images" / "report.png").stat().st_size > 10_000


def test_the_fused_map_example_acts_on_the_value_rows_only():
    """docs/plugins/architectures.md's "Part of a fused map", run as written: on separate,
    fused-QKV (GPT-2, Conv1D) and multi-query fused (Falcon) layouts the untrained update leaves
    the logits alone, and a trained one changes exactly the value rows of the map's output."""
    import torch

    from suite.models import architecture
    from suite.testing import tiny_model

    text = read(DOCS / "plugins" / "architectures.md")
    code = re.search(r"^```python\n(import torch\n.*?def add_value_deltas.*?)^```$", text, flags=re.S | re.M).group(1)
    module = types.ModuleType("guide_value_deltas")
    exec(compile(code, "docs/plugins/architectures.md", "exec"), module.__dict__)
    for kind in ("llama", "gpt2", "falcon"):
        model = tiny_model(kind).eval()
        ids = torch.randint(0, 100, (1, 6))
        before = model(input_ids=ids).logits
        arch = architecture.find(model)
        maps, layer = arch.maps[0], arch.layers[0]
        module.add_value_deltas(model)
        assert torch.allclose(model(input_ids=ids).logits, before), kind
        name = maps.qkv or maps.kv or maps.v
        fused = layer.get_submodule(name)
        x = torch.randn(1, 3, architecture.linear_shape(fused)[0])
        plain = fused(x)
        fused.value_delta.b.weight.data.normal_()
        changed = (fused(x) - plain).abs().amax(dim=(0, 1)) > 0
        assert changed.nonzero().flatten().tolist() == sorted(fused.value_delta.rows.tolist()), kind
