"""The numpy backend: the contract of ``reference.py`` in tuned, in-place NumPy.

Same formulas, rearranged in place so that the large temporaries live in
the caller's buffers and :class:`~scratchvae.kernels.Scratch`: at batch 1024
NumPy's temporaries cost more than the arithmetic. Each kernel says what it
does differently from the textbook line and why. Tested against
``reference.py`` by ``kernels.check_backend``.
"""
from __future__ import annotations

import ctypes
import itertools
import math
from typing import Optional

import numpy as np

from .contract import HALF_LOG_2PI, check_activation, temporaries


def _result(out, like):
    return np.empty_like(like) if out is None else out


def _column(w, n, like):
    """Per-row weights (n,) as an (n, 1) column in ``like``'s dtype (no copy when it already is)."""
    return np.asarray(w, like.dtype).reshape(n, 1)


#: OpenBLAS's kernels (as ``openblas_get_corename`` names them) by the vector instructions they use
OPENBLAS_ISA = {"SapphireRapids": "AVX-512", "Cooperlake": "AVX-512", "SkylakeX": "AVX-512",
                "Haswell": "AVX2", "Zen": "AVX2", "SandyBridge": "AVX", "Nehalem": "SSE4.2",
                "Prescott": "SSE3", "Core2": "SSSE3", "Penryn": "SSE4.1", "Atom": "SSSE3",
                "Neoversev1": "SVE", "Neoversen2": "SVE2", "Neoversen1": "NEON", "Armv8": "NEON"}


def describe() -> dict:
    """NumPy's BLAS: the library NumPy was built with and, for OpenBLAS, the kernel it
    chose for this CPU at run time (``OPENBLAS_CORETYPE`` overrides it) and that
    kernel's vector instructions. Keys that cannot be known here are left out."""
    info = {}
    try:
        built = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = f"{built['name']} {built.get('version', '')}".strip()
    except (TypeError, KeyError, AttributeError):       # NumPy < 1.26 has no mode="dicts"
        pass
    core = _openblas_core()
    if core:
        info["blas_kernel"] = core
        info["blas_isa"] = OPENBLAS_ISA.get(core, "unknown")
    return info


def _openblas_core() -> Optional[str]:
    """The kernel the OpenBLAS loaded in this process runs (e.g. ``SkylakeX``), or None."""
    corename = _openblas_function("openblas_get_corename")
    if corename is None:
        return None
    corename.restype = ctypes.c_char_p
    return corename().decode()


def set_blas_threads(n: int) -> bool:
    """Let the OpenBLAS loaded in this process use ``n`` threads from now on (the run-time
    equivalent of ``OPENBLAS_NUM_THREADS``); False when no OpenBLAS is found."""
    set_threads = _openblas_function("openblas_set_num_threads")
    if set_threads is None:
        return False
    set_threads(ctypes.c_int(int(n)))
    return True


def _openblas_function(name: str):
    """OpenBLAS's function ``name`` in this process, or None.

    Linux lists a process's shared libraries in /proc/self/maps; NumPy's own
    build of OpenBLAS prefixes and suffixes its names (``scipy_openblas_get_corename64_``).
    """
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line and ".so" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_")):
            function = getattr(lib, f"{prefix}{name}{suffix}", None)
            if function is not None:
                return function
    return None


# --------------------------------------------------------------------------
# GEMM: NumPy's BLAS
# --------------------------------------------------------------------------

def gemm(a, b, out=None, trans_a=False, trans_b=False, accumulate=False, scratch=None):
    """``out (+)= op(a) @ op(b)`` with ``np.matmul`` (BLAS); transposed operands
    are handed to BLAS as views, without copying. BLAS's own ``beta = 1`` is not
    reachable from NumPy, so ``accumulate`` multiplies into a scratch array and adds."""
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    if not accumulate:
        return np.matmul(a, b, out=out)
    (t,) = temporaries(scratch, "gemm", out, 1)
    out += np.matmul(a, b, out=t)
    return out


# --------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------

def bias_activation(a, b, activation, alpha, out=None):
    """``y = f(a + b)`` in place in ``out``; sigmoid as ``(1 + tanh(a/2)) / 2``
    (no overflow, no temporary)."""
    y = np.add(a, b, out=out)
    if activation == "identity":
        pass
    elif activation == "relu":
        np.maximum(y, 0, out=y)
    elif activation == "leaky_relu":
        np.multiply(y, np.where(y > 0, 1.0, alpha).astype(y.dtype), out=y)
    elif activation == "tanh":
        np.tanh(y, out=y)
    elif activation == "sigmoid":
        np.multiply(y, 0.5, out=y)
        np.tanh(y, out=y)
        np.multiply(y, 0.5, out=y)
        np.add(y, 0.5, out=y)
    elif activation == "softplus":
        np.logaddexp(0, y, out=y)
    elif activation == "elu":
        neg = y <= 0
        y[neg] = alpha * np.expm1(y[neg])
    else:
        check_activation(activation)
    return y


def activation_backward(y, d_y, activation, alpha, out=None, d_b=None, row_scale=None):
    """``d_a = row_scale * d_y * f'(a)`` from ``y``, then the bias gradient's column sums."""
    d_a = _result(out, d_y)
    if activation == "identity":           # f' = 1
        if row_scale is None:
            np.copyto(d_a, d_y)
        else:
            np.multiply(d_y, _column(row_scale, len(y), y), out=d_a)
            row_scale = None
    elif activation == "relu":             # f' = [y > 0]
        np.multiply(d_y, y > 0, out=d_a)
    elif activation == "leaky_relu":
        np.multiply(d_y, np.where(y > 0, 1.0, alpha).astype(y.dtype), out=d_a)
    elif activation == "tanh":             # f' = 1 - y^2
        np.multiply(d_y, 1 - y * y, out=d_a)
    elif activation == "sigmoid":          # f' = y (1 - y)
        np.multiply(d_y, y * (1 - y), out=d_a)
    elif activation == "softplus":         # f' = 1 - e^-y
        np.multiply(d_y, -np.expm1(-y), out=d_a)
    elif activation == "elu":              # f' = 1 or y + alpha
        np.multiply(d_y, np.where(y > 0, 1, y + alpha), out=d_a)
    else:
        check_activation(activation)
    if row_scale is not None:
        d_a *= _column(row_scale, len(y), y)
    if d_b is not None:
        np.sum(d_a, axis=0, out=d_b)
    return d_a


# --------------------------------------------------------------------------
# Likelihoods
# --------------------------------------------------------------------------

def bernoulli_nll(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    """``softplus(l) - x l`` and ``sigmoid(l) - x`` sharing ``e = exp(-|l|)``,
    which never overflows: ``softplus(l) = max(l, 0) + log1p(e)``; ``sigmoid(l)
    = 1 - s`` for l >= 0 and ``s`` below, ``s = e / (1 + e)``. NumPy's log is
    vectorised and its log1p is not, so log1p(e) is taken from ``log(1 + e)``
    with its rounding error corrected."""
    e, u, t = temporaries(scratch, "bernoulli", logits, 3)
    np.negative(np.abs(logits, out=e), out=e)
    np.exp(e, out=e)                      # e = exp(-|l|)
    np.add(e, 1, out=u)                   # u = 1 + e
    # log1p(e) = log(u) - ((u - 1) - e) / u, exact to rounding
    np.subtract(u, 1, out=t)
    t -= e
    t /= u
    np.log(u, out=u)
    np.subtract(u, t, out=t)              # t = log1p(e)
    t += np.maximum(logits, 0, out=u)     # t = softplus(l)
    t -= np.multiply(x, logits, out=u)
    nll = np.sum(t, axis=1, out=nll)
    if not with_grad:
        return nll, None
    # sigmoid(l) = [sign bit of l clear] - copysign(s, l): no masked (slow) ufunc
    d = _result(grad, logits)
    np.add(e, 1, out=u)
    np.divide(e, u, out=d)
    np.copysign(d, logits, out=d)
    np.subtract(1, d, out=d)
    d -= np.signbit(logits)
    d -= x
    return nll, d


def _cb_log_normalizer(logits):
    """log C(l) as ``log|l| - log(1 - e^-|l|) + log(1 + e^-|l|)`` (even in l), by
    the series of ``reference.cb_log_normalizer_grad`` integrated below |l| = 0.1
    (``log 2 + l^2/12 - 7 l^4/1440 + ...``, next term below 1e-18 there)."""
    a = np.abs(logits)
    small = a < 0.1
    safe = np.where(small, 1.0, a)
    direct = np.log(safe) - np.log(-np.expm1(-safe)) + np.log1p(np.exp(-safe))
    a2 = a * a
    series = math.log(2.0) + a2 * (1 / 12 - a2 * (7 / 1440 - a2 * (
        31 / 90720 - a2 * (127 / 4838400 - a2 * (73 / 34214400)))))
    return np.where(small, series, direct).astype(logits.dtype, copy=False)


def _cb_log_normalizer_grad(logits):
    """``1/l - 1/sinh(l)``, with ``1/sinh(a) = 2 e^-a / (1 - e^-2a)``, by its series below 0.1."""
    a = np.abs(logits)
    small = a < 0.1
    safe = np.where(small, 1.0, a)
    e = np.exp(-safe)
    direct = 1.0 / safe - 2.0 * e / (1.0 - e * e)
    a2 = a * a
    series = a * (1 / 6 - a2 * (7 / 360 - a2 * (31 / 15120 - a2 * (127 / 604800 - a2 * (73 / 3421440)))))
    return (np.sign(logits) * np.where(small, series, direct)).astype(logits.dtype, copy=False)


def continuous_bernoulli_nll(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    """The Bernoulli kernel, then ``- log C(l)`` and ``- dlogC/dl``."""
    nll, d = bernoulli_nll(logits, x, nll, grad, with_grad, scratch)
    nll -= _cb_log_normalizer(logits).sum(axis=1)
    if with_grad:
        d -= _cb_log_normalizer_grad(logits)
    return nll, d


def gaussian_nll(mean, x, log_sigma, nll=None, grad=None, with_grad=True, scratch=None):
    """Through the standardised residual ``r = (x - mean) / sigma``:
    ``nll = |r|^2 / 2 + const`` (one einsum), ``grad = -r / sigma``."""
    (r,) = temporaries(scratch, "gaussian", mean, 1)
    inv_sigma = np.exp(-log_sigma)
    np.subtract(x, mean, out=r)
    r *= inv_sigma
    d = x.shape[1]
    log_sigma_sum = log_sigma.sum() * (d if log_sigma.size == 1 else 1)
    nll = _result(nll, mean[:, 0])
    nll[:] = 0.5 * np.einsum("ij,ij->i", r, r) + (d * HALF_LOG_2PI + log_sigma_sum)
    if not with_grad:
        return nll, None
    out = _result(grad, mean)
    np.multiply(r, -inv_sigma, out=out)
    return nll, out


def gaussian_log_sigma_grad(mean, x, log_sigma, w, out=None):
    """``sum_i w_i (1 - r_ij^2)`` as one product ``w @ (1 - r^2)``."""
    r = (x - mean) * np.exp(-log_sigma)
    np.multiply(r, r, out=r)
    np.subtract(1, r, out=r)
    per_pixel = np.asarray(w, mean.dtype) @ r
    out = _result(out, log_sigma)
    out[:] = per_pixel.sum(keepdims=True) if log_sigma.size == 1 else per_pixel
    return out


# --------------------------------------------------------------------------
# Latent layer
# --------------------------------------------------------------------------

def gaussian_latent(mu, logvar, eps, z=None, kl=None, kl_sample=None):
    """z, kl and kl_sample with ``std = exp(logvar/2)`` computed once per example;
    the s samples of an example are rows ``t n + i``, so ``(s, n, k)`` views
    broadcast mu and std over them."""
    n, k = mu.shape
    s = len(eps) // n
    std = np.exp(0.5 * logvar)
    z = _result(z, eps)
    np.multiply(std, eps.reshape(s, n, k), out=z.reshape(s, n, k))
    z.reshape(s, n, k)[...] += mu
    kl = np.sum(mu * mu + std * std - 1 - logvar, axis=1, out=kl)
    kl *= 0.5
    # kl_sample = (|z|^2 - |eps|^2 - sum logvar) / 2: row sums by einsum, no (s n, k) temporary
    kl_sample = np.einsum("ij,ij->i", z, z, out=_result(kl_sample, eps[:, 0]))
    kl_sample -= np.einsum("ij,ij->i", eps, eps)
    kl_sample.reshape(s, n)[...] -= logvar.sum(axis=1)
    kl_sample *= 0.5
    return z, kl, kl_sample


def gaussian_latent_backward(mu, logvar, eps, z, d_z, w_kl, w_kl_sample, d_mu=None, d_logvar=None):
    """As the reference; with one sample (the ELBO) ``d_logvar = (d_z eps +
    w_kl std) std / 2 - w_kl / 2``, which shares ``std`` between both terms."""
    n, k = mu.shape
    s = len(eps) // n
    std = np.exp(0.5 * logvar)
    if w_kl_sample is not None:
        d_z = d_z + _column(w_kl_sample, s * n, mu) * z
    w = None if w_kl is None else _column(w_kl, n, mu)
    d_mu = _result(d_mu, mu)
    d_logvar = _result(d_logvar, mu)
    if s == 1:
        if w is None:
            np.copyto(d_mu, d_z)
            np.multiply(d_z * eps, 0.5 * std, out=d_logvar)
        else:
            np.multiply(mu, w, out=d_mu)
            d_mu += d_z
            np.multiply(d_z * eps + w * std, 0.5 * std, out=d_logvar)
            d_logvar -= 0.5 * w
    else:
        np.sum(d_z.reshape(s, n, k), axis=0, out=d_mu)
        np.sum((d_z * eps).reshape(s, n, k), axis=0, out=d_logvar)
        d_logvar *= 0.5 * std
        if w is not None:
            d_mu += w * mu
            d_logvar += w * (0.5 * np.expm1(logvar))
    if w_kl_sample is not None:
        d_logvar -= 0.5 * np.asarray(w_kl_sample, mu.dtype).reshape(s, n).sum(axis=0)[:, None]
    return d_mu, d_logvar


# --------------------------------------------------------------------------
# Softmax
# --------------------------------------------------------------------------

def log_softmax(logits, out=None):
    out = np.subtract(logits, logits.max(axis=1, keepdims=True), out=out)
    out -= np.log(np.exp(out).sum(axis=1, keepdims=True))
    return out


def log_softmax_backward(log_p, d_log_p, out=None):
    p = np.exp(log_p)
    p *= d_log_p.sum(axis=1, keepdims=True)
    return np.subtract(d_log_p, p, out=out)


# --------------------------------------------------------------------------
# Rows, ranges and norms
# --------------------------------------------------------------------------

def repeat_rows(x, times, out=None):
    n = len(x)
    out = np.empty((times * n,) + x.shape[1:], x.dtype) if out is None else out
    out.reshape((times, n) + x.shape[1:])[...] = x
    return out


def min_max(x):
    """Two reductions (NaN propagates through both)."""
    return float(x.min()), float(x.max())


def sum_squares(a):
    """``a . a`` by BLAS, in a's dtype."""
    flat = a.reshape(-1)
    return float(np.dot(flat, flat))


# --------------------------------------------------------------------------
# Optimizer updates
# --------------------------------------------------------------------------

def adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale, scratch=None):
    """In place around one scratch array ``s``: each temporary NumPy would make
    otherwise costs more than the arithmetic on a 650k-parameter model.
    ``m = b1 (m - g') + g'`` is ``b1 m + (1 - b1) g'`` in two in-place ops."""
    (s,) = temporaries(scratch, "adam", g, 1)
    if weight_decay:
        p *= 1 - lr * weight_decay
    np.multiply(g, grad_scale, out=s)           # s = g'
    m -= s
    m *= beta1
    m += s
    np.multiply(s, s, out=s)                    # s = g'^2
    v -= s
    v *= beta2
    v += s
    np.sqrt(v, out=s)                           # s = sqrt(v_hat) + eps
    s *= 1 / math.sqrt(1 - beta2 ** step)
    s += eps
    np.divide(m, s, out=s)                      # p -= lr m_hat / s
    s *= lr / (1 - beta1 ** step)
    p -= s


def sgd_update(p, g, buf, lr, momentum, weight_decay, grad_scale, scratch=None):
    """``buf = momentum buf + g'``, ``g' = grad_scale g + weight_decay p``, built in ``buf``."""
    buf *= momentum
    buf += grad_scale * g
    if weight_decay:
        buf += weight_decay * p
    p -= lr * buf
