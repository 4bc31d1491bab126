import importlib
import importlib.util

import numpy as np
import pytest

from scratchvae import kernels
from scratchvae.data.datasets import Dataset

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
