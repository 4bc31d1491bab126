"""Naive twins: obviously-correct textbook code that only the tests use.

The library keeps one fast implementation of each formula; the oracles its
tests compare against live here, where no user code can come to depend on
them (the pattern of stumpy's ``tests/naive.py``).
"""
from __future__ import annotations

import numpy as np


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
