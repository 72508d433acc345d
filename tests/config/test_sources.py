"""Settings: defaults, then TOML, then the command line; per-method overrides."""
import pytest

from suite.config.sources import build_config, parse_set, parse_value
from suite.errors import UsageError


def test_values_parse_like_toml():
    assert parse_value("16") == 16 and parse_value("1e-4") == 1e-4 and parse_value("true") is True
    assert parse_value('["q_proj", "v_proj"]') == ["q_proj", "v_proj"]
    assert parse_value("q_proj,v_proj") == "q_proj,v_proj"
    assert parse_set(["lora.r=16", "lora.lr=5e-4", "prefix-tuning.virtual_tokens=5"]) == {
        "lora": {"r": 16, "lr": 5e-4}, "prefix-tuning": {"virtual_tokens": 5}}


def test_command_line_overrides_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('methods = ["lora", "full"]\nseeds = 3\nmax_steps = 40\n[method.lora]\nr = 8\nlr = 1e-3\n')
    cfg = build_config({"max_steps": 7, "method_overrides": {"lora": {"r": 2}}}, str(path))
    assert cfg.methods == ["lora", "full"] and cfg.seeds == [0, 1, 2] and cfg.max_steps == 7
    assert cfg.method_overrides == {"lora": {"r": 2, "lr": 1e-3}}
    assert build_config({"seeds": "4,9"}).seeds == [4, 9]


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("max_stepz = 3\n")
    with pytest.raises(UsageError, match="c.toml: unknown setting"):
        build_config({}, str(path))
    path.write_text("max_steps = \n")
    with pytest.raises(UsageError, match="c.toml: not valid TOML"):
        build_config({}, str(path))


def test_gradient_checkpointing_reaches_every_cell(tmp_path, registry):
    """``--gradient-checkpointing`` (or ``gradient_checkpointing = true`` in TOML) is a setting of
    every planned cell; off by default."""
    from suite.cli.app import _parser
    from suite.shootout.runner import cells_of

    args = vars(_parser().parse_args(["run", "--gradient-checkpointing", "--methods", "lora,full"]))
    assert args["gradient_checkpointing"] is True
    cfg = build_config({"methods": "lora,full", "gradient_checkpointing": True}).fill_defaults(registry)
    assert [c.gradient_checkpointing for c in cells_of(cfg, registry)] == [True, True]
    path = tmp_path / "c.toml"
    path.write_text("gradient_checkpointing = true\n")
    assert build_config({}, str(path)).gradient_checkpointing is True
    cfg = build_config({"methods": "lora"}).fill_defaults(registry)
    assert [c.gradient_checkpointing for c in cells_of(cfg, registry)] == [False]


def test_every_setting_is_one_definition_with_a_flag_that_reaches_the_cell(registry):
    """A setting is one field of suite.config.settings: it has a run flag with help, a TOML name, and a
    field of every planned cell (so of its record)."""
    from dataclasses import fields

    from suite.cell.run import Cell
    from suite.cli.app import _parser
    from suite.config.settings import RunSettings, ShootoutConfig
    from suite.shootout.runner import cells_of

    run = next(a for a in _parser()._actions if a.dest == "command").choices["run"]
    flags = {a.dest: a for a in run._actions}
    for f in fields(ShootoutConfig):
        if f.metadata["flag"]:
            assert f.name in flags and flags[f.name].help, f.name
    assert {f.name for f in fields(RunSettings)} <= {f.name for f in fields(Cell)}
    cfg = build_config({"methods": "lora", "warmup": 0.25, "log_every": 3}).fill_defaults(registry)
    (cell,) = cells_of(cfg, registry)
    assert (cell.warmup, cell.log_every, cell.max_steps) == (0.25, 3, 150)


def test_executor_options_come_from_the_executor(tmp_path, registry):
    """--workers belongs to the local executor, --ray-address to Ray's; a TOML file sets them by
    the same names; one executor's option given to another is refused in one line."""
    from suite.shootout.executors import make_executor, option_owners

    owners = option_owners(registry)
    assert owners["workers"] == "local" and owners["ray_address"] == "ray"
    path = tmp_path / "c.toml"
    path.write_text("workers = 2\n")
    cfg = build_config({}, str(path), frozenset(owners)).fill_defaults(registry)
    assert cfg.executor == "local" and make_executor(cfg, registry).workers == 2
    cfg = build_config({"executor_options": {"ray_address": "x:1"}}, None, frozenset(owners)).fill_defaults(registry)
    with pytest.raises(UsageError, match="--ray-address is an option of the ray executor, not of local"):
        make_executor(cfg, registry)


def test_durations_read_from_the_command_line_and_toml(tmp_path):
    """``--cell-timeout`` and ``--stall-timeout``: 90s, 20m, 2h, a number of seconds, or none."""
    from suite.config.settings import parse_duration

    assert parse_duration("none") == parse_duration("0") == 0.0
    assert parse_duration("20s") == parse_duration("20") == 20.0 and parse_duration(" 1.5m ") == 90.0
    assert parse_duration("2h", "--cell-timeout") == 7200.0
    config = build_config({})
    assert config.cell_timeout == "none" and parse_duration(config.cell_timeout) == 0.0  # no limit by default
    path = tmp_path / "c.toml"
    path.write_text("cell_timeout = 45\nstall_timeout = '10m'\n")
    config = build_config({}, str(path))
    assert (config.cell_timeout, config.stall_timeout) == ("45", "10m")
    assert build_config({"cell_timeout": "6h"}, str(path)).cell_timeout == "6h"


@pytest.mark.parametrize("flag", ["--cell-timeout", "--stall-timeout"])
def test_a_duration_that_cannot_be_read_stops_before_anything_runs(flag, tmp_path, capsys):
    from suite.cli.app import main

    out = tmp_path / "o"
    assert main(["run", "--methods", "lora", flag, "2 weeks", "--out", str(out), "-q"]) == 2
    assert capsys.readouterr().err == (f"leitai: error: {flag}: cannot read '2 weeks' as a duration (e.g. 90s, 20m, "
                                       "2h, or none)\n")
    assert not out.exists()
