"""Variational inference in one dimension, small enough to solve exactly.

The pieces the lessons in ``examples/vi_*.py`` are built from:

- ``QuadraticLogDensity``: ``log p(x, z) = c0 + c1 z + c2 z^2`` on
  ``z >= lower``, as a function of z with x fixed. Every closed-form case of
  the lessons is one: the joint of an exponential prior and a normal
  likelihood (lesson 1), of a normal prior and a normal likelihood, and a
  normal target. Its integral over z (the evidence ``p(x)``), its
  normalised version (the posterior ``p(z|x)``, a truncated normal) and the
  exact ELBO of any family below follow in closed form.
- ``GaussianMixture1D`` and ``LatentNonlinear``: targets with no closed-form
  ELBO, for the KL-direction and marginal-likelihood lessons.
- Variational families ``Normal``, ``LogNormal`` and ``Gamma`` over
  unconstrained parameters ``theta``, each with samples, ``log q``, its score,
  its entropy, its first two moments and their gradients.
- Gradient estimators of ``ELBO(theta) = E_q[log p(x, z) - log q(z)]``:
  score function (black-box VI) with or without a control variate,
  reparameterization, and the generalized reparameterization (G-REP) of the
  Gamma. Each returns one estimate per sample, shape (n, P); their mean is
  the estimate, their spread its variance per sample.
- ``fit``: maximise an ELBO with the library's Adam.

Notation as in the README's maths section, in one dimension. A target is
an unnormalised density over z, written ``p(x, z)``: the joint with x held
fixed, which is the posterior ``p(z|x)`` times the constant ``p(x)``.
A target that is already normalised (lesson 3's mixture, lesson 5's
normal) is the case ``p(x) = 1``. ``p(z)`` is only ever a prior. ``q(z)``
is the approximation, ``theta`` its parameters (unconstrained: a log for
every positive parameter), ``H[q] = -E_q[log q]`` its entropy. A target
object's ``log_density(z)`` is ``log p(x, z)``, its ``d_log_density(z)``
is ``d log p(x, z)/dz``. Everything is float64.
"""
from __future__ import annotations

import math

import numpy as np

from ..optim import Adam
from .special import digamma, log_gamma, log_norm_cdf, norm_logpdf, polygamma, trigamma

LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------

class QuadraticLogDensity:
    """Unnormalised target ``log p(x, z) = c0 + c1 z + c2 z^2`` for
    ``z >= lower`` (``-inf`` below), with ``c2 < 0``; a function of z, x fixed.

    Completing the square,
    ``p(x, z) = Z N(z; m, v) / Phi((m - lower)/sqrt v)`` restricted to
    ``z >= lower``, with ``v = -1/(2 c2)``, ``m = c1 v`` and
    ``log Z = c0 + m^2/(2v) + log(2 pi v)/2 + log Phi((m - lower)/sqrt v)``.
    Z is the evidence ``p(x)`` and the normalised density ``p(x, z)/Z`` the
    posterior ``p(z|x)``, a normal N(m, v) truncated to ``z >= lower``.
    """

    def __init__(self, c0: float, c1: float, c2: float, lower: float = -math.inf):
        if not c2 < 0:
            raise ValueError(f"c2 must be negative for a normalisable density, got {c2}")
        self.c0, self.c1, self.c2, self.lower = float(c0), float(c1), float(c2), float(lower)
        self.var = -0.5 / self.c2
        self.mean = self.c1 * self.var        # of the untruncated normal

    def log_density(self, z):
        z = np.asarray(z, dtype=np.float64)
        inside = z >= self.lower
        safe = np.where(inside, z, 0.0)
        return np.where(inside, self.c0 + self.c1 * safe + self.c2 * safe * safe, -np.inf)

    def d_log_density(self, z):
        """``d log p(x, z)/dz = c1 + 2 c2 z`` (inside the support)."""
        return self.c1 + 2 * self.c2 * np.asarray(z, dtype=np.float64)

    def log_normalizer(self) -> float:
        """``log Z = log integral p(x, z) dz``, the log evidence ``log p(x)``."""
        sd = math.sqrt(self.var)
        return float(self.c0 + self.mean ** 2 / (2 * self.var) + 0.5 * math.log(2 * math.pi * self.var)
                     + log_norm_cdf((self.mean - self.lower) / sd))

    def normalized_log_density(self, z):
        """``log p(z|x) = log p(x, z) - log Z``: the truncated normal N(m, v) on ``z >= lower``."""
        return self.log_density(z) - self.log_normalizer()

    def expected_log_density(self, q) -> float:
        """``E_q[log p(x, z)] = c0 + c1 E[z] + c2 E[z^2]``; ``-inf`` when q puts
        mass below ``lower`` (where ``log p(x, z) = -inf``)."""
        if q.support_lower < self.lower:
            return -math.inf
        m1, m2 = q.moments()
        return self.c0 + self.c1 * m1 + self.c2 * m2

    def d_expected_log_density(self, q):
        """Gradient of :meth:`expected_log_density` w.r.t. ``q.theta``, shape (P,)."""
        d_m1, d_m2 = q.d_moments()
        return self.c1 * d_m1 + self.c2 * d_m2


def exponential_prior_normal_likelihood(x: float) -> QuadraticLogDensity:
    """Lesson 1's joint: prior ``p(z) = exp(-z)`` on ``z >= 0``, likelihood
    ``p(x|z) = N(x; z, 1)``.

    ``log p(x, z) = -z - (x - z)^2/2 - log(2 pi)/2
                  = (-x^2/2 - log(2 pi)/2) + (x - 1) z - z^2/2``, so the
    posterior is N(x - 1, 1) truncated to ``z >= 0`` and
    ``log p(x) = 1/2 - x + log Phi(x - 1)``.
    """
    return QuadraticLogDensity(-0.5 * x * x - 0.5 * LOG_2PI, x - 1.0, -0.5, lower=0.0)


def exponential_prior_log_evidence(x: float) -> float:
    """``log p(x) = 1/2 - x + log Phi(x - 1)`` for lesson 1's model, written out."""
    return float(0.5 - x + log_norm_cdf(x - 1.0))


def normal_prior_normal_likelihood(x: float, prior_std: float = 1.0, noise_std: float = 1.0):
    """``log N(z; 0, s0^2) + log N(x; z, s^2)`` as a quadratic in z:
    ``c2 = -(1/s0^2 + 1/s^2)/2``, ``c1 = x/s^2``."""
    c0 = -LOG_2PI - math.log(prior_std * noise_std) - 0.5 * x * x / noise_std ** 2
    return QuadraticLogDensity(c0, x / noise_std ** 2, -0.5 * (prior_std ** -2 + noise_std ** -2))


def normal_target(mean: float, std: float) -> QuadraticLogDensity:
    """A target that is already normalised, ``p(x, z) = N(z; mean, std^2)``
    as a function of z: its log normaliser, the log evidence, is 0."""
    v = std * std
    return QuadraticLogDensity(-0.5 * mean * mean / v - 0.5 * math.log(2 * math.pi * v), mean / v, -0.5 / v)


class GaussianMixture1D:
    """``p(x) = sum_k pi_k N(x; mu_k, sigma_k^2)`` as a latent-variable model:
    ``z ~ Categorical(pi)``, ``x | z ~ N(mu_z, sigma_z^2)`` (lesson 4).

    Lesson 3 uses the same density over a continuous variable as a
    normalised two-mode target for q to fit; there the argument called x
    below plays the role of z."""

    def __init__(self, weights, means, stds):
        self.weights, self.means, self.stds = (np.asarray(a, dtype=np.float64) for a in (weights, means, stds))
        if not (self.weights.shape == self.means.shape == self.stds.shape and self.weights.ndim == 1):
            raise ValueError("weights, means and stds must be 1-D arrays of one length")
        if np.any(self.weights < 0) or not math.isclose(self.weights.sum(), 1.0, rel_tol=1e-12):
            raise ValueError(f"weights must be >= 0 and sum to 1, got {self.weights}")
        if np.any(self.stds <= 0):
            raise ValueError(f"stds must be positive, got {self.stds}")

    def _log_joint(self, x):
        """``log pi_k + log N(x; mu_k, sigma_k^2)``, shape (n, K)."""
        x = np.asarray(x, dtype=np.float64)[..., None]
        return np.log(self.weights) + norm_logpdf(x, self.means, self.stds)

    def log_density(self, x):
        """``log p(x) = logsumexp_k (log pi_k + log N(x; mu_k, sigma_k^2))`` (summing z out)."""
        lj = self._log_joint(x)
        top = lj.max(axis=-1, keepdims=True)
        return (top + np.log(np.exp(lj - top).sum(axis=-1, keepdims=True)))[..., 0]

    def responsibilities(self, x):
        """The posterior ``p(z = k | x) = pi_k N(x; mu_k, sigma_k^2) / p(x)``, shape (n, K)."""
        lj = self._log_joint(x)
        return np.exp(lj - self.log_density(x)[..., None])

    def d_log_density(self, x):
        """``d log p / dx = sum_k p(k|x) (mu_k - x) / sigma_k^2``."""
        x = np.asarray(x, dtype=np.float64)
        return (self.responsibilities(x) * (self.means - x[..., None]) / self.stds ** 2).sum(axis=-1)

    def sample(self, rng, n):
        """Ancestral sampling: ``z ~ Categorical(pi)``, then ``x ~ N(mu_z, sigma_z^2)``. Returns (x, z)."""
        z = rng.choice(len(self.weights), size=n, p=self.weights)
        return self.means[z] + self.stds[z] * rng.standard_normal(n), z

    def moments(self):
        """Mean and variance of x: ``m = sum pi_k mu_k``,
        ``v = sum pi_k (sigma_k^2 + mu_k^2) - m^2``."""
        m = float(self.weights @ self.means)
        return m, float(self.weights @ (self.stds ** 2 + self.means ** 2) - m * m)


class LatentNonlinear:
    """``p(x, z) = N(x; f(z), sigma^2) N(z; 0, 1)`` with a fixed nonlinear
    ``f(z) = z + a sin(b z)``: a one-dimensional decoder, monotonic (so the
    posterior has one mode) when ``a b < 1``.

    As a density over z (x fixed), ``log_density`` and ``d_log_density`` make
    it a target for :func:`fit` (the posterior up to ``p(x)``).
    """

    def __init__(self, x: float, sigma: float = 0.1, a: float = 0.45, b: float = 2.0):
        self.x, self.sigma, self.a, self.b = float(x), float(sigma), float(a), float(b)

    def f(self, z):
        return z + self.a * np.sin(self.b * z)

    def log_likelihood(self, z):
        """``log N(x; f(z), sigma^2)``."""
        return norm_logpdf(self.x, self.f(z), self.sigma)

    def log_density(self, z):
        """``log p(x, z)``."""
        return self.log_likelihood(z) + norm_logpdf(z)

    def d_log_density(self, z):
        """``(x - f(z)) f'(z) / sigma^2 - z``."""
        z = np.asarray(z, dtype=np.float64)
        return (self.x - self.f(z)) * (1 + self.a * self.b * np.cos(self.b * z)) / self.sigma ** 2 - z

    def log_marginal_quadrature(self, lo=-12.0, hi=12.0, n=400_001) -> float:
        """``log p(x) = log integral p(x, z) dz`` by the trapezoidal rule."""
        z = np.linspace(lo, hi, n)
        lp = self.log_density(z)
        top = lp.max()
        return float(top + math.log(np.trapezoid(np.exp(lp - top), z)))


# --------------------------------------------------------------------------
# Variational families: q(z; theta) with theta unconstrained, shape (P,)
# --------------------------------------------------------------------------

class Family:
    """Shared interface. ``theta``: (P,) float64, updated in place by :func:`fit`."""

    param_names: tuple = ()
    support_lower = -math.inf

    def __init__(self, *theta):
        self.theta = np.array(theta, dtype=np.float64)

    def __repr__(self):
        return f"{type(self).__name__}(" + ", ".join(f"{n}={v:.4g}" for n, v in zip(self.param_names, self.theta)) + ")"

    def elbo(self, target: QuadraticLogDensity) -> float:
        """Exact ``ELBO = E_q[log p(x, z)] + H[q]`` for a quadratic target."""
        return target.expected_log_density(self) + self.entropy()

    def d_elbo(self, target: QuadraticLogDensity):
        """Exact gradient of :meth:`elbo` w.r.t. theta, (P,)."""
        return target.d_expected_log_density(self) + self.d_entropy()


class Normal(Family):
    """``q(z) = N(z; m, s^2)``, ``theta = (m, log s)``; reparameterized as
    ``z = m + s eps``, ``eps ~ N(0, 1)``."""

    param_names = ("m", "log_s")

    def params(self):
        return self.theta[0], math.exp(self.theta[1])

    def sample(self, rng, n):
        return self.reparam(rng.standard_normal(n))[0]

    def log_q(self, z):
        m, s = self.params()
        return norm_logpdf(z, m, s)

    def score(self, z):
        """``d log q / d(m, log s) = ((z - m)/s^2, (z - m)^2/s^2 - 1)``, (n, 2)."""
        m, s = self.params()
        r = (np.asarray(z) - m) / s
        return np.stack([r / s, r * r - 1], axis=1)

    def reparam(self, eps):
        """``z = m + s eps`` and ``dz/dtheta = (1, s eps)``, (n,) and (n, 2)."""
        m, s = self.params()
        return m + s * eps, np.stack([np.ones_like(eps), s * eps], axis=1)

    def entropy(self):
        """``H = log s + (1 + log 2 pi)/2``."""
        return self.theta[1] + 0.5 * (1 + LOG_2PI)

    def d_entropy(self):
        return np.array([0.0, 1.0])

    def moments(self):
        m, s = self.params()
        return m, m * m + s * s

    def d_moments(self):
        """``d(E z, E z^2)/dtheta``: ``(1, 0)`` and ``(2m, 2 s^2)``."""
        m, s = self.params()
        return np.array([1.0, 0.0]), np.array([2 * m, 2 * s * s])


class LogNormal(Normal):
    """``log z ~ N(m, s^2)``, ``theta = (m, log s)``; reparameterized as
    ``z = exp(m + s eps)``. Support z > 0. A :class:`Normal` in ``log z``."""

    support_lower = 0.0

    def log_q(self, z):
        """``log q(z) = log N(log z; m, s^2) - log z``."""
        t = np.log(z)
        return super().log_q(t) - t

    def score(self, z):
        """The normal's score at ``log z`` (the Jacobian does not depend on theta)."""
        return super().score(np.log(z))

    def reparam(self, eps):
        """``z = exp(m + s eps)``, ``dz/dtheta = z (1, s eps)``."""
        t, dt = super().reparam(eps)
        z = np.exp(t)
        return z, z[:, None] * dt

    def entropy(self):
        """``H = m + log s + (1 + log 2 pi)/2`` (the normal's plus ``E[log z] = m``)."""
        return super().entropy() + self.theta[0]

    def d_entropy(self):
        return np.array([1.0, 1.0])

    def moments(self):
        """``E z = exp(m + s^2/2)``, ``E z^2 = exp(2m + 2 s^2)``."""
        m, s = self.params()
        return math.exp(m + s * s / 2), math.exp(2 * m + 2 * s * s)

    def d_moments(self):
        _, s = self.params()
        m1, m2 = self.moments()
        return np.array([m1, m1 * s * s]), np.array([2 * m2, 4 * s * s * m2])


class Gamma(Family):
    """``q(z) = beta^alpha z^(alpha-1) e^(-beta z) / Gamma(alpha)``,
    ``theta = (log alpha, log beta)`` (shape and rate). Support z > 0.

    No reparameterization by noise of a fixed distribution is simple here;
    :func:`grep_gradient` uses the standardisation
    ``eps = S(z; theta) = (log z - psi(alpha) + log beta) / sqrt(psi'(alpha))``
    of Ruiz, Titsias and Blei (2016). Since ``E[log z] = psi(alpha) - log beta``
    and ``Var[log z] = psi'(alpha)``, eps has mean 0 and variance 1 for every
    theta; its distribution does not depend on beta at all, and depends on
    alpha only through its shape (skewness and higher moments), less and
    less as alpha grows
    (eps tends to N(0, 1)).
    """

    param_names = ("log_alpha", "log_beta")
    support_lower = 0.0

    def params(self):
        return math.exp(self.theta[0]), math.exp(self.theta[1])

    def sample(self, rng, n):
        alpha, beta = self.params()
        return rng.gamma(alpha, 1.0 / beta, size=n)

    def log_q(self, z):
        alpha, beta = self.params()
        z = np.asarray(z, dtype=np.float64)
        return alpha * math.log(beta) - float(log_gamma(alpha)) + (alpha - 1) * np.log(z) - beta * z

    def d_log_q_dz(self, z):
        """``(alpha - 1)/z - beta``."""
        alpha, beta = self.params()
        return (alpha - 1) / z - beta

    def score(self, z):
        """``d log q/d log alpha = alpha (log beta - psi(alpha) + log z)``,
        ``d log q/d log beta = alpha - beta z``."""
        alpha, beta = self.params()
        z = np.asarray(z, dtype=np.float64)
        return np.stack([alpha * (math.log(beta) - float(digamma(alpha)) + np.log(z)), alpha - beta * z], axis=1)

    def standardize(self, z):
        """``eps = (log z - psi(alpha) + log beta) / sqrt(psi'(alpha))``."""
        alpha, beta = self.params()
        return (np.log(z) - float(digamma(alpha)) + math.log(beta)) / math.sqrt(float(trigamma(alpha)))

    def transform_grads(self, eps):
        """For ``z = T(eps; theta) = exp(eps sqrt(psi'(alpha)) + psi(alpha) - log beta)``:
        ``dz/dtheta`` and ``d log|dT/d eps| / dtheta`` at fixed eps, both (n, 2).

        ``d log z / d alpha = eps psi''(alpha) / (2 sqrt psi'(alpha)) + psi'(alpha)``,
        ``d log z / d log beta = -1``; ``log|dT/d eps| = log z + log psi'(alpha)/2``.
        """
        alpha, _ = self.params()
        psi1, psi2 = float(trigamma(alpha)), float(polygamma(2, alpha))
        z = np.exp(eps * math.sqrt(psi1) + float(digamma(alpha)) - self.theta[1])
        dlogz_dalpha = eps * psi2 / (2 * math.sqrt(psi1)) + psi1
        dlogz = np.stack([alpha * dlogz_dalpha, -np.ones_like(eps)], axis=1)   # chain: d/dlog alpha = alpha d/dalpha
        d_log_jac = dlogz + np.array([alpha * psi2 / (2 * psi1), 0.0])
        return z[:, None] * dlogz, d_log_jac

    def entropy(self):
        """``H = alpha - log beta + log Gamma(alpha) + (1 - alpha) psi(alpha)``."""
        alpha, beta = self.params()
        return alpha - math.log(beta) + float(log_gamma(alpha)) + (1 - alpha) * float(digamma(alpha))

    def d_entropy(self):
        """``dH/d log alpha = alpha (1 + (1 - alpha) psi'(alpha))``, ``dH/d log beta = -1``."""
        alpha, _ = self.params()
        return np.array([alpha * (1 + (1 - alpha) * float(trigamma(alpha))), -1.0])

    def moments(self):
        """``E z = alpha/beta``, ``E z^2 = alpha (alpha + 1)/beta^2``."""
        alpha, beta = self.params()
        return alpha / beta, alpha * (alpha + 1) / beta ** 2

    def d_moments(self):
        alpha, beta = self.params()
        m1, m2 = self.moments()
        return np.array([m1, -m1]), np.array([alpha * (2 * alpha + 1) / beta ** 2, -2 * m2])


# --------------------------------------------------------------------------
# Gradient estimators of ELBO(theta) = E_q[log p(x, z) - log q(z)]
# Each returns (n, P): one estimate per sample, unbiased (for the control
# variate, the mean over the n rows is).
# --------------------------------------------------------------------------

def score_function_gradient(target, q: Family, rng, n: int, control_variate: bool = False):
    """Score function (REINFORCE, black-box VI, Ranganath et al. 2014):
    ``grad = E_q[(f(z) - a) h(z)]`` with ``f = log p(x, z) - log q(z)`` and the score
    ``h = grad log q``, for any a independent of z, since ``E_q[h] = 0``.

    Without a control variate a = 0. With one, a is chosen per coordinate d
    to minimise the variance: ``a*_d = E[f h_d^2] / E[h_d^2]`` (so the
    variance can only fall: a = 0 is one of the choices). Each sample's a is
    estimated from the other n - 1 samples (leave-one-out), which keeps the
    estimate unbiased.
    """
    z = q.sample(rng, n)
    f = (target.log_density(z) - q.log_q(z))[:, None]
    h = q.score(z)
    if not control_variate:
        return f * h
    if n < 2:
        raise ValueError("the leave-one-out control variate needs n >= 2 samples")
    fh2, h2 = f * h * h, h * h
    a = (fh2.sum(axis=0) - fh2) / (h2.sum(axis=0) - h2)
    return (f - a) * h


def reparam_gradient(target, q: Family, rng, n: int):
    """Reparameterization (Kingma and Welling 2014): ``z = T(eps; theta)``,
    ``grad = E_eps[d log p(x, z)/dz dz/dtheta] + grad H[q]`` (entropy exact)."""
    z, dz = q.reparam(rng.standard_normal(n))
    return target.d_log_density(z)[:, None] * dz + q.d_entropy()


def grep_gradient(target, q: Gamma, rng, n: int):
    """Generalized reparameterization gradient (G-REP; Ruiz, Titsias and Blei
    2016, eqs. 8 and 9) of the ELBO for a Gamma q, with the entropy term exact.

    Write ``ELBO = E_q[f(z)] + H[q]`` with ``f(z) = log p(x, z)`` (the target
    only: ``log q`` is not inside f, because ``H[q]`` and its gradient are in
    closed form). The noise is the standardised ``eps = S(z; theta)`` of
    :class:`Gamma`, and ``z = T(eps; theta)`` its inverse. Unlike a plain
    reparameterization, the density of eps,

        ``q_eps(eps; theta) = q(T(eps; theta); theta) |dT/d eps|``,

    still depends on theta (weakly), so differentiating
    ``E_q[f] = integral f(T(eps; theta)) q_eps(eps; theta) d eps`` under the
    integral gives two terms, by the product rule:

        ``grad ELBO = E_eps[f'(z) dT/dtheta]                       (g_rep, reparameterization)
                    + E_eps[f(z) d log q_eps(eps; theta)/dtheta]   (g_corr, correction)
                    + grad H[q]                                      (exact)``

    where, at fixed eps and with ``z = T(eps; theta)``,

        ``d log q_eps/dtheta = d log q(z)/dz dT/dtheta + d log q(z; theta)/dtheta
                             + d log|dT/d eps|/dtheta``.

    ``dT/dtheta`` and ``d log|dT/d eps|/dtheta`` come from
    :meth:`Gamma.transform_grads`, ``d log q(z; theta)/dtheta`` (z fixed) is
    :meth:`Gamma.score`. g_corr is a score-function term, but with the score
    of the noise, not of z: it is small when ``q_eps`` depends little on theta.
    Here its ``log beta`` component is exactly 0 sample by sample (eps does
    not depend on beta), and its ``log alpha`` component shrinks as alpha
    grows. Dropping g_corr leaves a biased estimate
    (``tests/test_vi.py::test_a_wrong_gradient_is_caught``).

    Sampling ``z ~ q`` and setting ``eps = S(z; theta)`` draws eps from
    ``q_eps``; each row of the result is ``g_rep + g_corr + grad H`` at one
    sample, shape (n, 2), and their mean is an unbiased estimate.
    """
    z = q.sample(rng, n)
    dz, d_log_jac = q.transform_grads(q.standardize(z))
    g_rep = target.d_log_density(z)[:, None] * dz
    g_corr = target.log_density(z)[:, None] * (q.d_log_q_dz(z)[:, None] * dz + q.score(z) + d_log_jac)
    return g_rep + g_corr + q.d_entropy()


def fit(q: Family, gradient, steps: int = 2000, lr: float = 0.05, rng=None) -> None:
    """Maximise an ELBO with the library's Adam, updating ``q.theta`` in place.

    ``gradient(q, rng)`` returns the ELBO's gradient w.r.t. ``q.theta``, (P,)
    (an estimate or the exact one). Adam minimises, so it is given ``-grad``.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    opt = Adam({"theta": q.theta}, lr=lr)
    for step in range(steps):
        g = np.asarray(gradient(q, rng), dtype=np.float64)
        if not np.all(np.isfinite(g)):
            raise FloatingPointError(f"non-finite ELBO gradient at step {step} for {q}: {g}")
        opt.step({"theta": -g})


def _log_scale_grid(log_density, n: int):
    """A grid in ``t = log z`` covering where ``log_density(e^t) + t`` is
    within 80 nats of its peak (found on a coarse grid over [-700, 40], where
    ``e^t`` stays a normal float64; a Gamma with a small shape reaches far
    below t = -40)."""
    coarse = np.linspace(-700.0, 40.0, 7401)
    log_mass = log_density(np.exp(coarse)) + coarse
    inside = np.flatnonzero(log_mass > log_mass.max() - 80)
    return np.linspace(coarse[max(inside[0] - 1, 0)], coarse[min(inside[-1] + 1, len(coarse) - 1)], n)


def log_integral_positive(log_f, n: int = 200_001) -> float:
    """``log integral_0^inf exp(log_f(z)) dz`` by the trapezoidal rule in
    ``t = log z`` (``dz = z dt``). In t the integrands of the lessons are
    smooth and decay at both ends, where the trapezoidal rule converges
    faster than any power of the step: about 1e-13 relative here."""
    t = _log_scale_grid(log_f, n)
    log_g = log_f(np.exp(t)) + t
    top = log_g.max()
    return float(top + math.log(np.trapezoid(np.exp(log_g - top), t)))


def kl_quadrature(q: Family, log_p_normalized, n: int = 200_001) -> float:
    """``KL(q || p) = integral q (log q - log p) dz`` for q on z > 0, by the
    trapezoidal rule in ``t = log z`` (see :func:`log_integral_positive`)."""
    t = _log_scale_grid(q.log_q, n)
    z = np.exp(t)
    log_q = q.log_q(z)
    return float(np.trapezoid(np.exp(log_q + t) * (log_q - log_p_normalized(z)), t))
