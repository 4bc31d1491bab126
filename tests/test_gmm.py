"""The mixture sampler: EM recovers a known mixture, never lowers the likelihood, and
samples what it fitted; fitted to a VAE's codes, it feeds ``VAE.sample``."""
import numpy as np
import pytest

import scratchvae as sv
from scratchvae.inference.gmm import GaussianMixture, fit_to_codes, parse_sampler

WEIGHTS = np.array([0.2, 0.3, 0.5])
MEANS = np.array([[-4.0, 0.0], [4.0, 0.5], [0.0, 5.0]])
COVS = np.array([[[1.0, 0.6], [0.6, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.5, -0.4], [-0.4, 0.3]]])


def _draw(n, rng):
    pick = rng.choice(3, n, p=WEIGHTS)
    return MEANS[pick] + np.einsum("nij,nj->ni", np.linalg.cholesky(COVS)[pick], rng.standard_normal((n, 2)))


def _log_density(z, weights, means, covs):
    """The mixture's density written out with inverses and determinants, one component at a time."""
    dens = np.zeros(len(z))
    for w, m, c in zip(weights, means, covs):
        diff = z - m
        maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(c), diff)
        dens += w * np.exp(-0.5 * maha) / np.sqrt(np.linalg.det(2 * np.pi * c))
    return np.log(dens)


@pytest.fixture(scope="module")
def fitted():
    z = _draw(6000, np.random.default_rng(0))
    return z, GaussianMixture(3).fit(z, np.random.default_rng(1))


def test_em_recovers_a_known_mixture(fitted):
    z, gmm = fitted
    order = [int(np.argmin(((gmm.means - m) ** 2).sum(axis=1))) for m in MEANS]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(gmm.weights[order], WEIGHTS, atol=0.03)
    np.testing.assert_allclose(gmm.means[order], MEANS, atol=0.1)
    np.testing.assert_allclose(gmm.covariances[order], COVS, atol=0.12)
    # the fit is at least as likely as the truth (EM climbs to a maximum of the likelihood)
    assert gmm.log_likelihoods[-1] >= _log_density(z, WEIGHTS, MEANS, COVS).mean() - 1e-9


def test_em_never_lowers_the_likelihood(fitted):
    _, gmm = fitted
    steps = np.diff(gmm.log_likelihoods)
    assert len(steps) >= 3 and np.all(steps >= -1e-10), steps
    assert steps[-1] < gmm.tol                    # it stopped because it converged


def test_log_prob_and_samples_are_the_fitted_mixture(fitted):
    z, gmm = fitted
    np.testing.assert_allclose(gmm.log_prob(z[:50]), _log_density(z[:50], gmm.weights, gmm.means, gmm.covariances),
                               rtol=1e-10)
    s = gmm.sample(40000, np.random.default_rng(2))
    mean = gmm.weights @ gmm.means
    se = s.std(axis=0) / np.sqrt(len(s))
    assert np.all(np.abs(s.mean(axis=0) - mean) < 4 * se)
    second = np.einsum("n,nij->ij", gmm.weights, gmm.covariances + np.einsum("ni,nj->nij", gmm.means, gmm.means))
    np.testing.assert_allclose(s.T @ s / len(s), second, rtol=0.03, atol=0.03)


def test_bad_uses_are_refused():
    with pytest.raises(ValueError, match="not fitted"):
        GaussianMixture(2).sample(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n >= 5 components"):
        GaussianMixture(5).fit(np.zeros((3, 2)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="integer >= 1"):
        GaussianMixture(0)
    assert parse_sampler("prior") == 0 and parse_sampler("gmm:10") == 10
    for bad in ("gmm", "gmm:0", "gmm:x", "flow:3"):
        with pytest.raises(ValueError, match="prior or gmm:N"):
            parse_sampler(bad)


def test_fitted_to_a_vae_s_codes_it_feeds_the_decoder():
    rng = np.random.default_rng(3)
    model = sv.VAE(12, [8], 2, seed=1)
    x = rng.random((300, 12)).astype(np.float32)
    gmm = fit_to_codes(model, x, 3, np.random.default_rng(4), batch_size=64)
    codes = model.embed(x)
    np.testing.assert_allclose(gmm.weights @ gmm.means, codes.mean(axis=0), atol=1e-4)   # EM keeps the mean
    samples = model.sample(7, np.random.default_rng(5), sampler=gmm)
    assert samples.shape == (7, 12) and samples.dtype == np.float32
    z = gmm.sample(7, np.random.default_rng(5))
    np.testing.assert_allclose(samples, model.decode(z.astype(np.float32)), rtol=1e-6)
    with pytest.raises(ValueError, match="conditional"):
        fit_to_codes(sv.VAE(12, [8], 2, context_dim=3), x, 3, rng)
