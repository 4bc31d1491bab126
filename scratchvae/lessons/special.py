"""Special functions in NumPy: log-gamma, digamma, polygamma, the normal CDF.

SciPy is not a dependency, so the functions the variational-inference
lessons need (the Gamma density, its entropy and its gradients; the evidence
of a truncated Gaussian) are written here, vectorised, in float64.

Method for the gamma family: shift the argument up with the recurrence
``Gamma(x + 1) = x Gamma(x)`` until it is at least ``SHIFT``, then sum the
asymptotic (Stirling) series there. With ``SHIFT = 10`` and Bernoulli
numbers up to ``B_12`` the truncation error is below 1e-15 relative.
"""
import math

import numpy as np

from ..kernels.contract import HALF_LOG_2PI

SHIFT = 10.0
# Bernoulli numbers B_2, B_4, ..., B_12
_BERNOULLI = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730)


def _positive(x, name):
    x = np.asarray(x, dtype=np.float64)
    if np.any(~(x > 0)):
        raise ValueError(f"{name} is defined here for x > 0 only; got min {np.min(x)!r} (or NaN)")
    return x


def _shifted(x):
    """``(y, steps)``: y = x + steps >= SHIFT, one shift count per element."""
    steps = np.maximum(np.ceil(SHIFT - x), 0.0)
    return x + steps, steps


def log_gamma(x):
    """``log Gamma(x)`` for x > 0.

    Stirling: ``log Gamma(y) ~ (y - 1/2) log y - y + log(2 pi)/2
    + sum_k B_2k / (2k (2k - 1) y^(2k - 1))``, after
    ``log Gamma(x) = log Gamma(x + n) - sum_{i<n} log(x + i)``.
    """
    x = _positive(x, "log_gamma")
    y, steps = _shifted(x)
    series = sum(b / (2 * k * (2 * k - 1) * y ** (2 * k - 1)) for k, b in enumerate(_BERNOULLI, start=1))
    out = (y - 0.5) * np.log(y) - y + HALF_LOG_2PI + series
    for i in range(int(steps.max(initial=0))):
        out -= np.where(steps > i, np.log(x + i), 0.0)
    return out


def digamma(x):
    """``psi(x) = d log Gamma(x) / dx`` for x > 0.

    ``psi(y) ~ log y - 1/(2y) - sum_k B_2k / (2k y^2k)``, after
    ``psi(x) = psi(x + n) - sum_{i<n} 1/(x + i)``.
    """
    x = _positive(x, "digamma")
    y, steps = _shifted(x)
    out = np.log(y) - 0.5 / y - sum(b / (2 * k * y ** (2 * k)) for k, b in enumerate(_BERNOULLI, start=1))
    for i in range(int(steps.max(initial=0))):
        out -= np.where(steps > i, 1.0 / (x + i), 0.0)
    return out


def polygamma(n, x):
    """``psi^(n)(x)``, the n-th derivative of the digamma function, n >= 1, x > 0.

    ``psi^(n)(y) ~ (-1)^(n+1) [(n-1)!/y^n + n!/(2 y^(n+1))
    + sum_k B_2k (2k+n-1)! / ((2k)! y^(2k+n))]``, after
    ``psi^(n)(x) = psi^(n)(x + m) - (-1)^n n! sum_{i<m} 1/(x + i)^(n+1)``.
    ``polygamma(1, x)`` is the trigamma function.
    """
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"polygamma order n must be an integer >= 1 (use digamma for 0), got {n!r}")
    x = _positive(x, "polygamma")
    y, steps = _shifted(x)
    f = math.factorial
    series = f(n - 1) / y ** n + f(n) / (2 * y ** (n + 1))
    series = series + sum(b * f(2 * k + n - 1) / (f(2 * k) * y ** (2 * k + n))
                          for k, b in enumerate(_BERNOULLI, start=1))
    out = (-1) ** (n + 1) * series
    for i in range(int(steps.max(initial=0))):
        out -= np.where(steps > i, (-1) ** n * f(n) / (x + i) ** (n + 1), 0.0)
    return out


def trigamma(x):
    """``psi'(x)``, see :func:`polygamma`."""
    return polygamma(1, x)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def norm_cdf(x):
    """Standard normal CDF ``Phi(x) = erfc(-x / sqrt 2) / 2`` (accurate in both tails)."""
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * np.asarray(_erfc(-x / math.sqrt(2)), dtype=np.float64)


def log_norm_cdf(x):
    """``log Phi(x)``, finite down to x = -1e150.

    Below x = -20, where erfc nears underflow, the asymptotic series
    ``log Phi(x) = -x^2/2 - log(-x) - log(2 pi)/2 + log(1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8)``
    (relative error of the last factor below 1e-11 there).
    """
    x = np.asarray(x, dtype=np.float64)
    far = x < -20
    safe = np.where(far, -20.0, x)
    direct = np.log(norm_cdf(safe))
    t = 1.0 / np.where(far, x, -20.0) ** 2
    tail = (-0.5 * x * x - np.log(np.abs(np.where(far, x, -20.0))) - HALF_LOG_2PI
            + np.log1p(t * (-1 + t * (3 + t * (-15 + t * 105)))))
    return np.where(far, tail, direct)


def norm_logpdf(x, mean=0.0, std=1.0):
    """``log N(x; mean, std^2)``."""
    r = (np.asarray(x, dtype=np.float64) - mean) / std
    return -0.5 * r * r - np.log(std) - HALF_LOG_2PI
