"""The buffers of a training step, allocated once per batch shape and reused.

A :class:`Workspace` holds every array one forward and backward of a
:class:`~scratchvae.model.vae.VAE` write, so that a training step allocates
nothing (``tests/test_allocations.py``); ``VAE.workspace(n, samples)`` makes
and keeps them.
"""
from __future__ import annotations

import numpy as np

from ..kernels import Scratch


class Workspace:
    """Every array one step on n examples with s samples of z each writes, allocated once.

    Forward: encoder layer outputs, mu, logvar (n rows; n + K with the
    VampPrior, whose pseudo-inputs are encoded with x), the flow's parameters; eps, z, kl_sample,
    decoder layer outputs, nll, the likelihood's gradient (s n rows); the
    rows of x and c repeated per sample (s > 1). Backward: the gradients of
    each decoder layer's input (``d_dec[0]`` is d_z), d_mu, d_logvar, d_h
    (encoder output) and the encoder layers' input gradients; the per-row
    weights of the objectives; the kernels' scratch. With ``allocate=False``
    every buffer is None: the kernels then return new arrays (one-off calls).
    """

    def __init__(self, model, n: int, samples: int, allocate: bool = True):
        self.n, self.samples = n, samples
        if not allocate:
            for name in ("scratch", "x_enc", "enc", "mu", "logvar", "lam", "eps", "z", "kl", "kl_sample", "nll",
                         "x_rows", "c_rows", "dec", "grad", "d_dec", "d_mu", "d_logvar", "d_lam", "d_h", "d_enc",
                         "w_nll", "w_kl", "w_path"):
                setattr(self, name, None)
            return

        def buf(*shape):
            return np.empty(shape, model.dtype)

        k, d, rows = model.latent_dim, model.input_dim, n * samples
        enc, dec = model.encoder.layers, model.decoder.layers
        with_inputs = model.p_z.inputs is not None     # the prior's inputs are encoded with x
        n_enc = n + model.pseudo_inputs                 # the encoder's rows: [x; u] for the VampPrior
        lam_width = model.q_flow.width(k)
        self.scratch = Scratch()
        self.x_enc = buf(n_enc, d) if with_inputs else None
        self.enc = [buf(n_enc, layer.fan_out) for layer in enc]
        self.mu, self.logvar = buf(n_enc, k), buf(n_enc, k)
        self.lam = self.d_lam = None
        if lam_width:
            self.lam, self.d_lam = buf(n, lam_width), buf(n, lam_width)
        self.eps, self.z = buf(rows, k), buf(rows, k)
        self.kl, self.kl_sample, self.nll = buf(n), buf(rows), buf(rows)
        self.x_rows = buf(rows, d) if samples > 1 else None
        self.c_rows = buf(rows, model.context_dim) if samples > 1 and model.context_dim else None
        self.dec = [buf(rows, layer.fan_out) for layer in dec]
        self.grad = buf(rows, d)
        self.d_dec = [buf(rows, k)] + [buf(rows, layer.fan_in) for layer in dec[1:]]
        self.d_mu, self.d_logvar = buf(n_enc, k), buf(n_enc, k)
        self.d_h = buf(n_enc, enc[-1].fan_out) if enc else buf(n_enc, d) if with_inputs else None
        # the gradient of the encoder's input: for the VampPrior's pseudo-inputs only
        self.d_enc = [buf(n_enc, d) if with_inputs and enc else None] + [buf(n_enc, layer.fan_in) for layer in enc[1:]]
        self.w_nll, self.w_kl, self.w_path = buf(rows), buf(n), buf(rows)
