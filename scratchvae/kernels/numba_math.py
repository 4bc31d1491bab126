"""exp and log1p that LLVM vectorises, for the likelihood kernels of ``numba.py``.

A compiled loop that calls ``math.exp`` or ``math.log1p`` makes one scalar
libm call per element, and LLVM will not vectorise the loop around it
(Numba's LLVM has no vector math library). The Bernoulli loss needs both
per pixel (``softplus(l) = max(l, 0) + log1p(e^-|l|)``), so it ran as three
passes: ``-|l|``, NumPy's SIMD ``exp`` (serial, on one core), then the loss.
These two functions are written in arithmetic LLVM vectorises, so the
whole loss is one pass, and runs in the pool's threads.

For float32 (the training dtype) they are:

* :func:`exp_nonpositive` ``e^v`` for ``v <= 0``: ``v = n ln 2 + r`` with
  ``n = round(v / ln 2)`` and ``|r| <= ln(2)/2``; ``e^r`` by its Taylor
  series to ``r^7/7!`` (truncation below ``0.35^8/8! = 5e-9``, a tenth of a
  float32 ulp); ``2^n`` built from its bits. The reduction ``v - n ln 2`` is
  done in float64, where it is exact enough without the two-constant trick
  (which fastmath's reassociation may undo). Within 1 ulp of the exact value
  (tested); where ``e^v`` is not a normal float32 (``v < -87.3``) it
  returns 0, an absolute error below ``1.2e-38``; ``e^-inf = 0``, NaN stays NaN.
* :func:`log1p_unit` ``log(1 + e)`` for ``e`` in ``[0, 1]``: ``2 atanh(u)``
  with ``u = e / (2 + e)`` in ``[0, 1/3]``, by its odd series
  ``2 (u + u^3/3 + ... + u^15/15)`` (truncation ``(1/3)^17/17 = 5e-10``).
  No cancellation for small ``e`` (``u ~ e/2``). Within 3 ulp (tested).

For float64 (gradient checks) they are libm's ``exp`` and ``log1p``, exact
to the last bit: the float32 versions are not accurate enough there.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .contract import FASTMATH

LOG2E = 1.4426950408889634        # 1 / ln 2
LN2 = 0.6931471805599453
#: below this e^v is smaller than the smallest normal float32, 2^-126 (and 2^n cannot be built from bits)
EXP_MIN_EXPONENT = -126
#: arguments below this (-inf too) are raised to it: n < -126 there, so the result is 0, not NaN
EXP_FLOOR = np.float32(-104.0)

F0, F1, F2 = np.float32(0), np.float32(1), np.float32(2)
_TAYLOR_EXP = tuple(np.float32(1 / math.factorial(i)) for i in range(8))      # 1, 1, 1/2, ..., 1/7!
_ODD_LOG = tuple(np.float32(1 / (2 * i + 1)) for i in range(8))               # 1, 1/3, ..., 1/15


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 ``bits``."""
    if bits != types.int32:
        return None
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def exp_nonpositive(v):
    """``e^v`` for ``v <= 0`` (NaN stays NaN). Called from Python, libm's ``exp``;
    in compiled code, the implementation below for the argument's type."""
    return math.exp(v)


def log1p_unit(e):
    """``log(1 + e)`` for ``e`` in ``[0, 1]``. Called from Python, libm's ``log1p``;
    in compiled code, the implementation below for the argument's type."""
    return math.log1p(e)


@overload(exp_nonpositive, fastmath=set(FASTMATH))
def _exp_nonpositive(v):
    if v != types.float32:
        return lambda v: math.exp(v)
    c = _TAYLOR_EXP

    def exp32(v):
        if v < EXP_FLOOR:                  # NaN compares false and stays NaN
            v = EXP_FLOOR
        n = np.floor(np.float32(LOG2E) * v + np.float32(0.5))
        r = np.float32(np.float64(v) - np.float64(n) * LN2)
        p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * (c[6] + r * c[7]))))))
        k = np.int32(n)
        # 2^n from its bits: exponent field n + 127, mantissa 0
        two_n = _float32_from_bits(np.int32((k + 127) << 23)) if k >= EXP_MIN_EXPONENT else F0
        return p * two_n

    return exp32


@overload(log1p_unit, fastmath=set(FASTMATH))
def _log1p_unit(e):
    if e != types.float32:
        return lambda e: math.log1p(e)
    c = _ODD_LOG

    def log1p32(e):
        u = e / (F2 + e)                   # 1 + e = (1 + u) / (1 - u)
        u2 = u * u
        return F2 * u * (c[0] + u2 * (c[1] + u2 * (c[2] + u2 * (c[3] + u2 * (c[4] + u2 * (c[5] + u2 * (
            c[6] + u2 * c[7])))))))

    return log1p32
