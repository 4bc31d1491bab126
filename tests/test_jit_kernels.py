"""Every Numba kernel against its NumPy reference, on awkward shapes, both dtypes."""
import inspect

import numpy as np
import pytest

pytest.importorskip("numba")
from scratchvae.kernels import jit as J  # noqa: E402
from scratchvae.kernels import reference as R  # noqa: E402

SHAPES = [(1, 1), (1, 7), (3, 1), (5, 13), (17, 31), (128, 400), (61, 784)]
DTYPES = [np.float32, np.float64]
TOL = {np.float32: dict(rtol=2e-5, atol=1e-5), np.float64: dict(rtol=1e-12, atol=1e-13)}


def _rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def _close(got, want, dtype):
    np.testing.assert_allclose(got, want, **TOL[dtype])
    assert got.dtype == dtype


def test_signatures_match_the_reference():
    from scratchvae.kernels import CONTRACT
    for name in CONTRACT:
        assert inspect.signature(getattr(J, name)) == inspect.signature(getattr(R, name)), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", R.ACTIVATIONS)
def test_bias_activation_and_backward(act, shape, dtype):
    rng = np.random.default_rng(hash((act, shape)) % 2**32)
    a, b, d_y = _rand(rng, shape, dtype, 3), _rand(rng, shape[1], dtype), _rand(rng, shape, dtype)
    y = J.bias_activation(a, b, act, 0.2)
    _close(y, R.bias_activation(a.copy(), b, act, 0.2), dtype)
    d_b, d_b_ref = np.empty(shape[1], dtype), np.empty(shape[1], dtype)
    got = J.activation_backward(y, d_y, act, 0.2, d_b=d_b)
    want = R.activation_backward(y, d_y, act, 0.2, d_b=d_b_ref)
    _close(got, want, dtype)
    _close(d_b, d_b_ref, dtype)
    inplace = a.copy()                               # out may alias the input
    J.bias_activation(inplace, b, act, 0.2, out=inplace)
    _close(inplace, y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["bernoulli_nll", "continuous_bernoulli_nll"])
def test_bernoulli_losses(name, shape, dtype):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    logits = _rand(rng, shape, dtype, 4)
    logits.flat[::5] *= 1e-3                          # near lambda = 1/2 too
    x = rng.random(shape).astype(dtype)
    nll, d = getattr(J, name)(logits, x, 0.25)
    nll_ref, d_ref = getattr(R, name)(logits, x, 0.25)
    _close(nll, nll_ref, dtype)
    _close(d, d_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_pixel", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_nll(shape, per_pixel, dtype):
    rng = np.random.default_rng(7)
    mean, x = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
    log_sigma = _rand(rng, shape[1] if per_pixel else 1, dtype, 0.3)
    for got, want in zip(J.gaussian_nll(mean, x, log_sigma, 0.5), R.gaussian_nll(mean, x, log_sigma, 0.5)):
        _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 20), (128, 20), (7, 2)])
def test_gaussian_latent_and_backward(shape, dtype):
    rng = np.random.default_rng(8)
    mu, logvar, eps, d_z = (_rand(rng, shape, dtype) for _ in range(4))
    for got, want in zip(J.gaussian_latent(mu, logvar, eps), R.gaussian_latent(mu, logvar, eps)):
        _close(got, want, dtype)
    for got, want in zip(J.gaussian_latent_backward(mu, logvar, eps, d_z, 0.3),
                         R.gaussian_latent_backward(mu, logvar, eps, d_z, 0.3)):
        _close(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 15, 16, 17, 1001, 652_824])
def test_optimizer_updates(size, dtype):
    rng = np.random.default_rng(9)
    state = [_rand(rng, size, dtype) for _ in range(3)] + [np.abs(_rand(rng, size, dtype))]
    ref = [s.copy() for s in state]
    J.adam_update(*state, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, step=3, weight_decay=0.1, grad_scale=0.5)
    R.adam_update(*ref, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, step=3, weight_decay=0.1, grad_scale=0.5)
    for got, want in zip(state, ref):
        _close(got, want, dtype)
    p, g, buf = state[:3]
    p2, g2, buf2 = (s.copy() for s in (p, g, buf))
    J.sgd_update(p, g, buf, 0.1, 0.9, 0.01, 2.0)
    R.sgd_update(p2, g2, buf2, 0.1, 0.9, 0.01, 2.0)
    _close(p, p2, dtype)
    _close(buf, buf2, dtype)


def test_nan_survives_fastmath():
    """The kernels never assume finite values, so a NaN in comes out as a NaN."""
    logits = np.array([[0.5, np.nan, 1.0]], np.float32)
    nll, d = J.bernoulli_nll(logits, np.full((1, 3), 0.5, np.float32), 1.0)
    assert np.isnan(nll[0]) and np.isnan(d[0, 1]) and not np.isnan(d[0, 0])
    y = J.bias_activation(np.array([[np.nan, 1.0]]), np.zeros(2), "relu", 0.0)
    assert np.isnan(y[0, 0])
