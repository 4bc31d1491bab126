"""Shared by the tests of the ``scratchvae`` command (tests/test_cli*.py and others): tiny data, a way
to run the command in this process, checks of its one-line errors and its pictures.

Every run here trains a 64-16-2 model on a few hundred 8x8 images for one
or two epochs, so each takes well under a second; only the subprocess tests
pay for a fresh interpreter. The fixtures (``no_debug``, ``data_file``, ``trained``,
``run_copy``) are in tests/conftest.py; a module of the command's tests turns
``no_debug`` on for all its tests with ``pytestmark = pytest.mark.usefixtures("no_debug")``.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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
