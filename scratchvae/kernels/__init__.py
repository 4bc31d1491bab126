"""Kernels: the only place where array loops live, behind one contract.

Layer code never imports a backend module; it calls ``ops.NAME(...)``::

    from .kernels import ops as K
    y = K.bias_activation(K.gemm(x, W), b, "relu", 0.0)

``ops`` is rebound by :func:`set_backend`, so swapping the backend changes
every layer at once. A backend is a module that defines every name in
:data:`CONTRACT` with the signatures of ``kernels/reference.py`` (the NumPy
specification). The default backend comes from ``$SCRATCHVAE_BACKEND``, or
NumPy when it is unset.
"""
from __future__ import annotations

import importlib
import os
import types

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

BACKENDS = {"numpy": "scratchvae.kernels.reference"}

ops = types.SimpleNamespace()
_active = None


def set_backend(name: str) -> None:
    """Route every kernel call to the backend ``name`` (one of :data:`BACKENDS`)."""
    global _active
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; available: {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[name])
    missing = [k for k in CONTRACT if not callable(getattr(module, k, None))]
    if missing:
        raise ImportError(f"backend {name!r} does not implement {missing}")
    for k in CONTRACT:
        setattr(ops, k, getattr(module, k))
    _active = name


def get_backend() -> str:
    """The name of the backend ``ops`` currently routes to."""
    return _active


set_backend(os.environ.get("SCRATCHVAE_BACKEND", "numpy"))
