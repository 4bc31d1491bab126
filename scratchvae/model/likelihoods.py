"""Likelihoods p(x | eta), ``eta`` being the decoder's output, the likelihood's
parameters (logits for the Bernoulli likelihoods, means for the Gaussian): the
loss of the model's last step and its gradient, the mean and draws of x.

Units are nats; a data batch is (rows, d). Each likelihood's loss kernel
gives ``nll`` per row and the unweighted gradient ``dnll/deta``; the model
applies the per-row weights of its objective in the decoder's backward pass.
"""
from __future__ import annotations

import abc
import math
from typing import Dict, Tuple

import numpy as np

from ..kernels import ops as K

# --------------------------------------------------------------------------
# Likelihoods p(x|z): the decoder outputs one vector per example, ``eta``
# --------------------------------------------------------------------------


class Likelihood(abc.ABC):
    """Interface of a likelihood p(x | eta), ``eta`` being the decoder's output.

    ``params`` holds the likelihood's own learned parameters, named in
    :meth:`init_params` (the model stores them as ``dec.<name>``), possibly none.
    """

    name = "likelihood"
    needs_unit_interval = False   # data must lie in [0, 1]

    def init_params(self, dim: int, dtype) -> Dict[str, np.ndarray]:
        """The likelihood's own parameters for d = ``dim`` pixels (none by default)."""
        return {}

    def check_dtype(self, dtype) -> None:
        """Raise ValueError if the likelihood's settings cannot work in ``dtype`` (all can by default)."""

    @abc.abstractmethod
    def nll(self, eta, x, params, nll=None, grad=None, with_grad=True,
            scratch=None) -> Tuple[np.ndarray, np.ndarray]:
        """``(nll (rows,), grad = dnll/deta (rows, d))``, grad None without ``with_grad``.

        ``nll`` and ``grad`` may be given as outputs.
        """

    def params_backward(self, eta, x, params, w, d_params) -> None:
        """Write ``d/dparam`` of ``sum_i w_i nll_i`` into ``d_params`` (keyed like
        ``params``); nothing to do for a likelihood without parameters."""

    def linear_terms(self, x, params) -> Tuple[np.ndarray, np.ndarray]:
        """``(T, h)``, T (n, d) and h (n,), such that for every decoder output ``eta``

            log p(x | eta) = T . eta + h + log p(0 | eta)

        (x = 0 the all-zero image): log p(x | eta) - log p(0 | eta) is linear in
        eta. So n images are scored against N decoder outputs by one (n, d) @ (d, N)
        product plus a term per image and a term per output (exact log p(x) by
        quadrature). A likelihood without it cannot be integrated that way.
        """
        raise NotImplementedError(f"the {self.name} likelihood does not say how log p(x | eta) "
                                  "depends on eta (linear_terms)")

    @abc.abstractmethod
    def mean(self, eta, params):
        """E[x | eta], shape (batch, d)."""

    @abc.abstractmethod
    def sample(self, eta, params, rng):
        """x ~ p(x | eta), shape (batch, d)."""


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

    def nll(self, eta, x, params, nll=None, grad=None, with_grad=True, scratch=None):
        return K.bernoulli_nll(eta, x, nll, grad, with_grad, scratch)

    def linear_terms(self, x, params):
        """``T = x``, ``h = 0``: ``-log p(x|l) = softplus(l) - x l``, and softplus(l) is ``-log p(0|l)``."""
        return x, np.zeros(len(x), x.dtype)

    def mean(self, eta, params):
        return sigmoid(eta)

    def sample(self, eta, params, rng):
        return (rng.random(eta.shape) < self.mean(eta, params)).astype(eta.dtype)


class ContinuousBernoulli(Likelihood):
    """Continuous Bernoulli on logits (Loaiza-Ganem and Cunningham 2019).

    ``p(x|l) = C(l) sigmoid(l)^x (1 - sigmoid(l))^(1-x)`` for x in [0, 1],
    a proper density for grey levels; ``C(l) = l / tanh(l/2)``.
    """

    name = "continuous_bernoulli"
    needs_unit_interval = True

    def nll(self, eta, x, params, nll=None, grad=None, with_grad=True, scratch=None):
        return K.continuous_bernoulli_nll(eta, x, nll, grad, with_grad, scratch)

    linear_terms = Bernoulli.linear_terms     # x l again: log C(l) is part of log p(0|l)

    def mean(self, eta, params):
        """E[x] = 1/(1 - e^-l) - 1/l; 1/2 + l/12 - l^3/720 near l = 0."""
        small = np.abs(eta) < 1e-2
        safe = np.where(small, 1.0, eta)
        direct = -1.0 / np.expm1(-safe) - 1.0 / safe
        series = 0.5 + eta * (1 / 12 - eta * eta / 720)
        return np.where(small, series, direct).astype(eta.dtype, copy=False)

    def sample(self, eta, params, rng):
        """Inverse CDF: x = log(1 + u (e^l - 1)) / l, written to never overflow."""
        u = rng.random(eta.shape)
        small = np.abs(eta) < 1e-6
        safe = np.where(small, 1.0, eta)
        pos = 1 + np.log(u + (1 - u) * np.exp(-np.abs(safe))) / np.abs(safe)   # l > 0
        neg = np.log1p(u * np.expm1(-np.abs(safe))) / -np.abs(safe)          # l < 0
        x = np.where(small, u, np.where(eta > 0, pos, neg))
        return np.clip(x, 0, 1).astype(eta.dtype)


class Gaussian(Likelihood):
    """Gaussian ``N(x; eta, sigma^2)`` with the decoder output as the mean.

    ``sigma`` is ``"fixed"`` (never trained), ``"scalar"`` (one learned
    sigma) or ``"pixel"`` (one learned sigma per pixel). Learned sigmas are
    stored as ``log_sigma`` so that they stay positive without a bound:
    shape (1,) for a scalar, (d,) per pixel.
    """

    MODES = ("fixed", "scalar", "pixel")

    def __init__(self, mode: str = "fixed", sigma: float = 1.0):
        if mode not in self.MODES:
            raise ValueError(f"unknown Gaussian sigma mode {mode!r}; choose one of {self.MODES}")
        if not (isinstance(sigma, (int, float, np.integer, np.floating)) and not isinstance(sigma, bool)
                and sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        self.mode, self.sigma = mode, float(sigma)
        self.name = f"gaussian_{mode}"

    def check_dtype(self, dtype):
        """Refuse a sigma (fixed, or the start of a learned one) below :func:`smallest_sigma` of ``dtype``."""
        low = smallest_sigma(dtype)
        if self.sigma < low:
            other = " (float64 takes down to 1e-75)" if np.dtype(dtype) == np.float32 else ""
            raise ValueError(f"sigma {self.sigma:g} is too small for {np.dtype(dtype)}: the loss's gradient "
                             f"grows as 1/sigma^2 = {self.sigma ** -2:.1e}, and its square in Adam overflows "
                             f"{np.dtype(dtype)} below about sigma {low / 10:g}, so training would stop at once "
                             f"as 'diverged'; use sigma >= {low:g}{other}, data lying in [0, 1]")

    def init_params(self, dim, dtype):
        if self.mode == "fixed":
            return {}
        return {"log_sigma": np.full(1 if self.mode == "scalar" else dim, math.log(self.sigma), dtype)}

    def log_sigma(self, params, dtype):
        """log sigma as an array: the learned parameter, or the fixed value, shape (1,)."""
        if self.mode == "fixed":
            return np.full(1, math.log(self.sigma), dtype)
        return params["log_sigma"]

    def nll(self, eta, x, params, nll=None, grad=None, with_grad=True, scratch=None):
        return K.gaussian_nll(eta, x, self.log_sigma(params, eta.dtype), nll, grad, with_grad, scratch)

    def params_backward(self, eta, x, params, w, d_params):
        if self.mode != "fixed":
            K.gaussian_log_sigma_grad(eta, x, params["log_sigma"], w, out=d_params["log_sigma"])

    def linear_terms(self, x, params):
        """``T = x / sigma^2``, ``h = -sum_j x_j^2 / (2 sigma_j^2)``: expanding the square,
        ``-(x - eta)^2 / (2 sigma^2) = x eta / sigma^2 - x^2 / (2 sigma^2) - eta^2 / (2 sigma^2)``
        and the last term is part of ``log p(0 | eta)``."""
        precision = np.exp(-2 * self.log_sigma(params, x.dtype))
        return x * precision, -0.5 * (x * x * precision).sum(axis=1)

    def mean(self, eta, params):
        return eta

    def sample(self, eta, params, rng):
        sigma = np.exp(self.log_sigma(params, eta.dtype))
        return (eta + sigma * rng.standard_normal(eta.shape)).astype(eta.dtype)


LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian_fixed", "gaussian_scalar", "gaussian_pixel")


def smallest_sigma(dtype) -> float:
    """The smallest sigma a Gaussian likelihood takes in ``dtype``: 1e-8 in float32, 1e-75 in float64.

    The loss's gradient in the decoder's mean is ``(mean - x) / sigma^2`` and Adam squares it: below
    ``finfo(dtype).max ** -1/4`` the square overflows and training stops on its first steps as if
    it had diverged (measured in float32: 1e-9 trains, 1e-10 does not). One decade of margin above it.
    """
    return 10.0 ** (math.ceil(math.log10(float(np.finfo(dtype).max) ** -0.25)) + 1)


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
