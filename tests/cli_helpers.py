"""Shared by the tests of the ``scratchvae`` command (tests/test_cli*.py): tiny data, a way to run
the command in this process, checks of its one-line errors and its pictures, and the fixtures of one
shared training run.

Every run here trains a 64-16-2 model on a few hundred 8x8 images for one
or two epochs, so each takes well under a second; only the subprocess tests
pay for a fresh interpreter. A test module imports the fixtures it uses by
name, ``no_debug`` always (it is autouse).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchvae.run import cli

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURES = ("reconstructions.png", "samples.png", "manifold.png", "latent.png", "curves.png")
SMALL = ["--hidden", "16", "--latent", "2", "--batch-size", "32"]


def bars(n: int, seed: int = 0) -> np.ndarray:
    """n 8x8 grey images, each a horizontal or vertical bar plus a little noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 8, 8), np.float32)
    pos = rng.integers(0, 8, n)
    vertical = rng.random(n) < 0.5
    for i in range(n):
        if vertical[i]:
            x[i, :, pos[i]] = 1
        else:
            x[i, pos[i], :] = 1
    x = 0.9 * x + 0.1 * rng.random(x.shape, dtype=np.float32)
    return np.clip(x, 0, 1)


def run(capsys, *argv):
    """``scratchvae argv`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:          # argparse: --help, --version, bad options
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code, err, *needles):
    """A non-zero exit and exactly one stderr line, ``scratchvae: error: ...``, holding ``needles``."""
    assert code not in (0, None), f"expected a failure, got exit code {code}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("scratchvae: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_png(path: Path):
    """``path`` holds a PNG image: its signature, and more than a header."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 200


def read_csv(path: Path):
    """The rows of a CSV file, each a dict by column."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env(**extra):
    """The environment of a fresh interpreter: this checkout's scratchvae, no SCRATCHVAE_DEBUG, ``extra``."""
    env = dict(os.environ)
    env.pop("SCRATCHVAE_DEBUG", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_python(code: str, cwd, **env):
    """``python -c code`` in ``cwd``, its output captured as text."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=subprocess_env(**env))


def subparsers(parser):
    """The parsers of ``parser``'s subcommands, by name."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    """SCRATCHVAE_DEBUG would turn every clean error into a traceback."""
    monkeypatch.delenv("SCRATCHVAE_DEBUG", raising=False)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """200 images of 8x8 (180 train, 20 held out by the CLI) in an .npz under key x."""
    path = tmp_path_factory.mktemp("data") / "bars.npz"
    np.savez(path, x=bars(200))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    """One CLI training run (one epoch, with pictures), shared read-only by many tests.

    Returns (run directory, exit code, stdout, stderr).
    """
    out_dir = tmp_path_factory.mktemp("trained") / "run"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["train", "--dataset", str(data_file), *SMALL, "--epochs", "1",
                         "--out", str(out_dir)])
    return out_dir, code, out.getvalue(), err.getvalue()


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A private copy of the shared run, for tests that change it."""
    dst = tmp_path / "run"
    shutil.copytree(trained[0], dst)
    return dst
