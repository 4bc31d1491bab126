"""Likelihoods: gradients against finite differences, samples against their means,
the continuous Bernoulli against quadrature."""
import math

import numpy as np
import pytest

from scratchvae.gradcheck import gradcheck
from scratchvae.kernels import reference
from scratchvae.model import likelihoods as D

pytestmark = pytest.mark.usefixtures("backend")

LIKELIHOODS = ["bernoulli", "continuous_bernoulli", "gaussian_fixed", "gaussian_scalar", "gaussian_pixel"]


def _data(lik, rng, shape):
    return rng.random(shape) if D.make_likelihood(lik).needs_unit_interval else rng.standard_normal(shape)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_likelihood_gradients(name):
    """d/dout and d/dparams of sum_i w_i nll_i: the loss kernel's per-row gradient weighted by w,
    and the likelihood's own parameters' backward."""
    rng = np.random.default_rng(6)
    lik = D.make_likelihood(name, sigma=0.7)
    out, x = rng.standard_normal((5, 6)) * 2, _data(name, rng, (5, 6))
    params = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in lik.init_params(6, np.float64).items()}
    w = rng.random(5)
    nll, grad = lik.nll(out, x, params)
    d_params = {k: np.empty_like(v) for k, v in params.items()}
    lik.params_backward(out, x, params, w, d_params)
    f = lambda: float(w @ lik.nll(out, x, params)[0])
    gradcheck(f, dict(params, out=out), dict(d_params, out=w[:, None] * grad)).raise_if_failed()
    loss_only, none = lik.nll(out, x, params, with_grad=False)
    assert none is None
    np.testing.assert_allclose(loss_only, nll, rtol=1e-13)


@pytest.mark.parametrize("logit_scale", [1e-7, 1e-3, 0.05, 0.1, 3.0])
def test_continuous_bernoulli_gradient_near_half(logit_scale):
    """lambda = sigmoid(l) near 0.5 is where log C(lambda) needs its series."""
    rng = np.random.default_rng(7)
    lik = D.ContinuousBernoulli()
    out = logit_scale * rng.uniform(-1, 1, (4, 5))
    x = rng.random((4, 5))
    _, d_out = lik.nll(out, x, {})
    gradcheck(lambda: float(lik.nll(out, x, {})[0].sum()), {"out": out}, {"out": d_out}).raise_if_failed()


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_likelihood_samples_have_the_likelihood_mean(name):
    rng = np.random.default_rng(8)
    lik = D.make_likelihood(name, sigma=0.5)
    out = np.array([[-3.0, -0.5, 1e-8, 0.2, 4.0, 40.0]])
    params = lik.init_params(6, np.float64)
    n = 200_000
    samples = lik.sample(np.repeat(out, n, 0), params, rng)
    mean = lik.mean(out, params)[0]
    if lik.needs_unit_interval:
        assert samples.min() >= 0 and samples.max() <= 1
    np.testing.assert_allclose(samples.mean(0), mean, atol=5 * 0.5 / math.sqrt(n))


def test_continuous_bernoulli_mean_matches_quadrature():
    lik = D.ContinuousBernoulli()
    x = (np.arange(100000) + 0.5) / 100000
    for l in [-6.0, -0.3, -1e-4, 0.0, 2e-3, 0.5, 9.0]:
        log_density = -(np.maximum(l, 0) + np.log1p(np.exp(-abs(l))) - x * l) + reference.cb_log_normalizer(np.array(l))
        mean_quad = (x * np.exp(log_density)).mean()
        assert lik.mean(np.array([[l]]), {})[0, 0] == pytest.approx(mean_quad, abs=1e-8), l


def test_unknown_likelihood_and_bad_sigma_are_refused():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        D.make_likelihood("poisson")
    with pytest.raises(ValueError, match="sigma must be a positive"):
        D.make_likelihood("gaussian_pixel", sigma=0.0)
    assert D.make_likelihood("continuous-bernoulli").name == "continuous_bernoulli"


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_log_likelihood_is_linear_in_out_plus_the_zero_image(name):
    """linear_terms: log p(x|out) = T . out + h + log p(0|out), for every out (what the
    quadrature's one matrix product relies on)."""
    rng = np.random.default_rng(9)
    lik = D.make_likelihood(name, sigma=0.7)
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in lik.init_params(6, np.float64).items()}
    out, x = rng.standard_normal((7, 6)) * 3, _data(name, rng, (5, 6))
    T, h = lik.linear_terms(x, params)
    log_p_zero = -lik.nll(out, np.zeros_like(out), params, with_grad=False)[0]
    direct = np.array([[-lik.nll(o[None], xi[None], params, with_grad=False)[0][0] for o in out] for xi in x])
    np.testing.assert_allclose(T @ out.T + h[:, None] + log_p_zero[None, :], direct, rtol=1e-12)
