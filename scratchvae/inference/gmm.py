"""A Gaussian mixture fitted by EM, to sample codes from after training.

A VAE trained with the N(0, I) prior rarely fills it: the codes of the data
(the posterior means) sit in clumps, and z drawn from N(0, I) lands between
them, where the decoder has seen nothing. Fitting a mixture of N
full-covariance Gaussians to the training codes and sampling z from it
instead (pythae's ``GaussianMixtureSampler``; Ghosh et al. 2020 fit one to
the codes of a deterministic autoencoder) keeps the samples where the data's
codes are.

EM (Dempster, Laird and Rubin 1977) alternates, for codes z_i and components n:

    E-step   r_in = pi_n N(z_i; m_n, S_n) / sum_n' pi_n' N(z_i; m_n', S_n')
    M-step   N_n = sum_i r_in,  pi_n = N_n / N,  m_n = sum_i r_in z_i / N_n,
             S_n = sum_i r_in (z_i - m_n)(z_i - m_n)^T / N_n + reg I

and never lowers the mean log-likelihood (tested). Everything is float64 NumPy.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np

from ..kernels import HALF_LOG_2PI
from ..model import memory
from ..model.latent import log_sum_exp


def parse_sampler(spec: str) -> int:
    """The number of components of a sampler spec: ``prior`` -> 0, ``gmm:N`` -> N >= 1."""
    if spec == "prior":
        return 0
    kind, _, count = str(spec).partition(":")
    if kind == "gmm" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ValueError(f"sampler must be prior or gmm:N with N >= 1 components (e.g. gmm:10), got {spec!r}")


def fit_bytes(n: int, d: int, components: int) -> int:
    """Bytes :meth:`GaussianMixture.fit` takes on n codes of size d: the codes,
    the (n, N) log-joint, responsibilities and their temporary, and per component
    its mean, covariance and Cholesky factor, in float64."""
    return 8 * (n * d + 3 * n * components + components * (d + 2 * d * d) + 2 * n * d)


class GaussianMixture:
    """A mixture of ``components`` full-covariance Gaussians in d dimensions.

    After :meth:`fit`: ``weights`` (N,), ``means`` (N, d), ``covariances``
    (N, d, d) and ``log_likelihoods`` (the mean log-likelihood per code,
    nats, after each EM iteration). ``reg`` is added to every covariance's
    diagonal so that none collapses onto a single code.
    """

    def __init__(self, components: int, max_iter: int = 200, tol: float = 1e-4, reg: float = 1e-6):
        if not (isinstance(components, (int, np.integer)) and components >= 1):
            raise ValueError(f"components must be an integer >= 1, got {components!r}")
        self.components, self.max_iter, self.tol, self.reg = int(components), int(max_iter), float(tol), float(reg)
        self.weights: Optional[np.ndarray] = None
        self.means: Optional[np.ndarray] = None
        self.covariances: Optional[np.ndarray] = None
        self.log_likelihoods: List[float] = []

    def fit(self, z, rng: np.random.Generator) -> "GaussianMixture":
        """Fit to the codes z (n, d) by EM; ``rng`` chooses the starting means
        (k-means++ seeding: each next mean a code drawn with probability
        proportional to its squared distance to the nearest mean so far).
        Starts from equal weights and the codes' covariance; stops when the
        mean log-likelihood gains less than ``tol`` nats. Returns self."""
        z = np.asarray(z, np.float64)
        if z.ndim != 2 or len(z) < self.components:
            raise ValueError(f"need codes of shape (n, d) with n >= {self.components} components, got {z.shape}")
        n, d = z.shape
        memory.require(fit_bytes(n, d, self.components), f"a mixture of {self.components:,} components fitted "
                                                         f"to {n:,} codes")
        self.means = self._seed_means(z, rng)
        self.covariances = np.tile(np.cov(z.T).reshape(d, d) + self.reg * np.eye(d), (self.components, 1, 1))
        self.weights = np.full(self.components, 1.0 / self.components)
        self.log_likelihoods = []
        for _ in range(self.max_iter):
            log_joint = self._log_joint(z)                               # E-step
            log_px = log_sum_exp(log_joint, axis=1)
            self.log_likelihoods.append(float(log_px.mean()))
            r = np.exp(log_joint - log_px[:, None])                     # responsibilities (n, N)
            counts = r.sum(axis=0) + 10 * np.finfo(np.float64).tiny     # M-step
            self.weights = counts / n
            self.means = (r.T @ z) / counts[:, None]
            for j in range(self.components):
                diff = z - self.means[j]
                self.covariances[j] = (r[:, j, None] * diff).T @ diff / counts[j] + self.reg * np.eye(d)
            if len(self.log_likelihoods) > 1 and self.log_likelihoods[-1] - self.log_likelihoods[-2] < self.tol:
                break
        return self

    def _seed_means(self, z, rng):
        means = [z[rng.integers(len(z))]]
        nearest = ((z - means[0]) ** 2).sum(axis=1)
        for _ in range(1, self.components):
            total = nearest.sum()
            pick = rng.choice(len(z), p=nearest / total) if total > 0 else rng.integers(len(z))
            means.append(z[pick])
            nearest = np.minimum(nearest, ((z - means[-1]) ** 2).sum(axis=1))
        return np.array(means)

    def _log_joint(self, z):
        """``log pi_n + log N(z_i; m_n, S_n)``, (n, N): with ``S = L L^T`` (Cholesky),
        ``(z - m)^T S^-1 (z - m) = |L^-1 (z - m)|^2`` and ``log det S = 2 sum log diag L``."""
        d = z.shape[1]
        out = np.empty((len(z), self.components))
        for j in range(self.components):
            L = np.linalg.cholesky(self.covariances[j])
            y = np.linalg.solve(L, (z - self.means[j]).T)
            out[:, j] = (math.log(self.weights[j]) - d * HALF_LOG_2PI
                         - np.log(np.diag(L)).sum() - 0.5 * (y * y).sum(axis=0))
        return out

    def _check_fitted(self):
        if self.means is None:
            raise ValueError("this GaussianMixture is not fitted yet: call fit(z, rng) first")

    def log_prob(self, z) -> np.ndarray:
        """The mixture's log-density at each row of z (n, d), nats, (n,)."""
        self._check_fitted()
        return log_sum_exp(self._log_joint(np.asarray(z, np.float64)), axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws, (n, d) float64: a component by its weight, then ``m + L eps``."""
        self._check_fitted()
        pick = rng.choice(self.components, n, p=self.weights)
        eps = rng.standard_normal((n, self.means.shape[1]))
        chol = np.linalg.cholesky(self.covariances)
        return self.means[pick] + np.einsum("nij,nj->ni", chol[pick], eps)

    def __repr__(self):
        fitted = "unfitted" if self.means is None else f"d={self.means.shape[1]}, {len(self.log_likelihoods)} EM iterations"
        return f"GaussianMixture({self.components} components, {fitted})"


def fit_to_codes(model, x, components: int, rng: np.random.Generator, batch_size: int = 1000,
                 **kwargs) -> GaussianMixture:
    """A :class:`GaussianMixture` of ``components`` fitted to the codes of x
    (n, d) under ``model`` (``model.embed``: the posterior means, through the
    flow if there is one). ``kwargs`` go to :class:`GaussianMixture`."""
    if model.context_dim:
        raise ValueError("a mixture over the codes of a conditional model ignores its context: "
                         "sample a conditional model from its prior")
    codes = np.concatenate([model.embed(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])
    return GaussianMixture(components, **kwargs).fit(codes, rng)
