import contextlib
import importlib
import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMALL, bars

from scratchvae import kernels
from scratchvae.data.datasets import Dataset
from scratchvae.run import cli

HAS_NUMBA = importlib.util.find_spec("numba") is not None


def builtin_backend(name):
    """The module of the built-in backend ``name``; the test is skipped when Numba,
    the one package a built-in backend can lack, is not installed."""
    try:
        return importlib.import_module(kernels.BUILTIN_BACKENDS[name])
    except ImportError as e:
        if HAS_NUMBA:
            raise
        pytest.skip(f"the {name} backend needs Numba, which is not installed ({e})")


@pytest.fixture(params=list(kernels.BUILTIN_BACKENDS))
def backend(request, monkeypatch):
    """Run the test once per built-in kernel backend (subprocesses follow through the environment).

    Test modules that exercise kernels use it (``pytestmark = pytest.mark.usefixtures("backend")``);
    the others (command line, files, data, pictures) run once on the default backend.
    """
    builtin_backend(request.param)
    before = kernels.get_backend()
    monkeypatch.setenv("SCRATCHVAE_BACKEND", request.param)
    kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(before)


def bars_and_blocks(rng, n):
    """n 6x6 images from four prototypes (a bar, a row, two blocks) with 5% flipped pixels."""
    protos = np.zeros((4, 6, 6))
    protos[0, :, 1] = protos[1, 2, :] = 1
    protos[2, :3, :3] = protos[3, 3:, 3:] = 1
    labels = rng.integers(0, 4, n)
    x = protos[labels].reshape(n, 36)
    x = np.abs(x - (rng.random(x.shape) < 0.05))
    return np.clip(x * 0.9 + 0.05, 0, 1).astype(np.float32), labels.astype(np.int64)


@pytest.fixture
def tiny_data():
    """A small labelled data set of 6x6 grey images: 600 train, 200 test."""
    rng = np.random.default_rng(0)
    x_tr, y_tr = bars_and_blocks(rng, 600)
    x_te, y_te = bars_and_blocks(rng, 200)
    return Dataset("tiny", x_tr, y_tr, x_te, y_te, (6, 6))


# The command's tests (tests/test_cli*.py and others): its environment, tiny data and one shared run.

@pytest.fixture
def no_debug(monkeypatch):
    """SCRATCHVAE_DEBUG would turn every clean error into a traceback.

    The modules that test the command's errors use it for all their tests
    (``pytestmark = pytest.mark.usefixtures("no_debug")``).
    """
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
