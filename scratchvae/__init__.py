"""scratchvae: a Variational Autoencoder from scratch.

NumPy arrays, hand-written layers with manual backprop, an analytic KL,
the reparameterization trick and a hand-written Adam; every gradient is
checked against finite differences (see :mod:`scratchvae.gradcheck`).

    import numpy as np, scratchvae as sv
    model = sv.VAE(input_dim=784, hidden=[400], latent_dim=20)
    losses, grads = model.loss_and_grads(x, rng=np.random.default_rng(0))
    sv.Adam(model.params, lr=1e-3).step(grads)

Numba and Matplotlib are never imported here: the library runs on NumPy alone.
"""
__version__ = "0.1.0"

from .checkpoint import load
from .gradcheck import check_op, gradcheck
from .kernels import describe, get_backend, set_backend, warmup
from .optim import SGD, Adam
from .vae import VAE

__all__ = ["VAE", "Adam", "SGD", "load", "gradcheck", "check_op", "set_backend", "get_backend",
           "warmup", "describe", "__version__"]
