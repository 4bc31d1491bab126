"""The latent layer: posterior q(z|x) = N(mu, diag(exp(logvar))), prior N(0, I).

Forward and backward of the reparameterization with its KL, the Gaussian
log-densities (and the mixture of diagonal Gaussians that is the VampPrior),
and the
normalised importance weights that turn samples into the IWAE bound and the
importance-weighted log p(x). Units are nats; a latent batch is (rows, k).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..kernels import HALF_LOG_2PI
from ..kernels import ops as K


# --------------------------------------------------------------------------
# Reparameterization and KL: the one latent op of every objective
# --------------------------------------------------------------------------

def reparameterize(mu, logvar, eps, z=None, kl=None, kl_sample=None):
    """``z = mu + exp(logvar/2) * eps``, the KL and its one-sample estimate.

    mu, logvar: (n, k); eps: (s n, k), s draws of N(0, I) per example,
    sample-major (row ``t n + i`` is sample t of example i). Sampling through
    eps makes z a differentiable function of mu and logvar (the
    reparameterization trick). Returns ``(z, kl, kl_sample, cache)``:

    * ``kl`` (n,) = ``KL(q(z|x) || N(0, I)) = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)``,
      analytic: what the ELBO uses;
    * ``kl_sample`` (s n,) = ``log q(z|x) - log p(z) = 1/2 sum_j (z_j^2 - logvar_j - eps_j^2)``
      at each drawn z: what importance weights use (its mean over eps is kl).

    ``z``, ``kl``, ``kl_sample`` may be given as outputs.
    """
    z, kl, kl_sample = K.gaussian_latent(mu, logvar, eps, z, kl, kl_sample)
    return z, kl, kl_sample, (mu, logvar, eps, z)


def reparameterize_backward(cache, d_z, w_kl=None, w_kl_sample=None, d_mu=None, d_logvar=None):
    """Gradients of ``sum(d_z * z) + sum_i w_kl_i kl_i + sum_r w_kl_sample_r kl_sample_r``
    with respect to mu and logvar.

    dz/dmu = 1, dz/dlogvar = eps exp(logvar/2) / 2 (each example sums its samples);
    dKL/dmu = mu, dKL/dlogvar = (exp(logvar) - 1) / 2;
    d kl_sample/dz = z, and directly d kl_sample/dlogvar = -1/2.
    ``w_kl`` (n,) and ``w_kl_sample`` (s n,): per-row weights, None for 0.
    Returns ``(d_mu, d_logvar)``, written into the given outputs if any.
    """
    mu, logvar, eps, z = cache
    return K.gaussian_latent_backward(mu, logvar, eps, z, d_z, w_kl, w_kl_sample, d_mu, d_logvar)


# --------------------------------------------------------------------------
# Log-densities
# --------------------------------------------------------------------------

def standard_normal_log_prob(z):
    """``log N(z; 0, I)`` per row, float64: ``-1/2 sum_j (log 2 pi + z_j^2)``. z: (rows, k)."""
    z = z.astype(np.float64)
    return -(z.shape[1] * HALF_LOG_2PI) - 0.5 * np.einsum("ij,ij->i", z, z)


def diag_gaussian_log_prob(z, mu, logvar):
    """``log N(z; mu, diag(exp(logvar)))`` per row. z, mu, logvar: (rows, k).

    Returns ``(logp, cache)``, logp (rows,) =
    ``-1/2 sum_j (log 2pi + logvar_j + (z_j - mu_j)^2 exp(-logvar_j))``.
    """
    r2 = (z - mu) ** 2 * np.exp(-logvar)
    logp = -(z.shape[1] * HALF_LOG_2PI) - 0.5 * (logvar + r2).sum(axis=1)
    return logp, (z, mu, logvar)


def diag_gaussian_mixture_log_prob(z, mu, logvar):
    """``log p(z) = log (1/K) sum_k N(z; mu_k, diag(exp(logvar_k)))`` per row: the VampPrior's
    density when (mu_k, logvar_k) are the encoder's posterior at the K pseudo-inputs.

    z: (rows, k); mu, logvar: (K, k). The squared distances of every row to
    every component, ``sum_j (z_j - mu_kj)^2 / var_kj``, are expanded into
    ``z^2 @ prec^T - 2 z @ (mu prec)^T + sum_j mu_kj^2 prec_kj`` (prec = 1/var):
    two matrix products through the kernels instead of a (rows, K, k) array.
    The sum over components is a log-sum-exp (largest term first).
    Returns ``(logp (rows,), cache)``.
    """
    prec = np.exp(-logvar)
    mu_prec = mu * prec
    quad = K.gemm(z * z, prec, trans_b=True)
    quad -= 2 * K.gemm(z, mu_prec, trans_b=True)
    quad += np.einsum("kj,kj->k", mu, mu_prec)
    log_n = -(z.shape[1] * HALF_LOG_2PI) - 0.5 * (logvar.sum(axis=1) + quad)      # (rows, K)
    top = log_n.max(axis=1, keepdims=True)
    e = np.exp(log_n - top)
    total = e.sum(axis=1, keepdims=True)
    logp = (top + np.log(total))[:, 0] - np.log(len(mu))
    return logp, (z, mu, prec, mu_prec, e / total)


def diag_gaussian_mixture_log_prob_backward(cache, d_logp):
    """Gradients of ``sum(d_logp * logp)``; d_logp: (rows,).

    With the responsibilities ``gamma_rk`` (the softmax over k of the
    components' log-densities) and ``G = d_logp gamma``:
    ``d/dz_r = -sum_k G_rk prec_k (z_r - mu_k)``,
    ``d/dmu_k = sum_r G_rk prec_k (z_r - mu_k)``,
    ``d/dlogvar_k = 1/2 sum_r G_rk ((z_r - mu_k)^2 prec_k - 1)``, each a
    product with G written out as in the forward.
    Returns ``(d_z (rows, k), d_mu (K, k), d_logvar (K, k))``.
    """
    z, mu, prec, mu_prec, gamma = cache
    G = (gamma * d_logp[:, None]).astype(z.dtype, copy=False)
    mass = G.sum(axis=0)[:, None]                       # S_k = sum_r G_rk
    d_z = K.gemm(G, mu_prec) - z * K.gemm(G, prec)
    Gz = K.gemm(G, z, trans_a=True)                     # sum_r G_rk z_r
    Gz2 = K.gemm(G, z * z, trans_a=True)
    d_mu = prec * Gz - mu_prec * mass
    d_logvar = 0.5 * (prec * (Gz2 - 2 * mu * Gz + mu * mu * mass) - mass)
    return d_z, d_mu, d_logvar


# --------------------------------------------------------------------------
# Importance weights
# --------------------------------------------------------------------------

def importance_weights(log_w) -> Tuple[np.ndarray, np.ndarray]:
    """From ``log w`` (s, n) (s samples of each of n examples) to
    ``(log (1/s) sum_t w_t (n,), normalised weights w_t / sum_t w_t (s, n))``,
    in float64, the largest log w subtracted first (log-sum-exp).

    With ``log w = log p(x, z) - log q(z|x)`` the first is the importance-
    weighted bound of Burda et al. (2016); the second is the gradient's
    weighting of the samples (``softmax`` over t).
    """
    log_w = np.asarray(log_w, np.float64)
    top = log_w.max(axis=0)
    w = np.exp(log_w - top)
    total = w.sum(axis=0)
    return top + np.log(total) - np.log(len(log_w)), w / total
