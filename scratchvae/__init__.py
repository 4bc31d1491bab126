"""scratchvae: a Variational Autoencoder from scratch.

NumPy arrays, hand-written layers with manual backprop, an analytic KL,
the reparameterization trick and a hand-written Adam; every gradient is
checked against finite differences (see :mod:`scratchvae.gradcheck`).

    import numpy as np, scratchvae as sv
    model = sv.VAE(input_dim=784, hidden=[400], latent_dim=20)
    losses, grads = model.loss_and_grads(x, rng=np.random.default_rng(0))
    sv.Adam(model.params, lr=1e-3).step(grads)

The package, bottom up: ``kernels`` (the contract and its backends),
``model`` (layers, latent layer, likelihoods, VAE, M2), ``inference``
(evaluation, completion), ``data``, ``run`` (run object, training loop,
checkpoints, pictures, command line) and, apart, ``lessons``.
Numba and Matplotlib are never imported here: the library runs on NumPy alone.
"""
from ._version import __version__
from .gradcheck import check_op, gradcheck
from .kernels import (backends, check_backend, describe, get_backend, register_backend, set_backend,
                      warmup)
from .model import M2, VAE
from .optim import SGD, Adam

# the run layer (data sets, checkpoints, the roofline report) loads when first used,
# so that importing the model needs NumPy and the model's own modules alone
_RUN_LAYER = {"load": ("run.checkpoint", "load"), "profile": ("run.roofline", "profile")}


def __getattr__(name):
    if name in _RUN_LAYER:
        import importlib
        module, attr = _RUN_LAYER[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'scratchvae' has no attribute {name!r}")

__all__ = ["VAE", "M2", "Adam", "SGD", "load", "gradcheck", "check_op", "set_backend", "get_backend",
           "register_backend", "backends", "check_backend", "warmup", "describe", "profile", "__version__"]
