"""Planar normalising flows on the posterior (Rezende and Mohamed 2015), forward beside backward.

A flow carries the reparameterised sample z_0 ~ q_0(z|x) = N(mu, diag(exp(logvar)))
through L invertible maps, ``z_l = f_l(z_{l-1})``, and the change of variables gives

    log q(z_L | x) = log q_0(z_0 | x) - sum_l log |det df_l/dz_{l-1}|.

One planar layer, ``f(z) = z + û h(wᵀz + b)`` with ``h = tanh``, has the rank-one
Jacobian ``I + h'(a) û wᵀ`` (``a = wᵀz + b``), whose determinant is
``1 + h'(a) wᵀû`` (the matrix determinant lemma). f is invertible when
``wᵀû >= -1``; the paper's reparameterisation of a free vector u makes sure of it:

    û = u + (m(wᵀu) - wᵀu) w / |w|^2,   m(t) = -1 + softplus(t) > -1,

so that ``wᵀû = m(wᵀu)`` and ``det = 1 + h'(a) m(wᵀu) > 0`` (``0 < h' <= 1``):
no absolute value is needed.

The flow's parameters here are amortised: the encoder outputs ``(u, w, b)`` of
every layer for every example (the head ``enc.flow``, see :class:`~scratchvae.model.vae.VAE`),
as in the paper, so each x gets its own posterior shape. Arrays: z (s, n, k),
s samples of each of n examples (the model's sample-major rows reshaped);
u, w (n, k) and b (n,) per example, shared by the example's s samples.
Everything is NumPy on (s, n, k) arrays: k is the latent size (20), so these
are the small operations of a step, not worth kernels of their own.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np


#: why a flow's q cannot be evaluated at a z it did not draw (the rules that follow from it name it)
NO_DENSITY_AT_Z = "a planar flow's density at a given z needs its inverse, which has no closed form"


class Identity:
    """No flow: ``z_L = z_0``, log det 0, no parameters."""

    spec, layers = "none", 0
    density_at_z = True         # log q(z|x) can be evaluated at any z

    def width(self, latent_dim: int) -> int:
        """Numbers the encoder outputs per example for the flow: none."""
        return 0

    def forward(self, z0, lam):
        """``(z_L, sum log det, cache)`` = ``(z0, 0, None)``."""
        return z0, 0.0, None

    def backward(self, cache, d_zL, d_log_det, d_lam=None):
        """``(d_z0, d_lam)`` = ``(d_zL, None)``."""
        return d_zL, None


class Planar:
    """L planar layers with amortised parameters (:func:`flow_forward`, :func:`flow_backward`)."""

    density_at_z = False        # see NO_DENSITY_AT_Z

    def __init__(self, layers: int):
        self.layers = layers
        self.spec = f"planar:{layers}"

    def width(self, latent_dim: int) -> int:
        """Numbers the encoder outputs per example for the flow: L (2k + 1)."""
        return self.layers * params_per_layer(latent_dim)

    def forward(self, z0, lam):
        """``(z_L (s n, k), sum_l log det_l (s n,), cache)``."""
        return flow_forward(z0, lam, self.layers)

    def backward(self, cache, d_zL, d_log_det, d_lam=None):
        """``(d_z0 (s n, k), d_lam (n, L (2k + 1)))``."""
        return flow_backward(cache, d_zL, d_log_det, d_lam)


def make_flow(spec):
    """The flow a spec names: ``"none"`` (or None) -> :class:`Identity`, ``"planar:L"`` -> :class:`Planar`."""
    layers = parse_flow(spec)
    return Planar(layers) if layers else Identity()


def parse_flow(spec) -> int:
    """The number of planar layers in a flow spec: ``"none"`` (or None) -> 0, ``"planar:L"`` -> L >= 1."""
    if spec is None or spec == "none":
        return 0
    kind, _, count = str(spec).partition(":")
    if kind == "planar" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ValueError(f"flow must be none or planar:L with L >= 1 layers (e.g. planar:8), got {spec!r}")


def params_per_layer(latent_dim: int) -> int:
    """u, w (k each) and b: the encoder outputs this many numbers per layer and example."""
    return 2 * latent_dim + 1


def split_params(lam, layers: int, latent_dim: int):
    """The encoder's flow output lam (n, L (2k + 1)) as L views ``(u (n, k), w (n, k), b (n,))``."""
    lam = lam.reshape(len(lam), layers, params_per_layer(latent_dim))
    k = latent_dim
    return [(lam[:, l, :k], lam[:, l, k:2 * k], lam[:, l, 2 * k]) for l in range(layers)]


def _softplus(t):
    return np.logaddexp(0, t)


def _sigmoid(t):
    return np.exp(-np.logaddexp(0, -t))


# --------------------------------------------------------------------------
# One planar layer
# --------------------------------------------------------------------------

def planar_forward(z, u, w, b):
    """``z' = z + û tanh(wᵀz + b)`` and ``log det = log(1 + h'(a) m(wᵀu))``.

    z: (s, n, k); u, w: (n, k); b: (n,). Returns ``(z' (s, n, k), log_det (s, n), cache)``.
    """
    wu = np.einsum("nk,nk->n", w, u)
    m = _softplus(wu) - 1                               # m(wᵀu) = wᵀû > -1
    w2 = np.einsum("nk,nk->n", w, w)
    c = (m - wu) / w2
    u_hat = u + c[:, None] * w                          # û = u + (m - wᵀu) w / |w|^2
    a = np.einsum("snk,nk->sn", z, w) + b               # a = wᵀz + b
    h = np.tanh(a)
    h1 = 1 - h * h                                      # h'(a)
    det = 1 + h1 * m                                    # det(I + h' û wᵀ) = 1 + h' wᵀû
    z_new = z + h[..., None] * u_hat
    return z_new, np.log(det), (z, u, w, wu, m, w2, c, u_hat, h, h1, det)


def planar_backward(cache, d_z_new, d_log_det):
    """Gradients of ``sum(d_z_new * z') + sum(d_log_det * log_det)``.

    Through a = wᵀz + b: ``dz'/da = û h'``, ``d log det/da = m h''/det`` with
    ``h'' = -2 h h'``; then ``da/dz = w``, ``da/dw = z``, ``da/db = 1``.
    Directly: ``dz'/dû = h``, ``d log det/dm = h'/det``. Back through
    ``û = u + c w``, ``c = (m - wᵀu)/|w|^2``, ``m = softplus(wᵀu) - 1``
    (``m' = sigmoid(wᵀu)``). Each example sums its s samples.
    Returns ``(d_z (s, n, k), d_u (n, k), d_w (n, k), d_b (n,))``.
    """
    z, u, w, wu, m, w2, c, u_hat, h, h1, det = cache
    g = d_log_det / det
    d_a = np.einsum("snk,nk->sn", d_z_new, u_hat) * h1 - 2 * g * m * h * h1
    d_z = d_z_new + d_a[..., None] * w
    d_b = d_a.sum(axis=0)
    d_w = np.einsum("sn,snk->nk", d_a, z)
    d_u_hat = np.einsum("sn,snk->nk", h, d_z_new)
    d_m = (g * h1).sum(axis=0)
    # û = u + c w
    d_u = d_u_hat.copy()
    d_w += c[:, None] * d_u_hat
    d_c = np.einsum("nk,nk->n", d_u_hat, w)
    # c = (m - wᵀu) / |w|^2, m = m(wᵀu)
    d_m = d_m + d_c / w2
    d_wu = d_m * _sigmoid(wu) - d_c / w2
    d_w2 = -d_c * c / w2
    d_u += d_wu[:, None] * w
    d_w += d_wu[:, None] * u + 2 * d_w2[:, None] * w
    return d_z, d_u, d_w, d_b


# --------------------------------------------------------------------------
# The flow: L layers
# --------------------------------------------------------------------------

def flow_forward(z0, lam, layers: int) -> Tuple[np.ndarray, np.ndarray, list]:
    """``z_L = f_L(... f_1(z_0))`` and ``sum_l log det_l``.

    z0: (s n, k) sample-major rows; lam: (n, L (2k + 1)) the encoder's flow
    output. Returns ``(z_L (s n, k), log_det (s n,), caches)``.
    """
    n, k = len(lam), z0.shape[1]
    z = z0.reshape(-1, n, k)
    log_det = np.zeros(z.shape[:2], z0.dtype)
    caches: List[tuple] = []
    for u, w, b in split_params(lam, layers, k):
        z, ld, cache = planar_forward(z, u, w, b)
        log_det += ld
        caches.append(cache)
    return z.reshape(-1, k), log_det.reshape(-1), caches


def flow_backward(caches, d_zL, d_log_det, d_lam=None):
    """Gradients of ``sum(d_zL * z_L) + sum(d_log_det * log_det)`` (both per row, sample-major).

    Returns ``(d_z0 (s n, k), d_lam (n, L (2k + 1)))``, d_lam written into the
    given buffer if any.
    """
    n, k = caches[0][1].shape
    d_z = d_zL.reshape(-1, n, k)
    d_ld = d_log_det.reshape(-1, n)
    if d_lam is None:
        d_lam = np.empty((n, len(caches) * params_per_layer(k)), d_zL.dtype)
    grads = split_params(d_lam, len(caches), k)
    for cache, (d_u_out, d_w_out, d_b_out) in zip(reversed(caches), reversed(grads)):
        d_z, d_u, d_w, d_b = planar_backward(cache, d_z, d_ld)
        d_u_out[...], d_w_out[...], d_b_out[...] = d_u, d_w, d_b
    return d_z.reshape(-1, k), d_lam
