"""What ``scratchvae`` says about itself: the data sets it finds, its help and its version."""
from __future__ import annotations

import argparse

import pytest
from cli_helpers import run, subparsers

import scratchvae
from scratchvae.data import datasets as ds
from scratchvae.run import TrainConfig, cli

pytestmark = pytest.mark.usefixtures("no_debug")


def test_datasets_lists_every_name(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHVAE_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ds, "SYSTEM_DIR", tmp_path / "no-system-datasets")
    kmnist = tmp_path / "kmnist"
    kmnist.mkdir()
    for name, _, _ in ds.IDX_FILES:               # lookup only checks the files are there
        (kmnist / name).write_bytes(b"")
    code, out, err = run(capsys, "datasets")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == set(ds.DATASET_NAMES)
    assert lines["kmnist"].endswith(str(kmnist))
    assert "not found" in lines["mnist"] and "scratchvae download mnist" in lines["mnist"]
    assert "built in" in lines["synthetic-digits"]


def test_top_level_help_mentions_every_option_and_command(capsys):
    parser = cli.build_parser()
    code, out, err = run(capsys, "--help")
    assert code == 0 and err == ""
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in out, opt
    commands = subparsers(parser)
    assert set(commands) == set(cli.COMMANDS)
    for name in commands:
        assert name in out, name


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_command_help_mentions_every_option(capsys, command):
    sub = subparsers(cli.build_parser())[command]
    code, out, err = run(capsys, command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: scratchvae {command}")
    seen = 0
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in out, opt
            seen += 1
        if not action.option_strings:                      # positional
            assert (action.metavar or action.dest) in out
        if action.help and action.help is not argparse.SUPPRESS and action.dest != "help":
            assert action.help.split()[0] in out
    assert seen >= 2


def test_every_help_names_every_environment_variable_the_library_reads(capsys):
    """The variables are found in the source, so a new one that --help does not explain fails here."""
    import re
    from pathlib import Path
    source = "".join(p.read_text() for p in Path(scratchvae.__file__).parent.rglob("*.py"))
    names = set(re.findall(r"SCRATCHVAE_[A-Z_]*[A-Z]", source))
    assert {"SCRATCHVAE_BACKEND", "SCRATCHVAE_GEMM", "SCRATCHVAE_DATA"} <= names
    for command in ([], *([name] for name in cli.COMMANDS)):
        code, out, err = run(capsys, *command, "--help")
        assert code == 0 and err == ""
        flat = " ".join(out.split())
        for name in names:
            assert name in flat, (command, name)


def test_train_help_covers_every_run_option():
    """Every TrainConfig field the CLI stores is reachable from the command line."""
    sub = subparsers(cli.build_parser())["train"]
    dests = {a.dest for a in sub._actions}
    assert set(cli.RUN_OPTIONS) <= dests
    fields = set(TrainConfig.__dataclass_fields__) - {"epochs", "data_dir"}
    assert set(cli.RUN_OPTIONS) == fields


def test_no_command_prints_help_and_exits_0(capsys):
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    assert out.startswith("usage: scratchvae")
    for name in cli.COMMANDS:
        assert name in out


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"scratchvae {scratchvae.__version__}"
