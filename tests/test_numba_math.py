"""The exp and log1p the Numba likelihood kernels compute with (``kernels/numba_math.py``):
accurate to the ulp over their whole float32 domain, libm's own in float64."""
import math

import numpy as np
import pytest

pytest.importorskip("numba")

import numba  # noqa: E402

from scratchvae.kernels import FASTMATH  # noqa: E402
from scratchvae.kernels.numba_math import exp_nonpositive, log1p_unit  # noqa: E402


@numba.njit(fastmath=set(FASTMATH), error_model="numpy")
def _exp_all(v, out):
    for i in range(v.shape[0]):
        out[i] = exp_nonpositive(v[i])


@numba.njit(fastmath=set(FASTMATH), error_model="numpy")
def _log1p_all(e, out):
    for i in range(e.shape[0]):
        out[i] = log1p_unit(e[i])


def _ulps(got, exact):
    """|got - exact| in units of the float32 spacing at the exact value."""
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)


def _negative_floats(lo, step):
    """Every ``step``-th float32 from -0 down to ``lo`` (< 0), by their bit patterns."""
    bits = np.arange(np.float32(-0.0).view(np.int32), np.float32(lo).view(np.int32), step, dtype=np.int64)
    return bits.astype(np.int32).view(np.float32)


def test_exp_is_within_one_ulp_of_the_exact_value_where_it_is_a_normal_float32():
    v = _negative_floats(-87.33, 101)                    # 11 million arguments, every exponent
    got = np.empty_like(v)
    _exp_all(v, got)
    exact = np.exp(v.astype(np.float64))
    assert len(v) > 10_000_000
    assert _ulps(got, exact).max() <= 1.0


def test_exp_below_the_normal_range_infinity_and_nan():
    v = np.array([-87.4, -87.9, -88.0, -100.0, -103.9, -104.0, -1e4, -np.inf, -0.0, np.nan], np.float32)
    got = np.empty_like(v)
    _exp_all(v, got)
    exact = np.exp(v.astype(np.float64))
    assert np.all(np.abs(got[:8] - exact[:8]) < 1.2e-38) and np.all(got[:8] >= 0)
    assert got[6] == 0 and got[7] == 0                   # e^-inf is 0, not NaN
    assert got[8] == 1 and np.isnan(got[9])


def test_log1p_is_within_three_ulp_on_the_unit_interval():
    e = np.random.default_rng(0).random(2_000_000).astype(np.float32)
    e = np.concatenate([e, _negative_floats(-1.0, 997)[1:] * -1, [0.0, 1.0, 1e-30, 1e-45]]).astype(np.float32)
    got = np.empty_like(e)
    _log1p_all(e, got)
    exact = np.log1p(e.astype(np.float64))
    positive = exact > 0
    assert _ulps(got[positive], exact[positive]).max() <= 3.0
    assert got[~positive].tolist() == [0.0] * int((~positive).sum())
    nan = np.array([np.nan], np.float32)
    _log1p_all(nan, nan)
    assert np.isnan(nan[0])


def test_float64_is_libms_exp_and_log1p_to_the_last_bit():
    rng = np.random.default_rng(1)
    v, e = -50 * rng.random(1000), rng.random(1000)
    got_exp, got_log = np.empty_like(v), np.empty_like(e)
    _exp_all(v, got_exp)
    _log1p_all(e, got_log)
    assert got_exp.tolist() == [math.exp(x) for x in v]
    assert got_log.tolist() == [math.log1p(x) for x in e]


def test_from_python_they_are_libms():
    assert exp_nonpositive(-1.5) == math.exp(-1.5) and log1p_unit(0.25) == math.log1p(0.25)
