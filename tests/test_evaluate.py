"""Evaluation: the importance-weighted log-likelihood against a closed form, active units."""
import math

import numpy as np
import pytest

import scratchvae as sv
from scratchvae.inference.evaluate import active_units, elbo, log_likelihood

D, K, SIGMA = 6, 2, 0.5


def _linear_gaussian(exact_posterior: bool):
    """p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I): then p(x) = N(b, W W^T + sigma^2 I).

    W has orthogonal columns, so the true posterior N(A (x - b), S) has a
    diagonal S = (I + W^T W / sigma^2)^-1, A = S W^T / sigma^2, which the
    encoder's heads can represent exactly (a linear mu head, a constant logvar).
    """
    model = sv.VAE(D, [], K, likelihood="gaussian_fixed", sigma=SIGMA, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    W = np.linalg.qr(rng.standard_normal((D, K)))[0] * np.array([2.0, 0.7])     # (d, k)
    b = rng.standard_normal(D) * 0.3
    S = np.linalg.inv(np.eye(K) + W.T @ W / SIGMA ** 2)
    A = S @ W.T / SIGMA ** 2
    model.params["dec.0.W"][...] = W.T            # the layer computes z @ W^T + b
    model.params["dec.0.b"][...] = b
    model.params["enc.mu.W"][...] = A.T
    model.params["enc.mu.b"][...] = -b @ A.T
    model.params["enc.logvar.W"][...] = 0
    model.params["enc.logvar.b"][...] = np.log(np.diag(S))
    if not exact_posterior:                        # a worse q: IW estimates must climb to log p(x)
        model.params["enc.mu.b"] += 0.4
        model.params["enc.logvar.b"] += 0.8
    cov = W @ W.T + SIGMA ** 2 * np.eye(D)
    x = rng.multivariate_normal(b, cov, size=40)
    diff = x - b
    log_px = -0.5 * (np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)
                     + np.linalg.slogdet(cov)[1] + D * math.log(2 * math.pi))
    return model, x, log_px


def test_with_the_exact_posterior_every_weight_is_p_x():
    model, x, log_px = _linear_gaussian(exact_posterior=True)
    est = log_likelihood(model, x, k=3, rng=np.random.default_rng(1))
    np.testing.assert_allclose(est, log_px, rtol=1e-10)
    # and the ELBO equals log p(x) too (the KL to the true posterior is zero); elbo()
    # samples the reconstruction term, so this holds in expectation only
    assert elbo(model, x, np.random.default_rng(2), n_samples=2000)["total"] == pytest.approx(
        -log_px.mean(), abs=0.02)


def test_estimate_rises_with_k_and_converges_to_log_p_x():
    model, x, log_px = _linear_gaussian(exact_posterior=False)
    means = {k: log_likelihood(model, x, k=k, rng=np.random.default_rng(k), chunk=128).mean()
             for k in (10, 100, 5000)}
    minus_elbo = elbo(model, x, np.random.default_rng(3), n_samples=200)["total"]
    assert -minus_elbo < means[10] < means[100] < means[5000]
    one_sample = log_likelihood(model, np.tile(x, (200, 1)), k=1, rng=np.random.default_rng(4))
    standard_error = one_sample.std() / math.sqrt(len(one_sample))
    assert abs(one_sample.mean() + minus_elbo) < 4 * standard_error   # k = 1: the ELBO in expectation
    assert means[5000] == pytest.approx(log_px.mean(), abs=0.02)
    assert means[5000] <= log_px.mean() + 0.02                  # a lower bound in expectation


def test_memory_is_bounded_by_chunks_and_results_do_not_depend_on_them():
    model, x, _ = _linear_gaussian(exact_posterior=False)
    a = log_likelihood(model, x, k=300, rng=np.random.default_rng(5), chunk=300, batch_size=40)
    seen = []
    b = log_likelihood(model, x, k=300, rng=np.random.default_rng(6), chunk=7, batch_size=9,
                       progress=lambda done, total: seen.append((done, total)))
    assert abs(a.mean() - b.mean()) < 0.05
    assert seen[-1] == (40, 40) and len(seen) == 5
    with pytest.raises(ValueError, match="k .* must be an integer >= 1"):
        log_likelihood(model, x, k=0, rng=np.random.default_rng(0))


def test_active_units_count_the_dimensions_the_encoder_uses():
    model, x, _ = _linear_gaussian(exact_posterior=True)
    count, variances = active_units(model, x)
    assert count == 2 and variances.shape == (2,)
    model.params["enc.mu.W"][:, 1] = 0              # dimension 2 now ignores x
    count, variances = active_units(model, x)
    assert count == 1 and variances[1] == pytest.approx(0, abs=1e-20)
