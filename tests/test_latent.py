"""The latent layer: reparameterization, KL and its one-sample estimate, log-densities,
the full-covariance KL oracle (tests/naive.py), importance weights: gradients, values against Monte Carlo."""
import math

import numpy as np
import pytest

import naive
from scratchvae.gradcheck import check_op
from scratchvae.model import latent as L

pytestmark = pytest.mark.usefixtures("backend")


@pytest.mark.parametrize("samples", [1, 3])
def test_reparameterization_kl_and_kl_sample_gradients(samples):
    """sum(d_z z) + sum(a kl) + sum(b kl_sample), with s samples of each of n examples."""
    rng = np.random.default_rng(0)
    n, k = 6, 4
    mu, logvar = rng.standard_normal((n, k)), rng.standard_normal((n, k))
    eps = rng.standard_normal((samples * n, k))

    def forward(mu, logvar):
        z, kl, kl_sample, cache = L.reparameterize(mu, logvar, eps)
        return np.concatenate([z.reshape(-1), kl, kl_sample]), cache

    def backward(cache, d):
        d_z = np.ascontiguousarray(d[:samples * n * k].reshape(samples * n, k))
        w_kl, w_ks = d[samples * n * k:samples * n * k + n], d[samples * n * k + n:]
        d_mu, d_logvar = L.reparameterize_backward(cache, d_z, w_kl, w_ks)
        return {"mu": d_mu, "logvar": d_logvar}

    check_op(forward, backward, {"mu": mu, "logvar": logvar}).raise_if_failed()


def test_latent_backward_weighs_each_examples_kl():
    rng = np.random.default_rng(1)
    mu, logvar, eps, d_z = (rng.standard_normal((3, 2)) for _ in range(4))
    z, _, _, cache = L.reparameterize(mu, logvar, eps)
    w = np.array([0.3, 0.0, 2.0])
    d_mu, d_lv = L.reparameterize_backward(cache, d_z, w)
    np.testing.assert_allclose(d_mu, d_z + w[:, None] * mu, rtol=1e-12)
    np.testing.assert_allclose(d_lv, d_z * eps * np.exp(logvar / 2) / 2 + w[:, None] * (np.exp(logvar) - 1) / 2,
                               rtol=1e-12)
    np.testing.assert_allclose(z, mu + np.exp(logvar / 2) * eps, rtol=1e-12)


def test_kl_matches_monte_carlo_of_log_q_minus_log_p():
    rng = np.random.default_rng(2)
    mu, logvar = np.array([[0.7, -1.2, 0.1]]), np.array([[-0.5, 0.8, 0.0]])
    n = 400_000
    eps = rng.standard_normal((n, 3))
    z, kl, kl_sample, _ = L.reparameterize(mu, logvar, eps)      # n samples of one example
    log_q, _ = L.diag_gaussian_log_prob(z, np.repeat(mu, n, 0), np.repeat(logvar, n, 0))
    log_p = L.standard_normal_log_prob(z)
    diff = log_q - log_p
    np.testing.assert_allclose(kl_sample, diff, rtol=1e-10, atol=1e-10)
    assert abs(diff.mean() - kl[0]) < 4 * diff.std() / math.sqrt(n)


def test_importance_weights_are_a_stable_log_mean_exp_and_a_softmax():
    log_w = np.array([[0.0, -1000.0], [np.log(3.0), -1001.0]])       # 2 samples of 2 examples
    bound, w = L.importance_weights(log_w)
    np.testing.assert_allclose(bound, [np.log(2.0), -1000.0 + np.log((1 + np.exp(-1)) / 2)], rtol=1e-12)
    np.testing.assert_allclose(w, [[0.25, 1 / (1 + np.exp(-1))], [0.75, np.exp(-1) / (1 + np.exp(-1))]],
                               rtol=1e-12)


def test_diag_gaussian_log_prob_is_the_product_of_univariate_densities():
    rng = np.random.default_rng(3)
    z, mu, logvar = (rng.standard_normal((5, 3)) for _ in range(3))
    logp, _ = L.diag_gaussian_log_prob(z, mu, logvar)
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
    kl = naive.kl_mvn(mu0, S0, mu1, S1)
    assert abs(diff.mean() - kl) < 4 * diff.std() / math.sqrt(n)
    assert kl > 0
    assert naive.kl_mvn(mu0, S0, mu0, S0) == pytest.approx(0, abs=1e-12)


def test_kl_mvn_agrees_with_the_diagonal_formula_and_batches():
    rng = np.random.default_rng(5)
    mu, logvar = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    cov = np.stack([np.diag(np.exp(lv)) for lv in logvar])
    _, kl_diag, _, _ = L.reparameterize(mu, logvar, np.zeros_like(mu))
    kl_full = naive.kl_mvn(mu, cov, np.zeros(3), np.eye(3))
    np.testing.assert_allclose(kl_full, kl_diag, rtol=1e-12)


def test_kl_mvn_refuses_bad_covariances():
    with pytest.raises(ValueError, match="cov1 is not positive definite"):
        naive.kl_mvn(np.zeros(2), np.eye(2), np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="cov0 is not symmetric"):
        naive.kl_mvn(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="must be"):
        naive.kl_mvn(np.zeros(3), np.eye(2), np.zeros(2), np.eye(2))




def test_log_sum_exp_is_stable_and_its_softmax_normalised():
    a = np.array([[1000.0, 1000.0, -np.inf], [-1000.0, -1001.0, -1002.0]])
    total, weights = L.log_sum_exp(a, axis=1, with_softmax=True)
    np.testing.assert_allclose(total, [1000 + np.log(2), -1000 + np.log(1 + np.exp(-1) + np.exp(-2))], rtol=1e-14)
    np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-14)
    assert weights[0, 2] == 0
    small = np.random.default_rng(0).standard_normal((3, 4, 5))
    for axis in (0, 1, -1):
        np.testing.assert_allclose(L.log_sum_exp(small, axis=axis), np.log(np.exp(small).sum(axis=axis)), rtol=1e-13)


def test_sample_gaussian_is_the_reparameterization_of_fresh_noise():
    mu, logvar = np.array([[0.0, 5.0]]), np.array([[0.0, np.log(4.0)]])
    z = L.sample_gaussian(np.repeat(mu, 40000, 0), np.repeat(logvar, 40000, 0), np.random.default_rng(1))
    np.testing.assert_allclose(z.mean(axis=0), [0, 5], atol=0.03)
    np.testing.assert_allclose(z.std(axis=0), [1, 2], rtol=0.02)
    again = L.sample_gaussian(mu, logvar, np.random.default_rng(1))
    eps = np.random.default_rng(1).standard_normal((1, 2))
    np.testing.assert_allclose(again, mu + np.exp(logvar / 2) * eps, rtol=1e-12)
