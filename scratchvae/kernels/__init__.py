"""Kernels: the only place where array loops live, behind one contract.

Layer code never imports a backend module; it calls ``ops.NAME(...)``::

    from .kernels import ops as K
    y = K.bias_activation(K.gemm(x, W), b, "relu", 0.0)

``ops`` is rebound by :func:`set_backend`, so swapping the backend changes
every layer at once. A backend is a module that defines every name in
:data:`CONTRACT` with the signatures of ``kernels/reference.py`` (the NumPy
specification). The default backend comes from ``$SCRATCHVAE_BACKEND``, or
else is Numba when it imports and NumPy otherwise; it is chosen at the first
kernel call, so importing scratchvae never imports Numba.
"""
from __future__ import annotations

import importlib
import os

CONTRACT = (
    "gemm",
    "bias_activation",
    "activation_backward",
    "bernoulli_nll",
    "continuous_bernoulli_nll",
    "gaussian_nll",
    "gaussian_latent",
    "gaussian_latent_backward",
    "adam_update",
    "sgd_update",
)

BACKENDS = {"numpy": "scratchvae.kernels.reference", "numba": "scratchvae.kernels.jit"}


class _Ops:
    """The active backend's kernels as attributes. Until a backend is chosen,
    the first attribute lookup chooses the default (so ``import scratchvae``
    never imports Numba)."""

    def __getattr__(self, name):
        if name in CONTRACT and _active is None:
            set_backend(default_backend())
            return getattr(self, name)
        raise AttributeError(name)


ops = _Ops()
_active = None


def default_backend() -> str:
    """``$SCRATCHVAE_BACKEND`` if set, else ``numba`` when Numba imports, else ``numpy``."""
    name = os.environ.get("SCRATCHVAE_BACKEND")
    if name:
        return name
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numpy"
    return "numba"


def set_backend(name: str) -> None:
    """Route every kernel call to the backend ``name`` (one of :data:`BACKENDS`)."""
    global _active
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; available: {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ImportError as e:
        raise ImportError(f"kernel backend {name!r} needs a package that is missing ({e}); "
                          f"install it (pip install 'scratchvae[fast]') or use the numpy backend") from None
    missing = [k for k in CONTRACT if not callable(getattr(module, k, None))]
    if missing:
        raise ImportError(f"backend {name!r} does not implement {missing}")
    for k in CONTRACT:
        setattr(ops, k, getattr(module, k))
    _active = name


def warmup() -> float:
    """Compile or load every kernel of the active backend now; returns the seconds it took.

    With Numba the first call of each kernel otherwise pays its compilation
    (or its load from the on-disk cache) in the middle of the first step.
    """
    import time
    start = time.perf_counter()
    module = importlib.import_module(BACKENDS[get_backend()])
    if hasattr(module, "warmup"):
        module.warmup()
    return time.perf_counter() - start


def describe() -> dict:
    """The active backend and its settings (versions, threads, cache, GEMM)."""
    import numpy as np
    module = importlib.import_module(BACKENDS[get_backend()])
    info = module.describe() if hasattr(module, "describe") else {
        "backend": get_backend(), "gemm": "numpy.matmul (BLAS)"}
    info["numpy"] = np.__version__
    return info


def get_backend() -> str:
    """The name of the backend ``ops`` routes to (choosing the default if none was set)."""
    if _active is None:
        set_backend(default_backend())
    return _active
