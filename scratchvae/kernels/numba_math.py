"""exp and log1p that LLVM vectorises, for the likelihood kernels of ``numba.py``; and the
piecewise-linear activations, the one definition ``numba.py`` and the GEMM's epilogue share.

A compiled loop that calls ``math.exp`` or ``math.log1p`` makes one scalar
libm call per element, and LLVM will not vectorise the loop around it
(Numba's LLVM has no vector math library). The Bernoulli loss needs both
per pixel (``softplus(l) = max(l, 0) + log1p(e^-|l|)``), so it ran as three
passes: ``-|l|``, NumPy's SIMD ``exp`` (serial, on one core), then the loss.
These two functions are written in arithmetic LLVM vectorises, so the
whole loss is one pass, and runs in the pool's threads.

For float32 (the training dtype) they are:

* :func:`exp_nonpositive` ``e^x`` for ``x <= 0``: ``x = n ln 2 + r`` with
  ``n = round(x / ln 2)`` and ``|r| <= ln(2)/2``; ``e^r`` by its Taylor
  series to ``r^7/7!`` (truncation below ``0.35^8/8! = 5e-9``, a tenth of a
  float32 ulp); ``2^n`` built from its bits. The reduction ``x - n ln 2`` is
  done in float64, where it is exact enough without the two-constant trick
  (which fastmath's reassociation may undo). Within 1 ulp of the exact value
  (tested); where ``e^x`` is not a normal float32 (``x < -87.3``) it
  returns 0, an absolute error below ``1.2e-38``; ``e^-inf = 0``, NaN stays NaN.
* :func:`log1p_unit` ``log(1 + x)`` for ``x`` in ``[0, 1]``: ``2 atanh(u)``
  with ``u = x / (2 + x)`` in ``[0, 1/3]``, by its odd series
  ``2 (u + u^3/3 + ... + u^15/15)`` (truncation ``(1/3)^17/17 = 5e-10``).
  No cancellation for small ``x`` (``u ~ x/2``). Within 3 ulp (tested).

For float64 (gradient checks) they are libm's ``exp`` and ``log1p``, exact
to the last bit: the float32 versions are not accurate enough there.

Numba's on-disk cache keys a compiled kernel on its own source file: after
editing this one, delete ``kernels/__pycache__`` (or touch ``numba.py``) so
that the kernels calling these functions are compiled again.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .contract import ACTIVATIONS, FASTMATH

LOG2E = 1.4426950408889634        # 1 / ln 2
LN2 = 0.6931471805599453
#: below this e^v is smaller than the smallest normal float32, 2^-126 (and 2^n cannot be built from bits)
EXP_MIN_EXPONENT = -126
#: arguments below this (-inf too) are raised to it: n < -126 there, so the result is 0, not NaN
EXP_FLOOR = np.float32(-104.0)

F0, F1, F2 = np.float32(0), np.float32(1), np.float32(2)
_TAYLOR_EXP = tuple(np.float32(1 / math.factorial(i)) for i in range(8))      # 1, 1, 1/2, ..., 1/7!
_ODD_LOG = tuple(np.float32(1 / (2 * i + 1)) for i in range(8))               # 1, 1/3, ..., 1/15


_jit_inline = njit(fastmath=set(FASTMATH), inline="always")

#: the activations compiled code applies itself, by their index in ``contract.ACTIVATIONS``: the
#: piecewise-linear ones (the others need exp or tanh per element, which NumPy's SIMD loops do better)
PIECEWISE_LINEAR = {name: ACTIVATIONS.index(name) for name in ("identity", "relu", "leaky_relu")}
IDENTITY, RELU, LEAKY_RELU = PIECEWISE_LINEAR.values()


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits``."""
    if bits != types.int32:
        return None
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def exp_nonpositive(x):
    """``e^x`` for ``x <= 0`` (NaN stays NaN). Called from Python, libm's ``exp``;
    in compiled code, the implementation below for the argument's type."""
    return math.exp(x)


def log1p_unit(x):
    """``log(1 + x)`` for ``x`` in ``[0, 1]``. Called from Python, libm's ``log1p``;
    in compiled code, the implementation below for the argument's type."""
    return math.log1p(x)


def _float32_or_libm(libm):
    """An :func:`~numba.extending.overload` body: the decorated float32 implementation for a float32
    argument, ``libm`` for any other."""
    def choose(implementation):
        def typed(x):
            return implementation if x == types.float32 else (lambda x: libm(x))
        return typed
    return choose


@_jit_inline
def _horner(c, x):
    """``c[0] + c[1] x + c[2] x^2 + ...`` for a tuple of float32 coefficients."""
    p = c[len(c) - 1]
    for i in range(len(c) - 2, -1, -1):
        p = p * x + c[i]
    return p


@overload(exp_nonpositive, fastmath=set(FASTMATH))
@_float32_or_libm(math.exp)
def _exp32(x):
    v = x if not x < EXP_FLOOR else EXP_FLOOR         # NaN compares false and stays NaN
    n = np.floor(np.float32(LOG2E) * v + np.float32(0.5))
    r = np.float32(np.float64(v) - np.float64(n) * LN2)
    k = np.int32(n)
    # 2^n from its bits: exponent field n + 127, mantissa 0
    two_n = _float32_from_bits(np.int32((k + 127) << 23)) if k >= EXP_MIN_EXPONENT else F0
    return _horner(_TAYLOR_EXP, r) * two_n


@overload(log1p_unit, fastmath=set(FASTMATH))
@_float32_or_libm(math.log1p)
def _log1p32(x):
    u = x / (F2 + x)                       # 1 + x = (1 + u) / (1 - u)
    return F2 * u * _horner(_ODD_LOG, u * u)


@_jit_inline
def piecewise_linear(v, code, alpha):
    """``f(v)`` for the activation ``code`` of :data:`PIECEWISE_LINEAR` (``alpha``: leaky ReLU's slope);
    NaN stays NaN, as ``np.maximum`` keeps it. Called with a constant code, LLVM folds the branches
    away and vectorises the loop around it."""
    if code == RELU:
        return F0 if v <= F0 else v
    if code == LEAKY_RELU:
        return v if v > F0 else alpha * v
    return v
