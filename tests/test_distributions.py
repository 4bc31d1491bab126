"""Posterior, KL and likelihoods: gradients, values against Monte Carlo and quadrature."""
import math

import numpy as np
import pytest

from scratchvae import distributions as D
from scratchvae.gradcheck import check_op, gradcheck


def test_reparameterization_and_kl_gradients():
    rng = np.random.default_rng(0)
    mu, logvar, eps = rng.standard_normal((6, 4)), rng.standard_normal((6, 4)), rng.standard_normal((6, 4))


    def forward(mu, logvar):
        z, kl, cache = D.reparameterize_kl(mu, logvar, eps)
        return np.concatenate([z, kl[:, None]], axis=1), cache

    def backward(cache, d):
        # d[:, :4] weighs z; d[:, 4] weighs each example's KL. The kernel takes one KL weight,
        # so combine two calls: z-path only (weight 0) plus KL-path per example.
        d_mu, d_lv = D.reparameterize_kl_backward(cache, np.ascontiguousarray(d[:, :4]), 0.0)
        k_mu, k_lv = D.reparameterize_kl_backward(cache, np.zeros((6, 4)), 1.0)
        return {"mu": d_mu + d[:, 4:] * k_mu, "logvar": d_lv + d[:, 4:] * k_lv}

    check_op(forward, backward, {"mu": mu, "logvar": logvar}).raise_if_failed()


def test_fused_latent_backward_weighs_the_kl_by_kl_weight():
    rng = np.random.default_rng(1)
    mu, logvar, eps, d_z = (rng.standard_normal((3, 2)) for _ in range(4))
    _, _, cache = D.reparameterize_kl(mu, logvar, eps)
    d_mu, d_lv = D.reparameterize_kl_backward(cache, d_z, 0.3)
    np.testing.assert_allclose(d_mu, d_z + 0.3 * mu)
    np.testing.assert_allclose(d_lv, d_z * eps * np.exp(logvar / 2) / 2 + 0.3 * (np.exp(logvar) - 1) / 2)


def test_kl_matches_monte_carlo_of_log_q_minus_log_p():
    rng = np.random.default_rng(2)
    mu, logvar = np.array([[0.7, -1.2, 0.1]]), np.array([[-0.5, 0.8, 0.0]])
    n = 400_000
    eps = rng.standard_normal((n, 3))
    z, kl, _ = D.reparameterize_kl(np.repeat(mu, n, 0), np.repeat(logvar, n, 0), eps)
    log_q, _ = D.diag_gaussian_log_prob(z, np.repeat(mu, n, 0), np.repeat(logvar, n, 0))
    log_p, _ = D.diag_gaussian_log_prob(z, np.zeros_like(z), np.zeros_like(z))
    diff = log_q - log_p
    assert abs(diff.mean() - kl[0]) < 4 * diff.std() / math.sqrt(n)


def test_diag_gaussian_log_prob_gradient_and_value():
    rng = np.random.default_rng(3)
    z, mu, logvar = (rng.standard_normal((5, 3)) for _ in range(3))
    report = check_op(lambda z, mu, logvar: D.diag_gaussian_log_prob(z, mu, logvar),
                      lambda cache, d: dict(zip(("z", "mu", "logvar"), D.diag_gaussian_log_prob_backward(cache, d))),
                      {"z": z, "mu": mu, "logvar": logvar})
    report.raise_if_failed()
    logp, _ = D.diag_gaussian_log_prob(z, mu, logvar)
    s = np.exp(logvar / 2)
    want = np.log(np.exp(-0.5 * ((z - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))).sum(1)
    np.testing.assert_allclose(logp, want, rtol=1e-12)


def _random_spd(rng, k):
    A = rng.standard_normal((k, k))
    return A @ A.T + 0.5 * np.eye(k)


def test_kl_mvn_matches_monte_carlo():
    rng = np.random.default_rng(4)
    k = 3
    mu0, mu1 = rng.standard_normal(k), rng.standard_normal(k)
    S0, S1 = _random_spd(rng, k), _random_spd(rng, k)
    n = 400_000
    x = mu0 + rng.standard_normal((n, k)) @ np.linalg.cholesky(S0).T

    def logpdf(x, mu, S):
        d = x - mu
        return -0.5 * (np.einsum("ij,jk,ik->i", d, np.linalg.inv(S), d)
                       + np.linalg.slogdet(S)[1] + k * math.log(2 * math.pi))

    diff = logpdf(x, mu0, S0) - logpdf(x, mu1, S1)
    kl = D.kl_mvn(mu0, S0, mu1, S1)
    assert abs(diff.mean() - kl) < 4 * diff.std() / math.sqrt(n)
    assert kl > 0
    assert D.kl_mvn(mu0, S0, mu0, S0) == pytest.approx(0, abs=1e-12)


def test_kl_mvn_agrees_with_the_diagonal_formula_and_batches():
    rng = np.random.default_rng(5)
    mu, logvar = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    cov = np.stack([np.diag(np.exp(lv)) for lv in logvar])
    _, kl_diag, _ = D.reparameterize_kl(mu, logvar, np.zeros_like(mu))
    kl_full = D.kl_mvn(mu, cov, np.zeros(3), np.eye(3))
    np.testing.assert_allclose(kl_full, kl_diag, rtol=1e-12)


def test_kl_mvn_refuses_bad_covariances():
    with pytest.raises(ValueError, match="cov1 is not positive definite"):
        D.kl_mvn(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="cov0 is not symmetric"):
        D.kl_mvn(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="must be"):
        D.kl_mvn(np.zeros(3), np.eye(2), np.zeros(2), np.eye(2))


LIKELIHOODS = ["bernoulli", "continuous_bernoulli", "gaussian_fixed", "gaussian_scalar", "gaussian_pixel"]


def _data(lik, rng, shape):
    return rng.random(shape) if D.make_likelihood(lik).needs_unit_interval else rng.standard_normal(shape)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_likelihood_gradients(name):
    rng = np.random.default_rng(6)
    lik = D.make_likelihood(name, sigma=0.7)
    out, x = rng.standard_normal((5, 6)) * 2, _data(name, rng, (5, 6))
    params = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in lik.init_params(6, np.float64).items()}
    scale = 0.37      # the kernels return scale * d(sum of nll)/d(out), as training uses it
    _, d_out, d_p = lik.nll_and_grad(out, x, params, scale)
    f = lambda: scale * float(lik.nll_and_grad(out, x, params, scale)[0].sum())
    gradcheck(f, dict(params, out=out), dict(d_p, out=d_out)).raise_if_failed()


@pytest.mark.parametrize("logit_scale", [1e-7, 1e-3, 0.05, 0.1, 3.0])
def test_continuous_bernoulli_gradient_near_half(logit_scale):
    """lambda = sigmoid(l) near 0.5 is where log C(lambda) needs its series."""
    rng = np.random.default_rng(7)
    lik = D.ContinuousBernoulli()
    out = logit_scale * rng.uniform(-1, 1, (4, 5))
    x = rng.random((4, 5))
    _, d_out, _ = lik.nll_and_grad(out, x, {}, 1.0)
    gradcheck(lambda: float(lik.nll_and_grad(out, x, {}, 1.0)[0].sum()), {"out": out},
              {"out": d_out}).raise_if_failed()


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
        log_density = -(np.maximum(l, 0) + np.log1p(np.exp(-abs(l))) - x * l) + lik.log_normalizer(np.array(l))
        mean_quad = (x * np.exp(log_density)).mean()
        assert lik.mean(np.array([[l]]), {})[0, 0] == pytest.approx(mean_quad, abs=1e-8), l


def test_unknown_likelihood_and_bad_sigma_are_refused():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        D.make_likelihood("poisson")
    with pytest.raises(ValueError, match="sigma must be a positive"):
        D.make_likelihood("gaussian_pixel", sigma=0.0)
    assert D.make_likelihood("continuous-bernoulli").name == "continuous_bernoulli"
