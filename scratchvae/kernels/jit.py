"""Numba kernels: the contract of ``reference.py``, fused and compiled.

Each public function has the signature of its reference twin; the loops
live in ``_``-prefixed ``@njit`` functions. What is fused:

* ``bias_activation``: bias add and activation in one pass;
* ``activation_backward``: f'(a) from the cached output and the bias
  gradient (column sums) in the same pass;
* the likelihoods: per-example loss and its gradient in one pass over the
  pixels, with one ``exp`` per pixel shared by softplus and sigmoid;
* ``gaussian_latent`` (+ backward): reparameterization and KL together;
* ``adam_update``: one sweep over the flat parameter buffer.

Compilation: ``cache=True`` (compiled code is kept on disk and reloaded in
later processes). Numba writes the cache next to this file, or, where that
is read-only, in a user cache directory; where neither can be written the
kernels compile in memory instead of failing. ``fastmath`` allows
reassociation (vectorised sums) but never ``nnan``/``ninf``, so NaN and inf
checks keep working.

Constants are float32 where they are exact (0, 0.5, 1, 2) so that float32
kernels stay in float32; float64 inputs promote them losslessly.
"""
from __future__ import annotations

import math
import os

import numba as nb
import numpy as np

from . import reference as R

FASTMATH = {"nsz", "arcp", "contract", "reassoc"}   # never nnan / ninf
ZERO, HALF, ONE, TWO = np.float32(0), np.float32(0.5), np.float32(1), np.float32(2)
ACT_CODE = {name: i for i, name in enumerate(R.ACTIVATIONS)}
IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, SOFTPLUS, ELU = (ACT_CODE[a] for a in R.ACTIVATIONS)
CACHE_ENABLED = True


def _jit(inline=False):
    """njit with our flags; without a writable cache location, compile in memory.

    The kernels are serial on purpose: BLAS already runs the GEMMs on every
    core, and a second thread pool spinning beside OpenBLAS's made a step
    several times slower on a 2-core machine. ``inline`` marks loop bodies
    that a dispatching kernel instantiates once per activation (see below).
    """
    def decorate(fn):
        global CACHE_ENABLED
        options = dict(fastmath=FASTMATH, nogil=True, error_model="numpy",
                       inline="always" if inline else "never")
        try:
            return nb.njit(cache=CACHE_ENABLED, **options)(fn)
        except RuntimeError:          # "cannot cache function ...: no locator available"
            CACHE_ENABLED = False
            return nb.njit(cache=False, **options)(fn)
    return decorate


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------
# A loop whose body branches on the activation code does not vectorise. So
# each loop is written once, inlined (``_jit(inline=True)``) into a
# dispatcher that calls it with a constant code per branch: LLVM folds the
# branches away and vectorises each copy. Activations that need exp or tanh
# per element run on NumPy's SIMD loops instead (the reference kernels),
# which beat the scalar libm calls compiled code would make.

@_jit(inline=True)
def _act(v, code, alpha):
    if code == RELU:
        return ZERO if v <= ZERO else v        # NaN stays NaN, as np.maximum keeps it
    if code == LEAKY_RELU:
        return v if v > ZERO else alpha * v
    return v


@_jit(inline=True)
def _act_grad(y, code, alpha):
    """f'(a) from y = f(a)."""
    if code == RELU:
        return ONE if y > ZERO else ZERO
    if code == LEAKY_RELU:
        return ONE if y > ZERO else alpha
    if code == TANH:
        return ONE - y * y
    if code == SIGMOID:
        return y * (ONE - y)
    if code == ELU:
        return ONE if y > ZERO else y + alpha
    return ONE


@_jit(inline=True)
def _bias_act_loop(a, b, code, alpha, out):
    n, m = a.shape
    for i in range(n):
        for j in range(m):
            out[i, j] = _act(a[i, j] + b[j], code, alpha)


@_jit()
def _bias_act(a, b, code, alpha, out):
    if code == RELU:
        _bias_act_loop(a, b, RELU, alpha, out)
    elif code == LEAKY_RELU:
        _bias_act_loop(a, b, LEAKY_RELU, alpha, out)
    else:
        _bias_act_loop(a, b, IDENTITY, alpha, out)


@_jit(inline=True)
def _act_backward_loop(y, d_y, code, alpha, out, d_b, want_d_b):
    n, m = y.shape
    if want_d_b:
        for j in range(m):
            d_b[j] = ZERO
    for i in range(n):
        for j in range(m):
            d = d_y[i, j] * _act_grad(y[i, j], code, alpha)
            out[i, j] = d
            if want_d_b:
                d_b[j] += d


@_jit()
def _act_backward(y, d_y, code, alpha, out, d_b, want_d_b):
    if code == RELU:
        _act_backward_loop(y, d_y, RELU, alpha, out, d_b, want_d_b)
    elif code == LEAKY_RELU:
        _act_backward_loop(y, d_y, LEAKY_RELU, alpha, out, d_b, want_d_b)
    elif code == TANH:
        _act_backward_loop(y, d_y, TANH, alpha, out, d_b, want_d_b)
    elif code == SIGMOID:
        _act_backward_loop(y, d_y, SIGMOID, alpha, out, d_b, want_d_b)
    elif code == ELU:
        _act_backward_loop(y, d_y, ELU, alpha, out, d_b, want_d_b)
    else:
        _act_backward_loop(y, d_y, IDENTITY, alpha, out, d_b, want_d_b)


def bias_activation(a, b, activation, alpha, out=None):
    code = _code(activation)
    if code not in (IDENTITY, RELU, LEAKY_RELU):
        return R.bias_activation(a, b, activation, alpha, out)
    out = np.empty_like(a) if out is None else out
    _bias_act(a, b, code, a.dtype.type(alpha), out)
    return out


def activation_backward(y, d_y, activation, alpha, out=None, d_b=None):
    code = _code(activation)
    if code == SOFTPLUS:
        return R.activation_backward(y, d_y, activation, alpha, out, d_b)
    out = np.empty_like(d_y) if out is None else out
    want = d_b is not None
    _act_backward(y, d_y, code, y.dtype.type(alpha), out, d_b if want else out[0], want)
    return out


def _code(activation):
    try:
        return ACT_CODE[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; choose one of {R.ACTIVATIONS}") from None


# --------------------------------------------------------------------------
# likelihoods
# --------------------------------------------------------------------------
# softplus(l) = max(l, 0) + log1p(e) and sigmoid(l) = (1 if l >= 0 else e) / (1 + e)
# share e = exp(-|l|), which NumPy computes with its SIMD exp (compiled code
# would call the scalar libm exp per pixel). One compiled pass then writes the
# gradient and sums the loss. The loss needs sum_j log1p(e_j): in float32 it
# takes the log of products of 64 factors (1 + e_j) in [1, 2], one log call
# per 64 pixels (each product < 2^64, rounding error about 64 ulp); in
# float64, used for gradient checks, it calls log1p per pixel, exactly.

@_jit()
def _neg_abs(l, e):
    n, m = l.shape
    for i in range(n):
        for j in range(m):
            e[i, j] = -abs(l[i, j])


@_jit()
def _bernoulli(logits, x, e, scale, chunk, d, nll):
    n, m = logits.shape
    for i in range(n):
        s = ZERO * logits[i, 0]
        for j in range(m):
            l, ej = logits[i, j], e[i, j]
            s += max(l, ZERO) - x[i, j] * l
            d[i, j] = scale * ((ONE if l >= ZERO else ej) / (ONE + ej) - x[i, j])
        if chunk == 1:
            for j in range(m):
                s += math.log1p(e[i, j])
        else:
            for j0 in range(0, m, chunk):
                prod = ONE + ZERO * s
                for j in range(j0, min(m, j0 + chunk)):
                    prod *= ONE + e[i, j]
                s += math.log(prod)
        nll[i] = s


@_jit()
def _cb_log_norm_and_grad(l):
    """log C(l) and its derivative for the continuous Bernoulli, in float64
    (see reference.cb_log_normalizer for the formulas and the series)."""
    a = abs(float(l))
    if a < 0.1:
        a2 = a * a
        f = math.log(2.0) + a2 * (1 / 12 - a2 * (7 / 1440 - a2 * (
            31 / 90720 - a2 * (127 / 4838400 - a2 * (73 / 34214400)))))
        g = a * (1 / 6 - a2 * (7 / 360 - a2 * (31 / 15120 - a2 * (127 / 604800 - a2 * (73 / 3421440)))))
    else:
        e = math.exp(-a)        # one exp and one log: 1 - e >= 0.095 here, no cancellation
        f = math.log(a * (1.0 + e) / (1.0 - e))
        g = 1.0 / a - 2.0 * e / (1.0 - e * e)
    return f, (g if l >= 0 else -g)


@_jit()
def _cb_correction(logits, scale, d, nll):
    """Continuous Bernoulli on top of _bernoulli: nll -= sum log C, d -= scale dlogC/dl."""
    n, m = logits.shape
    for i in range(n):
        c = 0.0
        for j in range(m):
            f, g = _cb_log_norm_and_grad(logits[i, j])
            c += f
            d[i, j] -= scale * g
        nll[i] -= c


def bernoulli_nll(logits, x, scale, d_logits=None, nll=None):
    d = np.empty_like(logits) if d_logits is None else d_logits
    nll = np.empty(logits.shape[0], logits.dtype) if nll is None else nll
    e = R._scratch(logits, 1)[0]
    _neg_abs(logits, e)
    np.exp(e, out=e)
    _bernoulli(logits, x, e, logits.dtype.type(scale), 64 if logits.dtype == np.float32 else 1, d, nll)
    return nll, d


def continuous_bernoulli_nll(logits, x, scale, d_logits=None, nll=None):
    nll, d = bernoulli_nll(logits, x, scale, d_logits, nll)
    _cb_correction(logits, logits.dtype.type(scale), d, nll)
    return nll, d


@_jit()
def _gaussian(mean, x, inv_sigma, const, scale, d_mean, nll, d_log_sigma):
    n, m = mean.shape
    per_pixel = inv_sigma.shape[0] == m
    for j in range(d_log_sigma.shape[0]):
        d_log_sigma[j] = ZERO
    for i in range(n):
        s = ZERO * mean[i, 0]
        for j in range(m):
            jj = j if per_pixel else 0
            r = (x[i, j] - mean[i, j]) * inv_sigma[jj]
            s += HALF * r * r
            d_mean[i, j] = -scale * r * inv_sigma[jj]
            d_log_sigma[jj] += scale * (ONE - r * r)
        nll[i] = s + const


def gaussian_nll(mean, x, log_sigma, scale, d_mean=None, nll=None, d_log_sigma=None):
    d_mean = np.empty_like(mean) if d_mean is None else d_mean
    nll = np.empty(mean.shape[0], mean.dtype) if nll is None else nll
    d_log_sigma = np.empty_like(log_sigma) if d_log_sigma is None else d_log_sigma
    m = mean.shape[1]
    const = m * R.HALF_LOG_2PI + float(log_sigma.sum()) * (m if log_sigma.size == 1 else 1)
    _gaussian(mean, x, np.exp(-log_sigma), mean.dtype.type(const), mean.dtype.type(scale),
              d_mean, nll, d_log_sigma)
    return nll, d_mean, d_log_sigma


# --------------------------------------------------------------------------
# latent layer
# --------------------------------------------------------------------------

@_jit()
def _latent(mu, logvar, eps, z, kl):
    n, k = mu.shape
    for i in range(n):
        s = ZERO * mu[i, 0]
        for j in range(k):
            var = math.exp(logvar[i, j])
            z[i, j] = mu[i, j] + math.sqrt(var) * eps[i, j]
            s += mu[i, j] * mu[i, j] + var - ONE - logvar[i, j]
        kl[i] = HALF * s


@_jit()
def _latent_backward(mu, logvar, eps, d_z, kl_weight, d_mu, d_logvar):
    n, k = mu.shape
    for i in range(n):
        for j in range(k):
            std = math.exp(HALF * logvar[i, j])
            d_mu[i, j] = d_z[i, j] + kl_weight * mu[i, j]
            d_logvar[i, j] = HALF * (d_z[i, j] * eps[i, j] * std + kl_weight * (std * std - ONE))


def gaussian_latent(mu, logvar, eps, z=None, kl=None):
    z = np.empty_like(mu) if z is None else z
    kl = np.empty(mu.shape[0], mu.dtype) if kl is None else kl
    _latent(mu, logvar, eps, z, kl)
    return z, kl


def gaussian_latent_backward(mu, logvar, eps, d_z, kl_weight, d_mu=None, d_logvar=None):
    d_mu = np.empty_like(mu) if d_mu is None else d_mu
    d_logvar = np.empty_like(mu) if d_logvar is None else d_logvar
    _latent_backward(mu, logvar, eps, d_z, mu.dtype.type(kl_weight), d_mu, d_logvar)
    return d_mu, d_logvar


# --------------------------------------------------------------------------
# optimizers: one sweep over (flat) buffers
# --------------------------------------------------------------------------

@_jit()
def _adam(p, g, m, v, step_size, beta1, beta2, eps, inv_sqrt_bc2, decay, grad_scale):
    n = p.shape[0]
    for i in range(n):
        gi = grad_scale * g[i]
        mi = beta1 * m[i] + (ONE - beta1) * gi
        vi = beta2 * v[i] + (ONE - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


@_jit()
def _sgd(p, g, buf, lr, momentum, weight_decay, grad_scale):
    n = p.shape[0]
    for i in range(n):
        b = momentum * buf[i] + grad_scale * g[i] + weight_decay * p[i]
        buf[i] = b
        p[i] -= lr * b


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale):
    t = p.dtype.type
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    # lr * m_hat / (sqrt(v_hat) + eps) == (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
    _adam(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), t(lr / bc1), t(beta1), t(beta2),
          t(eps), t(1 / math.sqrt(bc2)), t(1 - lr * weight_decay), t(grad_scale))


def sgd_update(p, g, buf, lr, momentum, weight_decay, grad_scale):
    t = p.dtype.type
    _sgd(p.reshape(-1), g.reshape(-1), buf.reshape(-1), t(lr), t(momentum), t(weight_decay), t(grad_scale))


# --------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------
# The hand-written Numba GEMM (gemm_jit.py) matches OpenBLAS on the model's
# shapes (benchmarks/gemm.py: one training step's products 0.99-1.00x), but
# mixing the two in one step makes their idle, spinning thread pools fight
# over the cores. So one GEMM serves every product: BLAS by default,
# SCRATCHVAE_GEMM=numba for ours (one Numba thread pool, no BLAS threads).

GEMM = os.environ.get("SCRATCHVAE_GEMM", "blas")
if GEMM == "numba":
    from .gemm_jit import gemm as _gemm_numba

    def gemm(a, b, out=None, trans_a=False, trans_b=False):
        return _gemm_numba(a, b, out=out, trans_a=trans_a, trans_b=trans_b)
elif GEMM == "blas":
    gemm = R.gemm
else:
    raise ValueError(f"SCRATCHVAE_GEMM must be blas or numba, got {GEMM!r}")


# --------------------------------------------------------------------------
# compile ahead of use
# --------------------------------------------------------------------------

def warmup(dtypes=(np.float32, np.float64)) -> None:
    """Compile (or load from the on-disk cache) every kernel for ``dtypes``."""
    for dtype in dtypes:
        a = np.full((2, 3), 0.5, dtype)
        b = np.zeros(3, dtype)
        y = bias_activation(a, b, "relu", 0.0)
        activation_backward(y, a, "relu", 0.0, d_b=b.copy())
        activation_backward(y, a, "relu", 0.0)
        continuous_bernoulli_nll(a, a, 1.0)
        gaussian_nll(a, a, np.zeros(1, dtype), 1.0)
        z, _ = gaussian_latent(a, a, a)
        gaussian_latent_backward(a, a, a, z, 1.0)
        flat = np.ones(4, dtype)
        adam_update(flat.copy(), flat, flat.copy(), flat.copy(), 1e-3, 0.9, 0.999, 1e-8, 1, 0.0, 1.0)
        sgd_update(flat.copy(), flat, flat.copy(), 1e-3, 0.9, 0.0, 1.0)


def describe() -> dict:
    """What this backend runs with: versions, threads, cache state."""
    return {"backend": "numba", "numba": nb.__version__, "numba_threads": nb.get_num_threads(),
            "kernels_parallel": False, "cache": CACHE_ENABLED,
            "gemm": "numpy.matmul (BLAS)" if GEMM == "blas" else "scratchvae gemm_jit (Numba)",
            "threading_layer": _threading_layer()}


def _threading_layer():
    try:
        return nb.threading_layer()
    except ValueError:                   # no parallel kernel has run in this process
        return f"not started (configured: {nb.config.THREADING_LAYER})"
