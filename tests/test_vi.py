"""Variational-inference lessons: special functions, closed forms against
quadrature, bounds, unbiased gradient estimators, KL directions, mixtures.

Monte Carlo tolerances: an unbiased estimator's mean over N samples differs
from the truth by a normal error with standard deviation std/sqrt(N); we
allow 4 standard errors (a false alarm once in about 16,000 comparisons, and
the seeds are fixed). A biased estimator (say, a sign error) is off by many
hundreds of standard errors at these N.
"""
import math

import numpy as np
import pytest

from scratchvae.lessons import special, vi
from scratchvae.gradcheck import numerical_gradient

def fd_jacobian(f, theta):
    """d f()_j / d theta_i by central differences, as (len(f()), len(theta))."""
    return numerical_gradient(f, theta, h=1e-6).T


EULER_GAMMA = 0.5772156649015329
ZETA3 = 1.2020569031595942


# --------------------------------------------------------------------------
# Special functions
# --------------------------------------------------------------------------

ARGS = np.array([1e-6, 0.013, 0.5, 1.0, 1.5, 2.0, 3.7, 9.99, 10.0, 10.01, 47.3, 1e4])


def test_log_gamma_matches_the_standard_library():
    expected = np.array([math.lgamma(v) for v in ARGS])
    np.testing.assert_allclose(special.log_gamma(ARGS), expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("fn, x, expected", [
    (special.digamma, 1.0, -EULER_GAMMA),
    (special.digamma, 0.5, -EULER_GAMMA - 2 * math.log(2)),
    (special.digamma, 2.0, 1 - EULER_GAMMA),
    (special.trigamma, 1.0, math.pi ** 2 / 6),
    (special.trigamma, 0.5, math.pi ** 2 / 2),
    (special.trigamma, 2.0, math.pi ** 2 / 6 - 1),
    (lambda x: special.polygamma(2, x), 1.0, -2 * ZETA3),
    (lambda x: special.polygamma(2, x), 0.5, -14 * ZETA3),
    (lambda x: special.polygamma(3, x), 1.0, math.pi ** 4 / 15),
])
def test_polygamma_known_values(fn, x, expected):
    assert fn(x) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("x", [0.07, 0.8, 3.3, 9.7, 10.2, 250.0])
def test_each_function_is_the_derivative_of_the_previous(x):
    h = 1e-5 * x
    chain = [special.log_gamma, special.digamma, special.trigamma, lambda v: special.polygamma(2, v)]
    for f, df in zip(chain, chain[1:]):
        fd = (f(x + h) - f(x - h)) / (2 * h)
        assert abs(fd - df(x)) <= 1e-6 * abs(df(x))


def test_special_functions_refuse_nonpositive_arguments():
    for fn in (special.log_gamma, special.digamma, special.trigamma):
        with pytest.raises(ValueError, match="x > 0"):
            fn(np.array([1.0, 0.0]))
        with pytest.raises(ValueError, match="x > 0"):
            fn(np.nan)
    with pytest.raises(ValueError, match="order"):
        special.polygamma(0, 1.0)


def test_log_norm_cdf_in_both_tails():
    x = np.array([-38.0, -20.0, -19.999, -5.0, 0.0, 1.0, 8.0])
    expected = [math.log(0.5 * math.erfc(-v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(special.log_norm_cdf(x), expected, rtol=1e-10)
    # beyond erfc's range: log Phi(x) ~ -x^2/2 - log(-x) - log(2 pi)/2
    x = -1e4
    assert special.log_norm_cdf(x) == pytest.approx(-x * x / 2 - math.log(-x) - 0.5 * math.log(2 * math.pi), rel=1e-12)


# --------------------------------------------------------------------------
# Lesson 1: the exact evidence and posterior, the ELBO bound and its gap
# --------------------------------------------------------------------------

@pytest.mark.parametrize("x", [1.5, 0.0, -3.0, 6.0])
def test_evidence_closed_form_matches_quadrature(x):
    joint = vi.exponential_prior_normal_likelihood(x)
    assert joint.log_normalizer() == pytest.approx(vi.log_integral_positive(joint.log_density), abs=1e-12)
    assert vi.exponential_prior_log_evidence(x) == pytest.approx(joint.log_normalizer(), abs=1e-13)
    # the posterior is N(x - 1, 1) truncated to z >= 0
    z = np.linspace(0.0, 8.0, 801)
    post = np.exp(joint.normalized_log_density(z))
    inside = (z > 0) & (z < 8)
    ratio = post[inside] / np.exp(special.norm_logpdf(z[inside], x - 1.0, 1.0))
    np.testing.assert_allclose(ratio, 1 / special.norm_cdf(x - 1.0), rtol=1e-10)


@pytest.mark.parametrize("x", [1.5, 0.0])
@pytest.mark.parametrize("q", [vi.LogNormal(0.1, -0.4), vi.LogNormal(-1.5, 0.3), vi.Gamma(0.5, 0.2), vi.Gamma(-0.7, 1.1)])
def test_elbo_gap_is_the_kl_to_the_posterior(x, q):
    joint = vi.exponential_prior_normal_likelihood(x)
    log_px, elbo = joint.log_normalizer(), q.elbo(joint)
    kl = vi.kl_quadrature(q, joint.normalized_log_density)
    assert elbo < log_px
    assert log_px - elbo == pytest.approx(kl, abs=1e-12)


def test_a_gaussian_q_has_elbo_minus_infinity():
    joint = vi.exponential_prior_normal_likelihood(1.5)
    q = vi.Normal(0.5, -1.0)
    assert q.elbo(joint) == -math.inf
    # and a Monte Carlo estimate agrees: samples below 0 have log p(x, z) = -inf
    z = q.sample(np.random.default_rng(0), 1000)
    assert np.any(z < 0) and np.mean(joint.log_density(z) - q.log_q(z)) == -math.inf


@pytest.mark.parametrize("x", [1.5, 0.0])
@pytest.mark.parametrize("family", [vi.LogNormal, vi.Gamma])
def test_fit_finds_the_elbo_maximum_below_the_evidence(x, family):
    joint = vi.exponential_prior_normal_likelihood(x)
    q = family(0.0, 0.0)
    start = q.elbo(joint)
    vi.fit(q, lambda q, rng: q.d_elbo(joint), steps=3000, lr=0.02)
    best = q.elbo(joint)
    assert start < best < joint.log_normalizer()
    assert np.linalg.norm(q.d_elbo(joint)) < 1e-3     # a stationary point of the exact ELBO
    for step in np.vstack([np.eye(2), -np.eye(2)]) * 0.01:       # and a maximum
        assert family(*(q.theta + step)).elbo(joint) < best


@pytest.mark.parametrize("q, target", [
    (vi.LogNormal(0.2, -0.5), vi.exponential_prior_normal_likelihood(1.5)),
    (vi.Gamma(0.7, 0.3), vi.exponential_prior_normal_likelihood(0.0)),
    (vi.Normal(0.3, -0.2), vi.normal_prior_normal_likelihood(0.8)),
    (vi.Gamma(1.2, -0.3), vi.normal_target(3.0, 1.0)),
])
def test_exact_elbo_gradient_against_finite_differences(q, target):
    fd = numerical_gradient(lambda: q.elbo(target), q.theta, h=1e-6)
    np.testing.assert_allclose(q.d_elbo(target), fd, rtol=1e-6)


def test_normal_normal_evidence_is_the_marginal_normal():
    # x ~ N(0, s0^2 + s^2) when z ~ N(0, s0^2), x | z ~ N(z, s^2)
    joint = vi.normal_prior_normal_likelihood(0.8, prior_std=1.3, noise_std=0.6)
    assert joint.log_normalizer() == pytest.approx(special.norm_logpdf(0.8, 0.0, math.hypot(1.3, 0.6)), abs=1e-13)


# --------------------------------------------------------------------------
# Lesson 2: every gradient estimator is unbiased; variances
# --------------------------------------------------------------------------

CASES = {
    "lognormal, lesson 1": (vi.LogNormal(0.2, -0.5), vi.exponential_prior_normal_likelihood(1.5)),
    "gamma, lesson 1": (vi.Gamma(0.7, 0.3), vi.exponential_prior_normal_likelihood(1.5)),
    "gamma, alpha < 1": (vi.Gamma(-0.4, 0.1), vi.exponential_prior_normal_likelihood(0.0)),
    "normal, normal-normal": (vi.Normal(0.3, -0.2), vi.normal_prior_normal_likelihood(0.8)),
}


def _estimators(q):
    out = {"score": lambda t, q, r, n: vi.score_function_gradient(t, q, r, n),
           "score + control variate": lambda t, q, r, n: vi.score_function_gradient(t, q, r, n, True)}
    if hasattr(q, "reparam"):
        out["reparameterization"] = vi.reparam_gradient
    if isinstance(q, vi.Gamma):
        out["G-REP"] = vi.grep_gradient
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_estimators_are_unbiased(case):
    q, target = CASES[case]
    exact = q.d_elbo(target)
    n = 200_000
    for name, estimator in _estimators(q).items():
        g = estimator(target, q, np.random.default_rng(1), n)
        assert g.shape == (n, 2)
        stderr = g.std(axis=0) / math.sqrt(n)
        assert np.all(np.abs(g.mean(axis=0) - exact) < 4 * stderr), (name, g.mean(axis=0), exact, stderr)


@pytest.mark.parametrize("case", list(CASES))
def test_the_optimal_control_variate_never_adds_variance(case):
    # Var((f - a) h) is minimised at a* = E[f h^2]/E[h^2]; a = 0 is one choice,
    # so with a* the variance is at most the plain score's (up to the error of
    # estimating a* and of the sample variances, a few per cent at this n).
    q, target = CASES[case]
    n = 100_000
    plain = vi.score_function_gradient(target, q, np.random.default_rng(2), n).var(axis=0)
    with_cv = vi.score_function_gradient(target, q, np.random.default_rng(2), n, True).var(axis=0)
    assert np.all(with_cv <= 1.02 * plain)


def test_a_wrong_gradient_is_caught():
    # the unbiasedness check has power: drop G-REP's correction term and it fails
    q, target = CASES["gamma, lesson 1"]
    rng = np.random.default_rng(1)
    z = q.sample(rng, 200_000)
    dz, _ = q.transform_grads(q.standardize(z))
    g_rep_only = target.d_log_density(z)[:, None] * dz + q.d_entropy()
    stderr = g_rep_only.std(axis=0) / math.sqrt(len(z))
    assert np.any(np.abs(g_rep_only.mean(axis=0) - q.d_elbo(target)) > 10 * stderr)


def test_grep_transform_gradients_against_finite_differences():
    q = vi.Gamma(0.3, -0.6)
    z = q.sample(np.random.default_rng(3), 1000)
    eps = q.standardize(z)
    dz, d_log_jac = q.transform_grads(eps)

    def transform():           # z = T(eps; theta) at fixed eps
        alpha = q.params()[0]
        return np.exp(eps * np.sqrt(special.trigamma(alpha)) + special.digamma(alpha) - q.theta[1])

    np.testing.assert_allclose(transform(), z, rtol=1e-12)       # T inverts the standardisation
    np.testing.assert_allclose(dz, fd_jacobian(transform, q.theta), rtol=1e-6, atol=1e-12)

    def log_jacobian():        # log |dT/d eps| = log z + log psi'(alpha) / 2
        return np.log(transform()) + 0.5 * np.log(special.trigamma(q.params()[0]))

    np.testing.assert_allclose(d_log_jac, fd_jacobian(log_jacobian, q.theta), rtol=1e-6, atol=1e-9)


class _ConstantTarget:
    """``log p(x, z) = 1`` for every z: G-REP's reparameterization term is then
    0 and its correction term is the score of the noise density alone."""

    @staticmethod
    def log_density(z):
        return np.ones_like(z)

    @staticmethod
    def d_log_density(z):
        return np.zeros_like(z)


@pytest.mark.parametrize("theta", [(0.3, -0.6), (-0.4, 0.1), (2.0, 1.0)])
def test_grep_correction_is_the_score_of_the_noise_density(theta):
    # What grep_gradient computes, per sample: f'(z) dT/dtheta + f(z) d log q_eps/dtheta
    # + grad H with f = log p(x, z). With f = 1, subtracting grad H leaves
    # d log q_eps(eps; theta)/dtheta at fixed eps, checked here against finite
    # differences of the noise density written out independently: u = log z has
    # log density alpha log beta - log Gamma(alpha) + alpha u - beta e^u, and
    # eps = (u - psi(alpha) + log beta)/sqrt(psi'(alpha)).
    q = vi.Gamma(*theta)
    score_eps = vi.grep_gradient(_ConstantTarget, q, np.random.default_rng(9), 2000) - q.d_entropy()
    eps = q.standardize(q.sample(np.random.default_rng(9), 2000))

    def log_q_eps():
        alpha, beta = np.exp(q.theta)
        psi1 = special.trigamma(alpha)
        u = eps * np.sqrt(psi1) + special.digamma(alpha) - np.log(beta)
        return alpha * np.log(beta) - special.log_gamma(alpha) + alpha * u - beta * np.exp(u) + 0.5 * np.log(psi1)

    np.testing.assert_allclose(score_eps, fd_jacobian(log_q_eps, q.theta), rtol=1e-5, atol=1e-7)
    # eps's distribution does not depend on beta: no correction on log beta, sample by sample
    assert np.all(np.abs(score_eps[:, 1]) < 1e-10)
    # a score has mean 0 (here within 4 standard errors)
    assert abs(score_eps[:, 0].mean()) < 4 * score_eps[:, 0].std() / math.sqrt(len(eps))


def test_score_function_is_the_gradient_of_log_q():
    for q in (vi.Normal(0.3, -0.2), vi.LogNormal(0.2, -0.5), vi.Gamma(0.4, 0.3)):
        z = q.sample(np.random.default_rng(4), 50)
        np.testing.assert_allclose(q.score(z), fd_jacobian(lambda: q.log_q(z), q.theta), rtol=1e-6, atol=1e-9)


def test_reparam_jacobian_against_finite_differences():
    eps = np.random.default_rng(8).standard_normal(50)
    for q in (vi.Normal(0.3, -0.2), vi.LogNormal(0.2, -0.5)):
        np.testing.assert_allclose(q.reparam(eps)[1], fd_jacobian(lambda: q.reparam(eps)[0], q.theta),
                                   rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------
# Lesson 3: forward and reverse KL
# --------------------------------------------------------------------------

MIXTURE = vi.GaussianMixture1D([0.4, 0.6], [-2.0, 2.5], [0.6, 0.8])


def test_mixture_score_against_finite_differences():
    x, h = np.linspace(-5, 5, 41), 1e-6
    fd = (MIXTURE.log_density(x + h) - MIXTURE.log_density(x - h)) / (2 * h)
    np.testing.assert_allclose(MIXTURE.d_log_density(x), fd, rtol=1e-6, atol=1e-9)


def test_forward_kl_fit_is_moment_matching():
    rng = np.random.default_rng(0)
    q = vi.Normal(0.0, 0.0)

    def forward_kl_gradient(q, rng):
        # -grad KL(p || q) = E_p[grad log q(x)], x ~ p
        x, _ = MIXTURE.sample(rng, 256)
        return q.score(x).mean(axis=0)

    vi.fit(q, forward_kl_gradient, steps=3000, lr=0.01, rng=rng)
    vi.fit(q, forward_kl_gradient, steps=1000, lr=0.001, rng=rng)
    mean, var = MIXTURE.moments()
    m, s = q.params()
    # the remaining error is Adam's noise floor with minibatches of 256:
    # under 0.015 in m and 0.7% in s^2 over four seeds
    assert m == pytest.approx(mean, abs=0.05) and s * s == pytest.approx(var, rel=0.03)


def test_reverse_kl_fits_seek_modes():
    fits = []
    for start in (-1.0, 1.0):
        q = vi.Normal(start, 0.0)
        vi.fit(q, lambda q, rng: vi.reparam_gradient(MIXTURE, q, rng, 64).mean(axis=0),
               steps=2000, lr=0.02, rng=np.random.default_rng(5))
        fits.append(q.params())
    (m_left, s_left), (m_right, s_right) = fits
    assert m_left == pytest.approx(-2.0, abs=0.1) and s_left == pytest.approx(0.6, abs=0.1)
    assert m_right == pytest.approx(2.5, abs=0.1) and s_right == pytest.approx(0.8, abs=0.1)


# --------------------------------------------------------------------------
# Lesson 4: latent-variable models as mixtures
# --------------------------------------------------------------------------

def test_mixture_marginal_and_responsibilities():
    x = np.linspace(-8, 9, 170_001)
    assert np.trapezoid(np.exp(MIXTURE.log_density(x)), x) == pytest.approx(1.0, abs=1e-10)
    r = MIXTURE.responsibilities(np.array([-2.0, 0.3, 2.5]))
    np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-14)
    # Bayes by hand at x = 0.3
    joint = MIXTURE.weights * np.exp(special.norm_logpdf(0.3, MIXTURE.means, MIXTURE.stds))
    np.testing.assert_allclose(r[1], joint / joint.sum(), rtol=1e-13)


def test_ancestral_samples_follow_the_marginal():
    x, z = MIXTURE.sample(np.random.default_rng(6), 200_000)
    # component frequencies within 4 binomial standard errors
    freq = np.bincount(z, minlength=2) / len(z)
    assert np.all(np.abs(freq - MIXTURE.weights) < 4 * np.sqrt(MIXTURE.weights * (1 - MIXTURE.weights) / len(z)))
    mean, var = MIXTURE.moments()
    assert abs(x.mean() - mean) < 4 * math.sqrt(var / len(x))


def test_importance_sampling_beats_the_prior_for_the_marginal():
    model = vi.LatentNonlinear(x=2.5)
    log_px = model.log_marginal_quadrature()
    rng = np.random.default_rng(7)
    n = 100_000
    # naive Monte Carlo: p(x) = E_{p(z)}[p(x|z)]
    w_prior = np.exp(model.log_likelihood(rng.standard_normal(n)) - log_px)
    # importance sampling from a Gaussian q fitted by maximising the ELBO
    q = vi.Normal(0.0, -1.0)
    vi.fit(q, lambda q, rng: vi.reparam_gradient(model, q, rng, 32).mean(axis=0), steps=2000, lr=0.02)
    z = q.sample(rng, n)
    w_q = np.exp(model.log_density(z) - q.log_q(z) - log_px)
    for w in (w_prior, w_q):        # both unbiased for p(x): ratio mean 1
        assert abs(w.mean() - 1) < 4 * w.std() / math.sqrt(n)
    assert w_q.var() < 0.01 * w_prior.var()


# --------------------------------------------------------------------------
# Lesson 5: the ELBO landscape never rises above log p = 0
# --------------------------------------------------------------------------

def test_elbo_of_gamma_against_normal_target_is_below_zero():
    target = vi.normal_target(3.0, 1.0)
    assert target.log_normalizer() == pytest.approx(0.0, abs=1e-12)
    best = -math.inf
    for log_alpha in np.linspace(-1, 4, 26):
        for log_beta in np.linspace(-2, 3, 26):
            value = vi.Gamma(log_alpha, log_beta).elbo(target)
            assert value < 0
            best = max(best, value)
    assert best > -0.1      # the Gamma can come close to N(3, 1)


def test_the_elbo_maximum_does_not_match_moments():
    # Lesson 5: the ELBO is -KL(q || p), the reverse KL, and its maximum over
    # Gamma q is not the Gamma with the target's mean 3 and variance 1
    # (alpha = 9, beta = 3): that Gamma's ELBO is lower, and the maximum's
    # variance is below the target's.
    target = vi.normal_target(3.0, 1.0)
    matched = vi.Gamma(math.log(9.0), math.log(3.0))
    assert matched.moments() == pytest.approx((3.0, 10.0), rel=1e-12)      # E z = 3, E z^2 = 9 + 1
    assert np.linalg.norm(matched.d_elbo(target)) > 1e-3                   # not a stationary point
    q = vi.Gamma(0.0, 0.0)                                                 # as lesson 5 fits it
    vi.fit(q, lambda q, rng: q.d_elbo(target), steps=6000, lr=0.02)
    assert np.linalg.norm(q.d_elbo(target)) < 1e-8
    alpha, beta = q.params()
    assert q.elbo(target) > matched.elbo(target) + 1e-3
    assert alpha / beta ** 2 < 0.95                                        # variance under 1


def test_family_and_target_arguments_are_checked():
    with pytest.raises(ValueError, match="c2"):
        vi.QuadraticLogDensity(0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        vi.GaussianMixture1D([0.5, 0.6], [0, 1], [1, 1])
    with pytest.raises(ValueError, match="n >= 2"):
        vi.score_function_gradient(vi.normal_target(0, 1), vi.Normal(0, 0), np.random.default_rng(0), 1, True)
