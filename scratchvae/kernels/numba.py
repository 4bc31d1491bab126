"""The numba backend: the contract of ``reference.py``, fused and compiled.

Each public function has the signature of its reference twin; the loops
live in ``_``-prefixed ``@njit`` functions. What is fused:

* ``bias_activation``: bias add and activation in one pass;
* ``activation_backward``: f'(a) from the cached output, the row weights and
  the bias gradient (column sums) in the same pass;
* the likelihoods: per-row loss and its gradient in one pass over the
  pixels, with one ``exp`` per pixel shared by softplus and sigmoid (an exp
  and a log1p that vectorise, ``numba_math.py``);
* ``gaussian_latent`` (+ backward): reparameterization, KL and its
  one-sample estimate together;
* ``adam_update``: one sweep over the flat parameter buffer.

The products come from NumPy's BLAS (``gemm``), and the kernels run on the
calling thread: BLAS already uses every core, and a second thread pool
spinning beside OpenBLAS's made steps several times slower on 2 cores.

The large kernels (bias + activation and its backward, the Bernoulli
likelihoods, Adam) also have a pool variant, ``NAME_pool``, whose loops run in
Numba's thread pool: the backend ``numba_pool`` (``numba_pool.py``) is made of
them and of the hand-written GEMM, which runs in that same pool: one pool for
the whole step. Each pool variant splits its work into pieces whose sizes
never depend on the thread count (whole rows where it sums rows; blocks of
``ROWS_PER_BLOCK`` rows for the bias gradient's column sums, added in block
order as the serial kernel adds them), so results do not depend on the thread
count. (Its copy of a loop is compiled apart from the serial kernel's, and
fastmath lets LLVM vectorise each copy's sums its own way: the Bernoulli loss
of a row may differ from the serial kernel's in the last bit, and did between
a freshly compiled and a cached copy; gradients and updates are elementwise
or summed in a fixed order and do not.)

Compilation: ``cache=True`` (compiled code is kept on disk and reloaded in
later processes). Numba writes the cache next to this file, or, where that
is read-only, in a user cache directory; where neither can be written the
kernels compile in memory instead of failing (:data:`CACHE_ENABLED`, decided
once at import). Every kernel compiles with ``kernels.FASTMATH``.

Constants are float32 where they are exact (0, 0.5, 1, 2) so that float32
kernels stay in float32; float64 inputs promote them losslessly.
"""
from __future__ import annotations

import math
import threading

import numba as nb
import numpy as np

from . import numpy as numpy_backend
from .contract import ACTIVATIONS, FASTMATH, HALF_LOG_2PI, check_activation, temporaries
from .numba_math import PIECEWISE_LINEAR, exp_nonpositive, log1p_unit, piecewise_linear

ZERO, HALF, ONE, TWO = np.float32(0), np.float32(0.5), np.float32(1), np.float32(2)
ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, SOFTPLUS, ELU = (ACT_CODE[a] for a in ACTIVATIONS)

gemm = numpy_backend.gemm
repeat_rows = numpy_backend.repeat_rows
sum_squares = numpy_backend.sum_squares


def _cache_location_found() -> bool:
    """Whether Numba finds a writable cache location for this file's kernels.

    Making a cached dispatcher looks for one (beside this file, else in the
    user's cache directory) and compiles nothing.
    """
    try:
        nb.njit(cache=True)(lambda: None)
    except RuntimeError:          # "cannot cache function ...: no locator available"
        return False
    return True


#: compiled kernels are kept on disk; False where no cache location can be written
CACHE_ENABLED = _cache_location_found()
#: elements from which a pool variant is worth a parallel region (its start costs a few us)
POOL_MIN_ELEMENTS = 32_768


def _chunks(elements, pool) -> int:
    """Chunks of the pool variant of a kernel over ``elements`` numbers, one per
    thread; 0 for the serial variant (always without ``pool``). Which variant
    runs depends on the sizes alone, never on the thread count, and each gives
    the same numbers for any number of chunks: so results do not change with
    the threads."""
    return nb.get_num_threads() if pool and elements >= POOL_MIN_ELEMENTS else 0


def _jit(inline=False, parallel=False):
    """njit with the shared flags.

    ``inline`` marks loop bodies, inlined into a serial and a pool kernel
    (see below); ``parallel`` the pool variants of the kernels.
    """
    return nb.njit(cache=CACHE_ENABLED, fastmath=set(FASTMATH), nogil=True, error_model="numpy",
                   parallel=parallel, inline="always" if inline else "never")


#: what a kernel gets in place of per-row weights it was not given (a constant, never written)
_NO_ROWS = {np.dtype(t): np.zeros(1, t) for t in (np.float32, np.float64)}


def _rows(w, like):
    """``(weights, given)``: per-row weights as a 1-D array in ``like``'s dtype, or a placeholder."""
    if w is None:
        return _NO_ROWS[like.dtype], False
    return np.asarray(w, like.dtype), True


# --------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------
# A loop whose body branches on the activation code does not vectorise, and
# one kernel holding a copy of the loop per activation takes seconds to
# compile. So the loops take the code as an argument and are inlined
# (``_jit(inline=True)``) into kernels made once per activation
# (``_ActivationKernels``), where the code is a constant: LLVM folds the
# branches away and vectorises the loop, and a run compiles only the
# activations it uses. Activations that need exp or tanh per element run on
# NumPy's SIMD loops in the forward pass (the numpy backend), which beat the
# scalar libm calls compiled code would make.

@_jit(inline=True)
def _act_grad(y, code, alpha):
    """f'(a) from y = f(a), for the activations with a backward kernel of their own (leaky ReLU,
    which is ReLU's and the identity's too, tanh, sigmoid, ELU; see _SLOPE_BELOW_ZERO)."""
    if code == LEAKY_RELU:
        return ONE if y > ZERO else alpha
    if code == TANH:
        return ONE - y * y
    if code == SIGMOID:
        return y * (ONE - y)
    return ONE if y > ZERO else y + alpha           # ELU


# Each kernel is a body, inlined into two dispatchers: serial over the whole
# arrays, and parallel, the pool's threads sharing the chunks, each given views
# of its chunk. Inside a parallel region LLVM vectorised a loop over a view's
# length but not one over bounds computed there: bodies given (lo, hi) ran
# 4-25x slower than the serial kernel on 2 threads, given views up to 2x
# faster. A body compiled on its own and called from the region was inlined
# back by LLVM and as slow.
#
# The bias gradient sums the columns of d_a. Both variants sum them the same
# way, so they give the same numbers on any number of threads: each block of
# ROWS_PER_BLOCK rows sums its rows in order into a row of partial sums, then
# the partial sums are added in block order. (Summing whole columns instead
# made each thread read a block of columns of every row, rows the other
# threads had just written: 3-4x slower inside a training step than alone.)

#: rows per block of the bias gradient's partial sums: a fixed number, never the thread count
ROWS_PER_BLOCK = 16

# In place. The training step calls these kernels with the output the input
# (``bias_activation(a, ..., out=a)``, ``activation_backward(..., d_y, out=d_y)``).
# Given one array under two names, a loop cannot know they are one: LLVM checks
# at run time that the output does not overlap the input, the check fails, and
# the loop runs unvectorised, 3-5x slower. So the wrappers pass None for the
# second name and the kernel reads and writes the one array it has, through one
# view per chunk (two views of one chunk fail the same check). Numba compiles
# that variant apart, dropping the branch on None.


@_jit(inline=True)
def _bias_act_rows(a, b, code, alpha, out):
    n, m = a.shape
    for i in range(n):
        for j in range(m):
            out[i, j] = piecewise_linear(a[i, j] + b[j], code, alpha)


@_jit(inline=True)
def _act_backward_rows(y, d_y, code, alpha, out, part, want_d_b, row_scale, scaled):
    """``out = d_y * f'(y)`` (times each row's weight) for a block of rows; ``part``
    receives the block's column sums, added in row order."""
    if want_d_b:
        part[:] = ZERO
    for i in range(y.shape[0]):
        scale = row_scale[i] if scaled else ONE
        y_i, d_i, out_i = y[i], d_y[i], out[i]
        for j in range(y_i.shape[0]):
            d = d_i[j] * _act_grad(y_i[j], code, alpha)
            if scaled:
                d *= scale
            out_i[j] = d
            if want_d_b:
                part[j] += d


@_jit(inline=True)
def _add_partial_sums(parts, d_b):
    """``d_b = parts[0] + parts[1] + ...``, in that order. (Loops, not ``d_b[:] = parts[0]``:
    an array-to-array slice assignment compiles its shape-mismatch error message, 2 s.)"""
    for j in range(d_b.shape[0]):
        d_b[j] = parts[0, j]
    for t in range(1, parts.shape[0]):
        part = parts[t]
        for j in range(d_b.shape[0]):
            d_b[j] += part[j]


@_jit(inline=True)
def _block(t, n):
    return t * ROWS_PER_BLOCK, min(n, (t + 1) * ROWS_PER_BLOCK)


#: f'(y) of a piecewise-linear activation is 1 where y > 0 and its slope below zero elsewhere,
#: leaky ReLU's ``alpha``: ReLU's is 0 and the identity's 1. Their backward passes run leaky ReLU's
#: kernel with that slope, the same numbers, so a run compiles one kernel for the three (each
#: kernel is about 0.6 s of a cold start, the parallel variant 1.2 s).
_SLOPE_BELOW_ZERO = {RELU: 0.0, IDENTITY: 1.0}


class _ActivationKernels:
    """The compiled kernels of one activation, serial and pool.

    ``code`` is a closure constant: LLVM folds the activation's branches away
    in the inlined bodies, and a run compiles only the activations it uses.
    Numba keys its disk cache on the closure's value.
    """

    def __init__(self, code):
        # out None: in place, into a; d_y None: in place, read from out (see "In place" above)
        @_jit()
        def bias_act(a, b, alpha, out):
            _bias_act_rows(a, b, code, alpha, a if out is None else out)

        @_jit(parallel=True)
        def bias_act_pool(a, b, alpha, out, chunks):
            n = a.shape[0]
            for t in nb.prange(chunks):
                lo, hi = t * n // chunks, (t + 1) * n // chunks
                a_t = a[lo:hi]
                _bias_act_rows(a_t, b, code, alpha, a_t if out is None else out[lo:hi])

        self.bias_act, self.bias_act_pool = bias_act, bias_act_pool
        self.backward = self.backward_pool = None
        if code in _SLOPE_BELOW_ZERO or code == SOFTPLUS:      # leaky ReLU's; NumPy's
            return

        @_jit()
        def backward(y, d_y, alpha, out, d_b, want_d_b, row_scale, scaled, parts):
            n = y.shape[0]
            for t in range(parts.shape[0]):
                lo, hi = _block(t, n)
                out_t = out[lo:hi]
                _act_backward_rows(y[lo:hi], out_t if d_y is None else d_y[lo:hi], code, alpha, out_t, parts[t],
                                   want_d_b, row_scale[lo:hi], scaled)
            if want_d_b:
                _add_partial_sums(parts, d_b)

        @_jit(parallel=True)
        def backward_pool(y, d_y, alpha, out, d_b, want_d_b, row_scale, scaled, parts):
            n = y.shape[0]
            for t in nb.prange(parts.shape[0]):
                lo, hi = _block(t, n)
                out_t = out[lo:hi]
                _act_backward_rows(y[lo:hi], out_t if d_y is None else d_y[lo:hi], code, alpha, out_t, parts[t],
                                   want_d_b, row_scale[lo:hi], scaled)
            if want_d_b:            # on the calling thread: a few microseconds, and a second
                _add_partial_sums(parts, d_b)       # parallel loop cost half a second of compilation

        self.backward, self.backward_pool = backward, backward_pool


_KERNELS = {code: _ActivationKernels(code) for code in ACT_CODE.values()}
_local = threading.local()


def _partial_sums(rows, cols, dtype):
    """This caller thread's (blocks, cols) buffer for the bias gradient's partial sums, reused by
    later calls (a training step allocates nothing); (blocks, 0) where no sums are wanted."""
    key = ((rows + ROWS_PER_BLOCK - 1) // ROWS_PER_BLOCK, cols, np.dtype(dtype))
    buffers = _local.__dict__.setdefault("partial_sums", {})
    if key not in buffers:
        buffers[key] = np.empty(key[:2], dtype)
    return buffers[key]


def _bias_activation(a, b, activation, alpha, out, pool):
    code = _code(activation)
    if code not in PIECEWISE_LINEAR.values():
        return numpy_backend.bias_activation(a, b, activation, alpha, out)
    out = np.empty_like(a) if out is None else out
    kernels, chunks = _KERNELS[code], _chunks(a.size, pool)
    dst = None if out is a else out
    if chunks:
        kernels.bias_act_pool(a, b, a.dtype.type(alpha), dst, chunks)
    else:
        kernels.bias_act(a, b, a.dtype.type(alpha), dst)
    return out


def _activation_backward(y, d_y, activation, alpha, out, d_b, row_scale, pool):
    code = _code(activation)
    if code == SOFTPLUS:
        return numpy_backend.activation_backward(y, d_y, activation, alpha, out, d_b, row_scale)
    if code in _SLOPE_BELOW_ZERO:
        code, alpha = LEAKY_RELU, _SLOPE_BELOW_ZERO[code]
    out = np.empty((len(y), y.shape[1]), y.dtype) if out is None else out
    want = d_b is not None
    scale, scaled = _rows(row_scale, y)
    parts = _partial_sums(len(y), y.shape[1] if want else 0, y.dtype)
    src = None if d_y is out else d_y
    args = (y, src, y.dtype.type(alpha), out, d_b if want else out[0], want, scale, scaled, parts)
    if _chunks(y.size, pool):
        _KERNELS[code].backward_pool(*args)
    else:
        _KERNELS[code].backward(*args)
    return out


def bias_activation(a, b, activation, alpha, out=None):
    return _bias_activation(a, b, activation, alpha, out, pool=False)


def bias_activation_pool(a, b, activation, alpha, out=None):
    return _bias_activation(a, b, activation, alpha, out, pool=True)


def activation_backward(y, d_y, activation, alpha, out=None, d_b=None, row_scale=None):
    return _activation_backward(y, d_y, activation, alpha, out, d_b, row_scale, pool=False)


def activation_backward_pool(y, d_y, activation, alpha, out=None, d_b=None, row_scale=None):
    return _activation_backward(y, d_y, activation, alpha, out, d_b, row_scale, pool=True)


def _code(activation):
    return ACT_CODE[check_activation(activation)]


# --------------------------------------------------------------------------
# likelihoods
# --------------------------------------------------------------------------
# softplus(l) = max(l, 0) + log1p(e) and sigmoid(l) = (1 if l >= 0 else e) / (1 + e)
# share e = exp(-|l|). With an exp and a log1p that LLVM vectorises
# (numba_math.py) the loss and its gradient are one pass over the pixels, every
# part of which runs in the pool's threads in the pool variant. (They were three
# passes: -|l|, NumPy's exp on one core, then the loss, with log1p replaced by
# the log of products of 64 factors.)

@_jit(inline=True)
def _bernoulli_rows(logits, x, nll, d, with_grad):
    n, m = logits.shape
    for i in range(n):
        l_i, x_i, d_i = logits[i], x[i], d[i]
        s = ZERO * l_i[0]
        for j in range(m):
            l = l_i[j]
            e = exp_nonpositive(-abs(l))
            s += max(l, ZERO) - x_i[j] * l + log1p_unit(e)
            if with_grad:
                d_i[j] = (ONE if l >= ZERO else e) / (ONE + e) - x_i[j]
        nll[i] = s


@_jit()
def _bernoulli(logits, x, nll, d, with_grad):
    _bernoulli_rows(logits, x, nll, d, with_grad)


@_jit(parallel=True)
def _bernoulli_pool(logits, x, nll, d, with_grad, chunks):
    n = logits.shape[0]
    for t in nb.prange(chunks):
        lo, hi = t * n // chunks, (t + 1) * n // chunks
        _bernoulli_rows(logits[lo:hi], x[lo:hi], nll[lo:hi], d[lo:hi], with_grad)


@_jit()
def _cb_log_norm_and_grad(l):
    """log C(l) and its derivative for the continuous Bernoulli, in float64
    (the formulas and series of the numpy backend)."""
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
def _cb_correction(logits, d, nll):
    """Continuous Bernoulli on top of _bernoulli: nll -= sum log C, d -= dlogC/dl."""
    n, m = logits.shape
    for i in range(n):
        c = 0.0
        for j in range(m):
            f, g = _cb_log_norm_and_grad(logits[i, j])
            c += f
            d[i, j] -= g
        nll[i] -= c


def _loss_buffers(like, nll, grad, with_grad, scratch):
    """The nll and gradient arrays a loss kernel writes: the caller's, else new or
    (for a gradient nobody asked for) scratch ones, so one compiled loop serves both."""
    nll = np.empty(len(like), like.dtype) if nll is None else nll
    if grad is None:
        grad = np.empty_like(like) if with_grad else temporaries(scratch, "no-grad", like, 1)[0]
    return nll, grad


def _bernoulli_nll(logits, x, nll, grad, with_grad, scratch, pool):
    nll = np.empty(len(logits), logits.dtype) if nll is None else nll
    if with_grad:
        d = np.empty_like(logits) if grad is None else grad
    else:
        d = logits                  # never written: the kernel writes d only with_grad
    chunks = _chunks(logits.size, pool)
    if chunks:
        _bernoulli_pool(logits, x, nll, d, with_grad, chunks)
    else:
        _bernoulli(logits, x, nll, d, with_grad)
    return nll, (d if with_grad else None)


def _continuous_bernoulli_nll(logits, x, nll, grad, with_grad, scratch, pool):
    nll, d = _loss_buffers(logits, nll, grad, with_grad, scratch)
    _bernoulli_nll(logits, x, nll, d, True, scratch, pool)
    _cb_correction(logits, d, nll)
    return nll, (d if with_grad else None)


def bernoulli_nll(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    return _bernoulli_nll(logits, x, nll, grad, with_grad, scratch, pool=False)


def bernoulli_nll_pool(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    return _bernoulli_nll(logits, x, nll, grad, with_grad, scratch, pool=True)


def continuous_bernoulli_nll(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    return _continuous_bernoulli_nll(logits, x, nll, grad, with_grad, scratch, pool=False)


def continuous_bernoulli_nll_pool(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
    return _continuous_bernoulli_nll(logits, x, nll, grad, with_grad, scratch, pool=True)


@_jit()
def _gaussian(mean, x, inv_sigma, const, d_mean, nll):
    n, m = mean.shape
    per_pixel = inv_sigma.shape[0] == m
    for i in range(n):
        s = ZERO * mean[i, 0]
        for j in range(m):
            jj = j if per_pixel else 0
            r = (x[i, j] - mean[i, j]) * inv_sigma[jj]
            s += HALF * r * r
            d_mean[i, j] = -r * inv_sigma[jj]
        nll[i] = s + const


@_jit()
def _gaussian_log_sigma(mean, x, inv_sigma, w, d_log_sigma):
    n, m = mean.shape
    per_pixel = inv_sigma.shape[0] == m
    for j in range(d_log_sigma.shape[0]):
        d_log_sigma[j] = ZERO
    for i in range(n):
        for j in range(m):
            jj = j if per_pixel else 0
            r = (x[i, j] - mean[i, j]) * inv_sigma[jj]
            d_log_sigma[jj] += w[i] * (ONE - r * r)


def gaussian_nll(mean, x, log_sigma, nll=None, grad=None, with_grad=True, scratch=None):
    nll, d = _loss_buffers(mean, nll, grad, with_grad, scratch)
    m = mean.shape[1]
    const = m * HALF_LOG_2PI + float(log_sigma.sum()) * (m if log_sigma.size == 1 else 1)
    _gaussian(mean, x, np.exp(-log_sigma), mean.dtype.type(const), d, nll)
    return nll, (d if with_grad else None)


def gaussian_log_sigma_grad(mean, x, log_sigma, w, out=None):
    out = np.empty_like(log_sigma) if out is None else out
    _gaussian_log_sigma(mean, x, np.exp(-log_sigma), np.asarray(w, mean.dtype), out)
    return out


# --------------------------------------------------------------------------
# latent layer
# --------------------------------------------------------------------------

@_jit()
def _latent(mu, logvar, eps, z, kl, kl_sample):
    n, k = mu.shape
    s = eps.shape[0] // n
    for i in range(n):
        acc = ZERO * mu[i, 0]
        for j in range(k):
            var = math.exp(logvar[i, j])
            z[i, j] = mu[i, j] + math.sqrt(var) * eps[i, j]
            acc += mu[i, j] * mu[i, j] + var - ONE - logvar[i, j]
        kl[i] = HALF * acc
    for t in range(1, s):
        for i in range(n):
            r = t * n + i
            for j in range(k):
                z[r, j] = mu[i, j] + math.exp(HALF * logvar[i, j]) * eps[r, j]
    for r in range(s * n):
        i = r % n
        acc = ZERO * mu[i, 0]
        for j in range(k):
            acc += z[r, j] * z[r, j] - logvar[i, j] - eps[r, j] * eps[r, j]
        kl_sample[r] = HALF * acc


@_jit()
def _latent_backward(mu, logvar, eps, z, d_z, w_kl, has_kl, w_ks, has_ks, d_mu, d_logvar):
    n, k = mu.shape
    s = eps.shape[0] // n
    if s == 1 and not has_ks:
        # the ELBO's step, without the loop over samples: LLVM vectorises it over j
        for i in range(n):
            w = w_kl[i] if has_kl else ZERO * mu[i, 0]
            for j in range(k):
                std = math.exp(HALF * logvar[i, j])
                d_mu[i, j] = d_z[i, j] + w * mu[i, j]
                d_logvar[i, j] = HALF * (d_z[i, j] * eps[i, j] * std + w * (std * std - ONE))
        return
    for i in range(n):
        w = w_kl[i] if has_kl else ZERO * mu[i, 0]
        for j in range(k):
            std = math.exp(HALF * logvar[i, j])
            g_mu = ZERO * std
            g_lv = ZERO * std
            for t in range(s):
                r = t * n + i
                g = d_z[r, j] + w_ks[r] * z[r, j] if has_ks else d_z[r, j]
                g_mu += g
                g_lv += g * eps[r, j] * std
                if has_ks:
                    g_lv -= w_ks[r]
            d_mu[i, j] = g_mu + w * mu[i, j]
            d_logvar[i, j] = HALF * (g_lv + w * (std * std - ONE))


def gaussian_latent(mu, logvar, eps, z=None, kl=None, kl_sample=None):
    z = np.empty_like(eps) if z is None else z
    kl = np.empty(mu.shape[0], mu.dtype) if kl is None else kl
    kl_sample = np.empty(eps.shape[0], mu.dtype) if kl_sample is None else kl_sample
    _latent(mu, logvar, eps, z, kl, kl_sample)
    return z, kl, kl_sample


def gaussian_latent_backward(mu, logvar, eps, z, d_z, w_kl, w_kl_sample, d_mu=None, d_logvar=None):
    d_mu = np.empty_like(mu) if d_mu is None else d_mu
    d_logvar = np.empty_like(mu) if d_logvar is None else d_logvar
    w_kl, has_kl = _rows(w_kl, mu)
    w_ks, has_ks = _rows(w_kl_sample, mu)
    _latent_backward(mu, logvar, eps, z, d_z, w_kl, has_kl, w_ks, has_ks, d_mu, d_logvar)
    return d_mu, d_logvar


# --------------------------------------------------------------------------
# softmax, ranges
# --------------------------------------------------------------------------

@_jit()
def _log_softmax(logits, out):
    n, m = logits.shape
    for i in range(n):
        top = logits[i, 0]
        for j in range(1, m):
            top = max(top, logits[i, j])
        acc = ZERO * top
        for j in range(m):
            acc += math.exp(logits[i, j] - top)
        shift = top + math.log(acc)
        for j in range(m):
            out[i, j] = logits[i, j] - shift


@_jit()
def _log_softmax_backward(log_p, d_log_p, out):
    n, m = log_p.shape
    for i in range(n):
        total = ZERO * log_p[i, 0]
        for j in range(m):
            total += d_log_p[i, j]
        for j in range(m):
            out[i, j] = d_log_p[i, j] - math.exp(log_p[i, j]) * total


def log_softmax(logits, out=None):
    out = np.empty((len(logits), logits.shape[1]), logits.dtype) if out is None else out
    _log_softmax(logits, out)
    return out


def log_softmax_backward(log_p, d_log_p, out=None):
    out = np.empty((len(log_p), log_p.shape[1]), log_p.dtype) if out is None else out
    _log_softmax_backward(log_p, d_log_p, out)
    return out


@_jit()
def _min_max(x):
    lo = x.flat[0]
    hi = lo
    nan = lo != lo
    for v in x.flat:
        lo = min(lo, v)
        hi = max(hi, v)
        nan |= v != v
    return lo, hi, nan


def min_max(x):
    """One pass over x (NumPy makes two)."""
    if x.size == 0:
        return numpy_backend.min_max(x)
    lo, hi, nan = _min_max(x)
    return (math.nan, math.nan) if nan else (float(lo), float(hi))


# --------------------------------------------------------------------------
# optimizers: one sweep over (flat) buffers
# --------------------------------------------------------------------------

@_jit(inline=True)
def _adam_body(p, g, m, v, step_size, beta1, beta2, eps, inv_sqrt_bc2, decay, grad_scale):
    for i in range(p.shape[0]):
        gi = grad_scale * g[i]
        mi = beta1 * m[i] + (ONE - beta1) * gi
        vi = beta2 * v[i] + (ONE - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)


@_jit()
def _adam(p, g, m, v, step_size, beta1, beta2, eps, inv_sqrt_bc2, decay, grad_scale):
    _adam_body(p, g, m, v, step_size, beta1, beta2, eps, inv_sqrt_bc2, decay, grad_scale)


@_jit(parallel=True)
def _adam_pool(p, g, m, v, step_size, beta1, beta2, eps, inv_sqrt_bc2, decay, grad_scale, chunks):
    n = p.shape[0]
    for t in nb.prange(chunks):
        lo, hi = t * n // chunks, (t + 1) * n // chunks
        _adam_body(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], step_size, beta1, beta2, eps, inv_sqrt_bc2, decay,
                   grad_scale)


@_jit()
def _sgd(p, g, buf, lr, momentum, weight_decay, grad_scale):
    n = p.shape[0]
    for i in range(n):
        b = momentum * buf[i] + grad_scale * g[i] + weight_decay * p[i]
        buf[i] = b
        p[i] -= lr * b


def _adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale, pool):
    t = p.dtype.type
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    # lr * m_hat / (sqrt(v_hat) + eps) == (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
    args = (p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), t(lr / bc1), t(beta1), t(beta2),
            t(eps), t(1 / math.sqrt(bc2)), t(1 - lr * weight_decay), t(grad_scale))
    chunks = _chunks(p.size, pool)
    if chunks:
        _adam_pool(*args, chunks)
    else:
        _adam(*args)


def adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale, scratch=None):
    _adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale, pool=False)


def adam_update_pool(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale, scratch=None):
    _adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale, pool=True)


def sgd_update(p, g, buf, lr, momentum, weight_decay, grad_scale, scratch=None):
    t = p.dtype.type
    _sgd(p.reshape(-1), g.reshape(-1), buf.reshape(-1), t(lr), t(momentum), t(weight_decay), t(grad_scale))


# --------------------------------------------------------------------------
# compile ahead of use
# --------------------------------------------------------------------------

def warmup(dtypes=(np.float32, np.float64)) -> None:
    """Compile (or load from the on-disk cache) every kernel for ``dtypes``."""
    for dtype in dtypes:
        a = np.full((2, 3), 0.5, dtype)
        b = np.zeros(3, dtype)
        w = np.ones(2, dtype)
        y = bias_activation(a, b, "relu", 0.0)
        activation_backward(y, a, "relu", 0.0, d_b=b.copy())
        activation_backward(y, a, "identity", 0.0, d_b=b.copy(), row_scale=w)
        activation_backward(y, a, "relu", 0.0)
        continuous_bernoulli_nll(a, a)
        gaussian_nll(a, a, np.zeros(1, dtype))
        gaussian_log_sigma_grad(a, a, np.zeros(1, dtype), w)
        z, _, _ = gaussian_latent(a, a, a)
        gaussian_latent_backward(a, a, a, z, z, w, None)
        gaussian_latent_backward(a, a, a, z, z, None, w)
        log_softmax_backward(log_softmax(a), a)
        min_max(a)
        flat = np.ones(4, dtype)
        adam_update(flat.copy(), flat, flat.copy(), flat.copy(), 1e-3, 0.9, 0.999, 1e-8, 1, 0.0, 1.0)
        sgd_update(flat.copy(), flat, flat.copy(), 1e-3, 0.9, 0.0, 1.0)


def describe() -> dict:
    """What this backend runs with: versions, threads, cache state."""
    return {"numba": nb.__version__, "numba_threads": nb.get_num_threads(),
            "kernels_parallel": False, "cache": CACHE_ENABLED,
            "gemm": "numpy.matmul (BLAS)", "threading_layer": _threading_layer()}


def _threading_layer():
    try:
        return nb.threading_layer()
    except ValueError:                   # no parallel kernel has run in this process
        return f"not started (configured: {nb.config.THREADING_LAYER})"
