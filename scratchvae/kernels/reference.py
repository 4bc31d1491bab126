"""NumPy reference kernels: the specification every backend implements.

Every array op of the training step goes through one of the functions named
in ``scratchvae.kernels.CONTRACT``. They are written for clarity first; a
faster backend (``kernels/jit.py``) implements the same names and signatures
and is tested against these.

Conventions shared by all kernels:

* arrays are batch-major ``(batch, features)`` and C-contiguous, float32 or
  float64; a kernel computes in the dtype of its inputs;
* an ``out=`` argument, when given, receives the result (it may alias an
  input where the docstring says so) and is returned; when omitted a new array
  is allocated;
* losses are returned per example (nats, summed over features) and their
  gradients are multiplied by ``scale`` (the caller passes ``1 / batch`` to get
  the gradient of the batch mean).
"""
from __future__ import annotations

import math

import numpy as np

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus", "elu")


def _result(out, like):
    return np.empty_like(like) if out is None else out


# --------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------

def gemm(a, b, out=None, trans_a=False, trans_b=False):
    """``out = op(a) @ op(b)`` where ``op`` transposes when asked.

    Shapes: ``op(a)`` is (m, k), ``op(b)`` is (k, n), ``out`` is (m, n).
    The layouts the model needs: ``x @ W`` (forward), ``d_y @ W.T``
    (input gradient, ``trans_b``) and ``x.T @ d_y`` (weight gradient,
    ``trans_a``). NumPy hands the transposed views to BLAS without copying.
    """
    a = a.T if trans_a else a
    b = b.T if trans_b else b
    return np.matmul(a, b, out=out)


# --------------------------------------------------------------------------
# Activations: forward from the pre-activation, backward from the output
# --------------------------------------------------------------------------
# Every activation here has a derivative that can be written with its output
# y alone, so a layer caches y and never the pre-activation a.

def bias_activation(a, b, activation, alpha, out=None):
    """``y = f(a + b)``: bias add and activation in one pass.

    a: (batch, n); b: (n,); ``out`` may be ``a`` itself (in place).
    ``alpha`` is the negative slope of ``leaky_relu`` and the scale of
    ``elu``; the other activations ignore it.
    """
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
        # sigmoid(a) = (1 + tanh(a/2)) / 2: no overflow for any a
        np.multiply(y, 0.5, out=y)
        np.tanh(y, out=y)
        np.multiply(y, 0.5, out=y)
        np.add(y, 0.5, out=y)
    elif activation == "softplus":
        np.logaddexp(0, y, out=y)              # log(1 + e^a), stable
    elif activation == "elu":
        neg = y <= 0
        y[neg] = alpha * np.expm1(y[neg])
    else:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    return y


def activation_backward(y, d_y, activation, alpha, out=None, d_b=None):
    """``d_a = d_y * f'(a)``, with ``f'(a)`` written in terms of ``y = f(a)``.

    y, d_y: (batch, n). ``out`` may be ``d_y`` (in place). When ``d_b`` (n,)
    is given it also receives the bias gradient ``sum over batch of d_a``
    (a fast backend fuses that sum into the same pass).
    """
    d_a = _result(out, d_y)
    if activation == "identity":           # f' = 1
        np.copyto(d_a, d_y)
    elif activation == "relu":             # f' = [a > 0] = [y > 0]
        np.multiply(d_y, y > 0, out=d_a)
    elif activation == "leaky_relu":       # f' = 1 if y > 0 else alpha
        np.multiply(d_y, np.where(y > 0, 1.0, alpha).astype(y.dtype), out=d_a)
    elif activation == "tanh":             # f' = 1 - y^2
        np.multiply(d_y, 1 - y * y, out=d_a)
    elif activation == "sigmoid":          # f' = y (1 - y)
        np.multiply(d_y, y * (1 - y), out=d_a)
    elif activation == "softplus":         # f' = sigmoid(a) = 1 - e^-y
        np.multiply(d_y, -np.expm1(-y), out=d_a)
    elif activation == "elu":              # f' = 1 if y > 0 else alpha e^a = y + alpha
        np.multiply(d_y, np.where(y > 0, 1, y + alpha), out=d_a)
    else:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    if d_b is not None:
        np.sum(d_a, axis=0, out=d_b)
    return d_a


# --------------------------------------------------------------------------
# Likelihoods: negative log-likelihood per example and its gradient
# --------------------------------------------------------------------------

def bernoulli_nll(logits, x, scale, d_logits=None, nll=None):
    """Bernoulli on logits ``l``: ``-log p(x|l) = softplus(l) - x l``.

    logits, x: (batch, d); x in [0, 1] (grey levels are allowed, as in
    binary cross-entropy). Returns ``(nll, d_logits)``: nll (batch,) in nats,
    ``d_logits = scale * (sigmoid(l) - x)``; ``nll`` and ``d_logits`` may be
    given as outputs.

    Both terms share ``e = exp(-|l|)``, which never overflows:
    ``softplus(l) = max(l, 0) + log1p(e)`` and
    ``sigmoid(l) = 1 / (1 + e)`` for l >= 0, ``e / (1 + e)`` below.
    Written in place in reused scratch arrays: at batch 1024 NumPy's
    temporaries cost more than the arithmetic.
    """
    e, u, t = _scratch(logits, 3)        # reused between calls: no large temporaries
    np.negative(np.abs(logits, out=e), out=e)
    np.exp(e, out=e)                      # e = exp(-|l|)
    np.add(e, 1, out=u)                   # u = 1 + e
    # log1p(e) from log(u), exact to rounding: log1p(e) = log(u) - ((u - 1) - e) / u
    # (NumPy's log is vectorised, its log1p is not)
    np.subtract(u, 1, out=t)
    t -= e
    t /= u
    np.log(u, out=u)
    np.subtract(u, t, out=t)              # t = log1p(e)
    t += np.maximum(logits, 0, out=u)     # t = softplus(l)
    t -= np.multiply(x, logits, out=u)
    nll = np.sum(t, axis=1, out=nll)
    # sigmoid(l) = 1 - s for l >= 0 and s below, s = e / (1 + e) = sigmoid(-|l|):
    # that is [sign bit of l clear] - copysign(s, l), with no masked (slow) ufunc
    d = _result(d_logits, logits)
    np.add(e, 1, out=u)
    np.divide(e, u, out=d)
    np.copysign(d, logits, out=d)
    np.subtract(1, d, out=d)
    d -= np.signbit(logits)
    d -= x
    d *= scale
    return nll, d


def cb_log_normalizer(logits):
    """log C(lambda) of the continuous Bernoulli, as a function of the logit.

    With ``lambda = sigmoid(l)``, ``C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda)``
    simplifies to ``C(l) = l / tanh(l / 2)``: even in ``l``, equal to 2 at
    ``l = 0``. For ``|l| >= 0.1`` it is evaluated as
    ``log|l| - log(1 - e^-|l|) + log(1 + e^-|l|)``; below, where that
    difference of logs cancels, by its Taylor series (the integral of the
    series of :func:`cb_log_normalizer_grad`)
    ``log 2 + l^2/12 - 7 l^4/1440 + 31 l^6/90720 - 127 l^8/4838400 + 73 l^10/34214400``,
    whose next term is below 1e-18 at the switch.
    """
    a = np.abs(logits)
    small = a < 0.1
    safe = np.where(small, 1.0, a)
    direct = np.log(safe) - np.log(-np.expm1(-safe)) + np.log1p(np.exp(-safe))
    a2 = a * a
    series = math.log(2.0) + a2 * (1 / 12 - a2 * (7 / 1440 - a2 * (
        31 / 90720 - a2 * (127 / 4838400 - a2 * (73 / 34214400)))))
    return np.where(small, series, direct).astype(logits.dtype, copy=False)


def cb_log_normalizer_grad(logits):
    """d log C / d l = ``1/l - 1/sinh(l)`` (odd in l, 0 at l = 0).

    For ``|l| < 0.1`` the series
    ``l/6 - 7 l^3/360 + 31 l^5/15120 - 127 l^7/604800 + 73 l^9/3421440``
    (from the Laurent series of ``1/sinh``) avoids the cancellation of
    ``1/l`` against ``1/sinh(l)``.
    """
    a = np.abs(logits)
    small = a < 0.1
    safe = np.where(small, 1.0, a)
    e = np.exp(-safe)
    direct = 1.0 / safe - 2.0 * e / (1.0 - e * e)      # 1/sinh(a) = 2e^-a / (1 - e^-2a)
    a2 = a * a
    series = a * (1 / 6 - a2 * (7 / 360 - a2 * (31 / 15120 - a2 * (127 / 604800 - a2 * (73 / 3421440)))))
    return (np.sign(logits) * np.where(small, series, direct)).astype(logits.dtype, copy=False)


def continuous_bernoulli_nll(logits, x, scale, d_logits=None, nll=None):
    """Continuous Bernoulli on logits (Loaiza-Ganem and Cunningham 2019).

    ``-log p(x|l) = softplus(l) - x l - log C(l)``; the gradient is
    ``scale * (sigmoid(l) - x - dlogC/dl)``. Shapes as ``bernoulli_nll``.
    """
    nll, d = bernoulli_nll(logits, x, scale, d_logits, nll)
    nll -= cb_log_normalizer(logits).sum(axis=1)
    d -= scale * cb_log_normalizer_grad(logits)
    return nll, d


def gaussian_nll(mean, x, log_sigma, scale, d_mean=None, nll=None, d_log_sigma=None):
    """Gaussian with standard deviation ``sigma = exp(log_sigma)``.

    ``-log p(x|mean) = sum_j log(2 pi)/2 + log_sigma_j + (x_j - mean_j)^2 / (2 sigma_j^2)``.
    mean, x: (batch, d); log_sigma: (1,) (one sigma) or (d,) (per pixel).
    Returns ``(nll, d_mean, d_log_sigma)``, with
    ``d_mean = scale (mean - x) / sigma^2`` and
    ``d_log_sigma = scale * sum over batch (and pixels for a scalar) of 1 - r^2``
    where ``r = (x - mean) / sigma``; each may be given as an output.
    """
    inv_sigma = np.exp(-log_sigma)
    r = (x - mean) * inv_sigma                          # standardised residual
    d = x.shape[1]
    log_sigma_sum = log_sigma.sum() * (d if log_sigma.size == 1 else 1)
    nll = _result(nll, mean[:, 0])
    nll[:] = 0.5 * np.einsum("ij,ij->i", r, r) + (d * HALF_LOG_2PI + log_sigma_sum)
    d_ls = scale * (1 - r * r).sum(axis=0)
    d_log_sigma = _result(d_log_sigma, log_sigma)
    d_log_sigma[:] = d_ls.sum(keepdims=True) if log_sigma.size == 1 else d_ls
    out = _result(d_mean, mean)
    np.multiply(r, -scale * inv_sigma, out=out)
    return nll, out, d_log_sigma


# --------------------------------------------------------------------------
# Latent layer: reparameterization and KL to N(0, I), fused
# --------------------------------------------------------------------------

def gaussian_latent(mu, logvar, eps, z=None, kl=None):
    """Sample ``z = mu + exp(logvar/2) eps`` and ``KL(q || N(0, I))``.

    mu, logvar, eps: (batch, k). Returns ``(z, kl)`` with kl (batch,) in nats:
    ``KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)``.
    """
    std = np.exp(0.5 * logvar)
    z = np.multiply(std, eps, out=z)
    z += mu
    kl = np.sum(mu * mu + std * std - 1 - logvar, axis=1, out=kl)
    kl *= 0.5
    return z, kl


def gaussian_latent_backward(mu, logvar, eps, d_z, kl_weight, d_mu=None, d_logvar=None):
    """Gradients of ``L(z) + kl_weight * sum(KL)`` with respect to mu and logvar.

    ``d_mu = d_z + kl_weight * mu``;
    ``d_logvar = d_z * eps * exp(logvar/2) / 2 + kl_weight * (exp(logvar) - 1) / 2``.
    """
    std = np.exp(0.5 * logvar)
    d_mu = np.multiply(mu, kl_weight, out=d_mu)
    d_mu += d_z
    d_logvar = np.multiply(d_z * eps + kl_weight * std, 0.5 * std, out=d_logvar)
    d_logvar -= 0.5 * kl_weight
    return d_mu, d_logvar


# --------------------------------------------------------------------------
# Optimizer updates, in place
# --------------------------------------------------------------------------

def adam_update(p, g, m, v, lr, beta1, beta2, eps, step, weight_decay, grad_scale):
    """One Adam step on ``p`` in place (Kingma and Ba 2015, algorithm 1).

    ``g' = grad_scale * g``; ``m = b1 m + (1 - b1) g'``;
    ``v = b2 v + (1 - b2) g'^2``;
    ``p -= lr * m_hat / (sqrt(v_hat) + eps)`` with the bias corrections
    ``m_hat = m / (1 - b1^step)``, ``v_hat = v / (1 - b2^step)``.
    ``weight_decay`` is decoupled (AdamW): ``p *= 1 - lr * weight_decay`` first.

    Written in place around one scratch array: on a 650k-parameter model
    each temporary NumPy would otherwise make costs more than the arithmetic.
    """
    s = _scratch(g, 1)[0]
    if weight_decay:
        p *= 1 - lr * weight_decay
    np.multiply(g, grad_scale, out=s)           # s = g'
    m -= s                                      # m = b1 (m - g') + g' = b1 m + (1 - b1) g'
    m *= beta1
    m += s
    np.multiply(s, s, out=s)                    # s = g'^2, the same update for v
    v -= s
    v *= beta2
    v += s
    np.sqrt(v, out=s)                           # s = sqrt(v_hat) + eps
    s *= 1 / math.sqrt(1 - beta2 ** step)
    s += eps
    np.divide(m, s, out=s)                      # p -= lr m_hat / s
    s *= lr / (1 - beta1 ** step)
    p -= s


def _scratch(like, count):
    """``count`` arrays shaped like ``like``, kept between calls (one set per shape and dtype)."""
    key = (like.shape, like.dtype.str, count)
    if key not in _SCRATCH:
        if len(_SCRATCH) > 16:
            _SCRATCH.clear()
        _SCRATCH[key] = [np.empty_like(like) for _ in range(count)]
    return _SCRATCH[key]


_SCRATCH = {}


def sgd_update(p, g, buf, lr, momentum, weight_decay, grad_scale):
    """One SGD step with heavy-ball momentum on ``p`` in place.

    ``g' = grad_scale * g + weight_decay * p``; ``buf = momentum * buf + g'``;
    ``p -= lr * buf`` (with ``momentum = 0`` this is plain gradient descent).
    """
    d = grad_scale * g
    if weight_decay:
        d += weight_decay * p
    buf *= momentum
    buf += d
    p -= lr * buf
