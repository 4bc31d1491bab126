"""The reference backend: the specification of every kernel, as its textbook formula.

One formula per line, no tuning, temporaries allowed: this is what the fast
backends (``numpy.py``, ``numba.py``) are tested against, and what to read
next to the maths. Its signatures are the contract; the names and
conventions are in ``kernels/contract.py``. ``scratch`` is accepted and
ignored. Its fused kernels are the compositions of ``fused.py``.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from . import fused
from .contract import HALF_LOG_2PI, check_activation


def _into(out, value):
    """``value`` written into ``out`` (returned), or ``value`` itself when ``out`` is None."""
    if out is None:
        return np.ascontiguousarray(value)
    out[...] = value
    return out


def _rows(w, n, dtype):
    """Per-row weights as a column (n, 1) that broadcasts over the features."""
    return np.asarray(w, dtype).reshape(n, 1)


# --------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------

def gemm(a, b, out=None, trans_a=False, trans_b=False, accumulate=False, scratch=None):
    """``C = op(a) @ op(b)`` (``C += ...`` with ``accumulate``), ``op`` transposing when asked.

    ``C_ij = sum_k op(a)_ik op(b)_kj``; op(a) (m, k), op(b) (k, n), out (m, n).
    The model needs ``x @ W`` (forward), ``d_y @ W.T`` (input gradient,
    ``trans_b``) and ``x.T @ d_y`` (weight gradient, ``trans_a``). Written as
    an einsum, which does not call BLAS: an independent check of it.
    """
    A = a.T if trans_a else a
    B = b.T if trans_b else b
    C = np.einsum("ik,kj->ij", A, B)
    if accumulate:
        out[...] += C
        return out
    return _into(out, C)


# --------------------------------------------------------------------------
# Activations: forward from the pre-activation a, backward from the output y
# --------------------------------------------------------------------------

def _f(a, activation, alpha):
    if activation == "identity":
        return a
    if activation == "relu":
        return np.maximum(a, 0)                                   # max(a, 0)
    if activation == "leaky_relu":
        return np.where(a > 0, a, alpha * a)                      # a if a > 0 else alpha a
    if activation == "tanh":
        return np.tanh(a)
    if activation == "sigmoid":
        return np.exp(-np.logaddexp(0, -a))                       # 1 / (1 + e^-a)
    if activation == "softplus":
        return np.logaddexp(0, a)                                 # log(1 + e^a)
    if activation == "elu":
        return np.where(a > 0, a, alpha * np.expm1(np.minimum(a, 0)))   # alpha (e^a - 1) below 0
    check_activation(activation)


def _f_prime(y, activation, alpha):
    """f'(a) written with y = f(a) alone, so a layer caches y and never a."""
    if activation == "identity":
        return np.ones_like(y)                                    # 1
    if activation == "relu":
        return (y > 0).astype(y.dtype)                            # [a > 0] = [y > 0]
    if activation == "leaky_relu":
        return np.where(y > 0, 1, alpha).astype(y.dtype)          # 1 or alpha
    if activation == "tanh":
        return 1 - y * y                                          # 1 - tanh^2
    if activation == "sigmoid":
        return y * (1 - y)                                        # s (1 - s)
    if activation == "softplus":
        return -np.expm1(-y)                                      # sigmoid(a) = 1 - e^-y
    if activation == "elu":
        return np.where(y > 0, 1, y + alpha).astype(y.dtype)      # alpha e^a = y + alpha below 0
    check_activation(activation)


def bias_activation(a, b, activation, alpha, out=None):
    """``y = f(a + b)``. a: (rows, n); b: (n,); ``out`` may be ``a`` (in place).

    ``alpha``: the negative slope of ``leaky_relu``, the scale of ``elu``
    (ignored by the others).
    """
    return _into(out, _f(a + b, activation, alpha))


def activation_backward(y, d_y, activation, alpha, out=None, d_b=None, row_scale=None):
    """``d_a = row_scale_i * d_y * f'(a)`` from the output ``y = f(a)``.

    y, d_y: (rows, n); ``row_scale`` (rows,) weights each row (None: 1).
    ``out`` may be ``d_y`` (in place). ``d_b`` (n,), when given, receives the
    bias gradient, the column sums of ``d_a``.
    """
    d_a = d_y * _f_prime(y, activation, alpha)
    if row_scale is not None:
        d_a = d_a * _rows(row_scale, len(y), y.dtype)
    if d_b is not None:
        d_b[...] = d_a.sum(axis=0)
    return _into(out, d_a)


# --------------------------------------------------------------------------
# Fused kernels: each is, by definition, the composition of the kernels above (fused.py)
# --------------------------------------------------------------------------

def gemm_bias_activation(x, W, b, activation, alpha, out=None):
    """``y = f(x @ W + b)``: :func:`gemm`, then :func:`bias_activation` in place."""
    return fused.gemm_bias_activation(sys.modules[__name__], x, W, b, activation, alpha, out)


# --------------------------------------------------------------------------
# Likelihoods: -log p(x | out) per row and its gradient dnll/dout (unweighted)
# --------------------------------------------------------------------------

def bernoulli_nll(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    """Bernoulli on logits ``l``: ``-log p(x|l) = sum_j softplus(l_j) - x_j l_j``.

    logits, x: (rows, d), x in [0, 1] (grey levels give the binary
    cross-entropy). Returns ``(nll (rows,), grad)`` with
    ``grad = sigmoid(l) - x`` (None without ``with_grad``).
    """
    nll = _into(nll, np.sum(np.logaddexp(0, logits) - x * logits, axis=1))
    if not with_grad:
        return nll, None
    return nll, _into(grad, np.exp(-np.logaddexp(0, -logits)) - x)


def cb_log_normalizer(logits):
    """``log C(l)`` of the continuous Bernoulli: ``C(l) = l / tanh(l/2)``, 2 at l = 0."""
    safe = np.where(logits == 0, 1, logits)
    return np.where(logits == 0, math.log(2.0), np.log(safe / np.tanh(safe / 2))).astype(logits.dtype)


def cb_log_normalizer_grad(logits):
    """``d log C / dl = 1/l - 1/sinh(l)``; below |l| = 0.1, where the two
    terms cancel, its series ``l/6 - 7l^3/360 + 31l^5/15120 - 127l^7/604800 + 73l^9/3421440``."""
    l2 = logits * logits
    series = logits * (1 / 6 - l2 * (7 / 360 - l2 * (31 / 15120 - l2 * (127 / 604800 - l2 * (73 / 3421440)))))
    safe = np.where(np.abs(logits) < 0.1, 1, logits)
    return np.where(np.abs(logits) < 0.1, series, 1 / safe - 1 / np.sinh(safe)).astype(logits.dtype)


def continuous_bernoulli_nll(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    """Continuous Bernoulli (Loaiza-Ganem and Cunningham 2019) on logits:
    ``-log p(x|l) = sum_j softplus(l_j) - x_j l_j - log C(l_j)``;
    ``grad = sigmoid(l) - x - dlogC/dl``. Shapes as :func:`bernoulli_nll`.
    """
    nll = _into(nll, np.sum(np.logaddexp(0, logits) - x * logits - cb_log_normalizer(logits), axis=1))
    if not with_grad:
        return nll, None
    return nll, _into(grad, np.exp(-np.logaddexp(0, -logits)) - x - cb_log_normalizer_grad(logits))


def gaussian_nll(mean, x, log_sigma, nll=None, grad=None, with_grad=True, scratch=None):
    """Gaussian ``N(x; mean, sigma^2)``, ``sigma = exp(log_sigma)``:
    ``-log p(x|mean) = sum_j log(2 pi)/2 + log sigma_j + (x_j - mean_j)^2 / (2 sigma_j^2)``.

    mean, x: (rows, d); log_sigma: (1,) (one sigma) or (d,) (per pixel).
    Returns ``(nll (rows,), grad = (mean - x) / sigma^2)``.
    """
    sigma2 = np.exp(2 * log_sigma)
    per_pixel = HALF_LOG_2PI + log_sigma + (x - mean) ** 2 / (2 * sigma2)
    nll = _into(nll, per_pixel.sum(axis=1))
    if not with_grad:
        return nll, None
    return nll, _into(grad, (mean - x) / sigma2)


def gaussian_log_sigma_grad(mean, x, log_sigma, w, out=None):
    """``d/dlog sigma`` of ``sum_i w_i nll_i`` for :func:`gaussian_nll`:
    ``sum_i w_i (1 - r_ij^2)`` with ``r = (x - mean) / sigma``, per pixel for
    log_sigma (d,), summed over the pixels too for (1,)."""
    r2 = (x - mean) ** 2 / np.exp(2 * log_sigma)
    per_pixel = np.sum(_rows(w, len(x), x.dtype) * (1 - r2), axis=0)
    return _into(out, per_pixel if log_sigma.size > 1 else per_pixel.sum(keepdims=True))


# --------------------------------------------------------------------------
# Latent layer: the reparameterization of q(z|x) = N(mu, diag(exp(logvar))), its KL
# --------------------------------------------------------------------------
# mu, logvar: (n, k), one posterior per example; eps: (s n, k), s samples per
# example, sample-major (row t n + i is sample t of example i).

def gaussian_latent(mu, logvar, eps, z=None, kl=None, kl_sample=None):
    """``z = mu + exp(logvar/2) eps``, the analytic KL and its one-sample estimate.

    ``kl`` (n,) = ``KL(q || N(0, I)) = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)``;
    ``kl_sample`` (s n,) = ``log q(z|x) - log N(z; 0, I) = 1/2 sum_j (z_j^2 - logvar_j - eps_j^2)``
    (the log 2 pi terms cancel). Returns ``(z, kl, kl_sample)``.
    """
    s = len(eps) // len(mu)
    mu_s, logvar_s = np.tile(mu, (s, 1)), np.tile(logvar, (s, 1))
    z_new = mu_s + np.exp(logvar_s / 2) * eps
    kl_new = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar, axis=1)
    kl_sample_new = 0.5 * np.sum(z_new ** 2 - logvar_s - eps ** 2, axis=1)
    return _into(z, z_new), _into(kl, kl_new), _into(kl_sample, kl_sample_new)


def gaussian_latent_backward(mu, logvar, eps, z, d_z, w_kl, w_kl_sample, d_mu=None, d_logvar=None):
    """Gradients with respect to mu and logvar of
    ``sum_r d_z_r . z_r + sum_i w_kl_i kl_i + sum_r w_kl_sample_r kl_sample_r``.

    ``dz/dmu = 1``, ``dz/dlogvar = eps exp(logvar/2) / 2``;
    ``dKL/dmu = mu``, ``dKL/dlogvar = (exp(logvar) - 1) / 2``;
    ``kl_sample`` through z (``d/dz = z``) and directly (``d/dlogvar = -1/2``).
    Each example's gradient sums its s samples. ``w_kl`` (n,) and
    ``w_kl_sample`` (s n,) may be None (weight 0).
    """
    n = len(mu)
    s = len(eps) // n
    std_s = np.tile(np.exp(logvar / 2), (s, 1))
    g_z = d_z if w_kl_sample is None else d_z + _rows(w_kl_sample, s * n, mu.dtype) * z
    d_mu_new = g_z.reshape(s, n, -1).sum(axis=0)
    d_logvar_new = (0.5 * g_z * eps * std_s).reshape(s, n, -1).sum(axis=0)
    if w_kl_sample is not None:
        d_logvar_new = d_logvar_new - 0.5 * np.asarray(w_kl_sample, mu.dtype).reshape(s, n, 1).sum(axis=0)
    if w_kl is not None:
        d_mu_new = d_mu_new + _rows(w_kl, n, mu.dtype) * mu
        d_logvar_new = d_logvar_new + _rows(w_kl, n, mu.dtype) * 0.5 * np.expm1(logvar)
    return _into(d_mu, d_mu_new), _into(d_logvar, d_logvar_new)


# --------------------------------------------------------------------------
# Softmax (the classifier q(y|x) of M2)
# --------------------------------------------------------------------------

def log_softmax(logits, out=None):
    """``log p_y = l_y - log sum_j exp(l_j)`` per row, the max subtracted first. logits: (rows, K)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return _into(out, shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))


def log_softmax_backward(log_p, d_log_p, out=None):
    """``d_l = d_log_p - p * sum_y d_log_p_y`` per row, with ``p = exp(log_p)``."""
    return _into(out, d_log_p - np.exp(log_p) * d_log_p.sum(axis=1, keepdims=True))


# --------------------------------------------------------------------------
# Rows, ranges and norms
# --------------------------------------------------------------------------

def repeat_rows(x, times, out=None):
    """``times`` copies of x (n, d) stacked: (times n, d), row ``t n + i`` = ``x[i]``."""
    return _into(out, np.tile(x, (times, 1)))


def min_max(x):
    """``(min, max)`` of x as floats; NaN anywhere gives ``(nan, nan)``."""
    return float(np.min(x)), float(np.max(x))


def sum_squares(a):
    """``sum_i a_i^2`` over every element, as a float."""
    return float(np.sum(a.astype(np.float64) ** 2))


# --------------------------------------------------------------------------
# Optimizer updates, in place
# --------------------------------------------------------------------------

def adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale, scratch=None):
    """One Adam step on ``p`` in place (Kingma and Ba 2015, algorithm 1); step counts from 1.

    ``weight_decay`` is decoupled (AdamW): p shrinks before the update.
    ``grad_scale`` multiplies g (gradient clipping).
    """
    g = grad_scale * g
    p *= 1 - lr * weight_decay
    m[...] = beta1 * m + (1 - beta1) * g                     # first moment
    v[...] = beta2 * v + (1 - beta2) * g * g                 # second moment
    m_hat = m / (1 - beta1 ** step)                          # bias corrections
    v_hat = v / (1 - beta2 ** step)
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)


def sgd_update(p, g, buf, lr, momentum, weight_decay, grad_scale, scratch=None):
    """One SGD step with heavy-ball momentum on ``p`` in place:
    ``buf = momentum buf + grad_scale g + weight_decay p``; ``p -= lr buf``."""
    buf[...] = momentum * buf + grad_scale * g + weight_decay * p
    p -= lr * buf
