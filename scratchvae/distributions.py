"""Posterior, prior and likelihoods: sampling, log-densities, KL, gradients.

Units are nats. Shapes are batch-major: a latent batch is (batch, k), a data
batch (batch, d). Forward/backward pairs follow the convention of ``nn.py``.
"""
from __future__ import annotations

import abc
import math
from typing import Dict, Tuple

import numpy as np

from .kernels import ops as K
from .kernels.reference import HALF_LOG_2PI, cb_log_normalizer

# --------------------------------------------------------------------------
# Diagonal Gaussian posterior q(z|x) = N(mu, diag(exp(logvar)))
# --------------------------------------------------------------------------


def reparameterize_kl(mu, logvar, eps, z=None, kl=None):
    """``z = mu + exp(logvar/2) * eps`` and ``KL(N(mu, exp(logvar)) || N(0, I))``.

    mu, logvar, eps: (batch, k). Returns ``(z, kl, cache)`` with z (batch, k)
    and kl (batch,) = ``1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)``.
    Sampling through ``eps ~ N(0, I)`` makes z a differentiable function of
    mu and logvar (the reparameterization trick). ``z`` and ``kl`` may be
    given as outputs.
    """
    z, kl = K.gaussian_latent(mu, logvar, eps, z, kl)
    return z, kl, (mu, logvar, eps)


def reparameterize_kl_backward(cache, d_z, kl_weight, d_mu=None, d_logvar=None):
    """Gradients of ``sum(d_z * z) + kl_weight * sum(kl)`` w.r.t. mu and logvar.

    dz/dmu = 1, dz/dlogvar = eps exp(logvar/2) / 2;
    dKL/dmu = mu, dKL/dlogvar = (exp(logvar) - 1) / 2.
    Returns ``(d_mu, d_logvar)``, written into the given outputs if any.
    """
    mu, logvar, eps = cache
    return K.gaussian_latent_backward(mu, logvar, eps, d_z, kl_weight, d_mu, d_logvar)


def diag_gaussian_log_prob(z, mu, logvar):
    """``log N(z; mu, diag(exp(logvar)))`` per row. z, mu, logvar: (batch, k).

    Returns ``(logp, cache)``, logp (batch,) =
    ``-1/2 sum_j (log 2pi + logvar_j + (z_j - mu_j)^2 exp(-logvar_j))``.
    """
    r2 = (z - mu) ** 2 * np.exp(-logvar)
    logp = -(z.shape[1] * HALF_LOG_2PI) - 0.5 * (logvar + r2).sum(axis=1)
    return logp, (z, mu, logvar)


def diag_gaussian_log_prob_backward(cache, d_logp):
    """Gradients of ``sum(d_logp * logp)``; d_logp: (batch,).

    d/dz = -(z - mu) exp(-logvar); d/dmu = -d/dz;
    d/dlogvar = ((z - mu)^2 exp(-logvar) - 1) / 2. Returns ``(d_z, d_mu, d_logvar)``.
    """
    z, mu, logvar = cache
    w = d_logp[:, None]
    prec = np.exp(-logvar)
    d_z = -w * (z - mu) * prec
    d_logvar = w * 0.5 * ((z - mu) ** 2 * prec - 1)
    return d_z, -d_z, d_logvar


def kl_mvn(mu0, cov0, mu1, cov1):
    """Closed-form ``KL(N(mu0, cov0) || N(mu1, cov1))`` for full covariances.

    ``1/2 [tr(cov1^-1 cov0) + (mu1 - mu0)^T cov1^-1 (mu1 - mu0) - k
    + log det cov1 - log det cov0]``, in nats.

    mu: (..., k); cov: (..., k, k), symmetric positive definite; leading
    dimensions broadcast. Computed with Cholesky factors ``cov = L L^T``:
    the trace is ``||L1^-1 L0||_F^2``, the Mahalanobis term
    ``||L1^-1 (mu1 - mu0)||^2`` and ``log det cov = 2 sum log diag L``.
    """
    mu0, mu1 = np.asarray(mu0, float), np.asarray(mu1, float)
    cov0, cov1 = np.asarray(cov0, float), np.asarray(cov1, float)
    k = mu0.shape[-1]
    for name, mu, cov in (("0", mu0, cov0), ("1", mu1, cov1)):
        if mu.shape[-1:] != (k,) or cov.shape[-2:] != (k, k):
            raise ValueError(f"kl_mvn: mu{name} must be (..., {k}) and cov{name} (..., {k}, {k}); "
                             f"got {mu.shape} and {cov.shape}")
        if not np.allclose(cov, np.swapaxes(cov, -1, -2)):
            raise ValueError(f"kl_mvn: cov{name} is not symmetric")
    L0, L1 = _cholesky(cov0, "cov0"), _cholesky(cov1, "cov1")
    M = np.linalg.solve(L1, L0)
    diff = np.linalg.solve(L1, (mu1 - mu0)[..., None])[..., 0]
    trace = (M ** 2).sum(axis=(-2, -1))
    maha = (diff ** 2).sum(axis=-1)
    logdet = 2 * (np.log(np.diagonal(L1, axis1=-2, axis2=-1)).sum(-1)
                  - np.log(np.diagonal(L0, axis1=-2, axis2=-1)).sum(-1))
    return 0.5 * (trace + maha - k + logdet)


def _cholesky(cov, name):
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise ValueError(f"kl_mvn: {name} is not positive definite") from None


# --------------------------------------------------------------------------
# Likelihoods p(x|z): the decoder outputs one vector per example, ``out``
# --------------------------------------------------------------------------


class Likelihood(abc.ABC):
    """Interface of a likelihood p(x | out), ``out`` being the decoder's output.

    ``params`` holds the likelihood's own learned parameters (names without
    the ``dec.`` prefix the model adds), possibly none.
    """

    name = "likelihood"
    needs_unit_interval = False   # data must lie in [0, 1]

    def init_params(self, dim: int, dtype) -> Dict[str, np.ndarray]:
        return {}

    @abc.abstractmethod
    def nll_and_grad(self, out, x, params, scale, nll=None, d_out=None,
                     d_params=None) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
        """Returns ``(nll (batch,), d_out = scale * dnll/dout, d_params)``.

        ``nll``, ``d_out`` and the arrays of ``d_params`` (keyed like
        ``params``) may be given as outputs.
        """

    @abc.abstractmethod
    def mean(self, out, params):
        """E[x | out], shape (batch, d)."""

    @abc.abstractmethod
    def sample(self, out, params, rng):
        """x ~ p(x | out), shape (batch, d)."""


def sigmoid(l):
    """1 / (1 + e^-l), computed as (1 + tanh(l/2)) / 2 so that it never overflows."""
    return 0.5 + 0.5 * np.tanh(0.5 * l)


class Bernoulli(Likelihood):
    """Bernoulli on logits: ``-log p(x|l) = softplus(l) - x l`` per pixel.

    x may hold grey levels in [0, 1]: the loss is then the binary
    cross-entropy the PyTorch reference VAE uses (not a normalised density).
    """

    name = "bernoulli"
    needs_unit_interval = True

    def nll_and_grad(self, out, x, params, scale, nll=None, d_out=None, d_params=None):
        nll, d_out = K.bernoulli_nll(out, x, scale, d_out, nll)
        return nll, d_out, {}

    def mean(self, out, params):
        return sigmoid(out)

    def sample(self, out, params, rng):
        return (rng.random(out.shape) < self.mean(out, params)).astype(out.dtype)


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli on logits (Loaiza-Ganem and Cunningham 2019).

    ``p(x|l) = C(l) sigmoid(l)^x (1 - sigmoid(l))^(1-x)`` for x in [0, 1],
    a proper density for grey levels; ``C(l) = l / tanh(l/2)``.
    """

    name = "continuous_bernoulli"
    needs_unit_interval = True

    def nll_and_grad(self, out, x, params, scale, nll=None, d_out=None, d_params=None):
        nll, d_out = K.continuous_bernoulli_nll(out, x, scale, d_out, nll)
        return nll, d_out, {}

    def mean(self, out, params):
        """E[x] = 1/(1 - e^-l) - 1/l; 1/2 + l/12 - l^3/720 near l = 0."""
        small = np.abs(out) < 1e-2
        safe = np.where(small, 1.0, out)
        direct = -1.0 / np.expm1(-safe) - 1.0 / safe
        series = 0.5 + out * (1 / 12 - out * out / 720)
        return np.where(small, series, direct).astype(out.dtype, copy=False)

    def sample(self, out, params, rng):
        """Inverse CDF: x = log(1 + u (e^l - 1)) / l, written to never overflow."""
        u = rng.random(out.shape)
        small = np.abs(out) < 1e-6
        safe = np.where(small, 1.0, out)
        pos = 1 + np.log(u + (1 - u) * np.exp(-np.abs(safe))) / np.abs(safe)   # l > 0
        neg = np.log1p(u * np.expm1(-np.abs(safe))) / -np.abs(safe)          # l < 0
        x = np.where(small, u, np.where(out > 0, pos, neg))
        return np.clip(x, 0, 1).astype(out.dtype)

    log_normalizer = staticmethod(cb_log_normalizer)


class Gaussian(Likelihood):
    """Gaussian ``N(x; out, sigma^2)`` with the decoder output as the mean.

    ``sigma`` is ``"fixed"`` (never trained), ``"scalar"`` (one learned
    sigma) or ``"pixel"`` (one learned sigma per pixel). Learned sigmas are
    stored as ``log_sigma`` so that they stay positive without a bound:
    shape (1,) for a scalar, (d,) per pixel.
    """

    MODES = ("fixed", "scalar", "pixel")

    def __init__(self, mode: str = "fixed", sigma: float = 1.0):
        if mode not in self.MODES:
            raise ValueError(f"unknown Gaussian sigma mode {mode!r}; choose one of {self.MODES}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma}")
        self.mode, self.sigma = mode, float(sigma)
        self.name = f"gaussian_{mode}"

    def init_params(self, dim, dtype):
        if self.mode == "fixed":
            return {}
        return {"log_sigma": np.full(1 if self.mode == "scalar" else dim, math.log(self.sigma), dtype)}

    def log_sigma(self, params, dtype):
        """log sigma as an array: the learned parameter, or the fixed value, shape (1,)."""
        if self.mode == "fixed":
            return np.full(1, math.log(self.sigma), dtype)
        return params["log_sigma"]

    def nll_and_grad(self, out, x, params, scale, nll=None, d_out=None, d_params=None):
        d_log_sigma = None if self.mode == "fixed" else (d_params or {}).get("log_sigma")
        nll, d_out, d_log_sigma = K.gaussian_nll(out, x, self.log_sigma(params, out.dtype), scale,
                                                 d_out, nll, d_log_sigma)
        return nll, d_out, ({} if self.mode == "fixed" else {"log_sigma": d_log_sigma})

    def mean(self, out, params):
        return out

    def sample(self, out, params, rng):
        sigma = np.exp(self.log_sigma(params, out.dtype))
        return (out + sigma * rng.standard_normal(out.shape)).astype(out.dtype)


LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian_fixed", "gaussian_scalar", "gaussian_pixel")


def make_likelihood(name, sigma: float = 1.0) -> Likelihood:
    """A likelihood from its name (one of :data:`LIKELIHOODS`; ``-`` may stand for ``_``).

    ``sigma`` is the fixed standard deviation of ``gaussian_fixed`` or the
    starting value of the learned ones.
    """
    if isinstance(name, Likelihood):
        return name
    key = str(name).replace("-", "_")
    if key == "bernoulli":
        return Bernoulli()
    if key == "continuous_bernoulli":
        return ContinuousBernoulli()
    if key in ("gaussian", "gaussian_fixed", "gaussian_scalar", "gaussian_pixel"):
        return Gaussian(key.partition("_")[2] or "fixed", sigma)
    raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
