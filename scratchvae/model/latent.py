"""The latent layer: posterior q(z|x) = N(mu, diag(exp(logvar))), a prior p(z), a flow.

Forward and backward of the reparameterization with its KL (the one place z
is drawn from q), the one-sample KL for any prior and flow, the Gaussian
log-densities (and the mixture of diagonal Gaussians that is the VampPrior),
the one log-sum-exp, and the normalised importance weights that turn samples
into the IWAE bound and the importance-weighted log p(x). Units are nats; a
latent batch is (rows, k).
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


def sample_gaussian(mu, logvar, rng: np.random.Generator):
    """One draw ``z ~ N(mu, diag(exp(logvar)))`` per row, (n, k), by the reparameterization."""
    eps = rng.standard_normal(mu.shape, dtype=mu.dtype)
    return reparameterize(mu, logvar, eps)[0]


# --------------------------------------------------------------------------
# The one-sample KL for any prior and flow
# --------------------------------------------------------------------------

def one_sample_kl(lat_cache, lam, flow, prior, components, kl, kl_sample):
    """``kl_sample = log q(z_L|x) - log p(z_L)`` at the drawn z, where the KL has no
    closed form (a flow on q or a prior other than N(0, I)); ``kl`` becomes its
    mean over each example's s samples. Both are written in place.

    By the change of variables ``log q(z_L|x) = log q_0(z_0|x) - sum_l log det_l``,
    and with ``z_0 = mu + exp(logvar/2) eps`` the Gaussian's log-density is
    ``log q_0(z_0|x) = -1/2 sum_j (log 2 pi + logvar_j + eps_j^2)``.
    ``lat_cache`` from :func:`reparameterize`; ``lam`` the flow's parameters
    (None without); ``flow`` and ``prior`` the model's objects (``flows``,
    ``priors``); ``components`` the prior's, if any. Returns ``(z_L, cache)``.
    """
    _, logvar, eps, z0 = lat_cache
    n, k = logvar.shape
    s = len(eps) // n
    log_q0 = (-k * HALF_LOG_2PI - 0.5 * (eps * eps).sum(axis=1).reshape(s, n)
              - 0.5 * logvar.sum(axis=1)).ravel()
    z, log_det, flow_cache = flow.forward(z0, lam)
    log_p, prior_cache = prior.log_prob(z, components)
    kl_sample[...] = log_q0 - log_det - log_p
    kl[...] = kl_sample.reshape(s, n).mean(axis=0)
    return z, (z, flow_cache, prior_cache)


def one_sample_kl_backward(lat_cache, kl_cache, d_z, w, flow, prior, d_mu, d_logvar, d_lam=None,
                           path_scale=None):
    """Gradients of ``sum_r d_z_r . z_r + sum_r w_r kl_sample_r`` into d_mu and
    d_logvar (n, k), and of the flow's parameters; the same for the kernel's
    kl_sample (``kl_cache`` ``(z, None, None)``) under DReG.

    ``d_z`` (s n, k): the decoder's gradient at z_L (overwritten); ``w`` (s n,):
    each row's weight on kl_sample. Its terms, last first:

    * ``-log p(z_L)``: through z_L, and into the prior's components;
    * ``-sum_l log det_l``: through the flow into z_0 and the flow's parameters;
    * ``log q_0(z_0|x)``: with eps fixed it depends on logvar alone, ``d/dlogvar = -1/2``.
      Under DReG (``path_scale`` (s n,), see ``VAE.backward``) only its path
      derivative counts instead, ``d/dz_0 log q_0 = -(z_0 - mu)/var = -eps exp(-logvar/2)``,
      and every row's gradient through z is scaled by ``path_scale``.

    Then the reparameterization ``z_0 = mu + exp(logvar/2) eps`` (the kernel).
    Returns ``(d_components, d_lam)``: the prior's ``(d_mu_k, d_logvar_k)`` (None
    without components) and the flow's (None without a flow).
    """
    mu, logvar, eps, z0 = lat_cache
    z, flow_cache, prior_cache = kl_cache
    n = len(mu)
    s = len(eps) // n
    d_z_prior, d_components = prior.log_prob_backward(z, prior_cache, -w)
    if path_scale is not None:
        scale = np.asarray(path_scale, mu.dtype)[:, None]
        d_z *= scale
        d_z_prior *= scale
    d_z += d_z_prior
    d_z, d_lam = flow.backward(flow_cache, d_z, -w, d_lam)
    if path_scale is not None:
        d_z -= (scale * w[:, None]) * eps * np.tile(np.exp(-0.5 * logvar), (s, 1))
    K.gaussian_latent_backward(mu, logvar, eps, z0, d_z, None, None, d_mu, d_logvar)
    if path_scale is None:
        d_logvar -= 0.5 * w.reshape(s, n).sum(axis=0)[:, None]
    return d_components, d_lam


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
    The sum over components is a :func:`log_sum_exp`.
    Returns ``(logp (rows,), cache)``.
    """
    prec = np.exp(-logvar)
    mu_prec = mu * prec
    quad = K.gemm(z * z, prec, trans_b=True)
    quad -= 2 * K.gemm(z, mu_prec, trans_b=True)
    quad += np.einsum("kj,kj->k", mu, mu_prec)
    log_n = -(z.shape[1] * HALF_LOG_2PI) - 0.5 * (logvar.sum(axis=1) + quad)      # (rows, K)
    log_total, gamma = log_sum_exp(log_n, axis=1, with_softmax=True)
    return log_total - np.log(len(mu)), (z, mu, prec, mu_prec, gamma)


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
# Log-sum-exp and importance weights
# --------------------------------------------------------------------------

def log_sum_exp(a, axis: int = -1, with_softmax: bool = False):
    """``log sum_j exp(a_j)`` along ``axis``, the largest term taken out first so
    that nothing overflows: ``top + log sum_j exp(a_j - top)``.

    With ``with_softmax`` also the normalised terms ``exp(a_j) / sum exp`` (the
    shape of a): the mixture's responsibilities, the importance weights.
    """
    top = a.max(axis=axis, keepdims=True)
    e = np.exp(a - top)
    total = e.sum(axis=axis, keepdims=True)
    log_total = np.squeeze(top + np.log(total), axis=axis)
    return (log_total, e / total) if with_softmax else log_total


def importance_weights(log_w) -> Tuple[np.ndarray, np.ndarray]:
    """From ``log w`` (s, n) (s samples of each of n examples) to
    ``(log (1/s) sum_t w_t (n,), normalised weights w_t / sum_t w_t (s, n))``,
    in float64.

    With ``log w = log p(x, z) - log q(z|x)`` the first is the importance-
    weighted bound of Burda et al. (2016); the second is the gradient's
    weighting of the samples (``softmax`` over t).
    """
    log_w = np.asarray(log_w, np.float64)
    log_total, w = log_sum_exp(log_w, axis=0, with_softmax=True)
    return log_total - np.log(len(log_w)), w
