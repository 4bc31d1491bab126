"""The variants' own ops, forward beside backward: one planar flow layer, a flow of
several, and the VampPrior's mixture log-density, each checked against finite
differences (float64, relative error <= 1e-6) and against its definition."""
import numpy as np
import pytest

from scratchvae.gradcheck import check_op, numerical_gradient
from scratchvae.model import flows, latent

pytestmark = pytest.mark.usefixtures("backend")


# --------------------------------------------------------------------------

def test_planar_layer_gradients():
    rng = np.random.default_rng(0)
    s, n, k = 3, 4, 5
    inputs = {"z": rng.standard_normal((s, n, k)), "u": rng.standard_normal((n, k)),
              "w": rng.standard_normal((n, k)), "b": rng.standard_normal(n)}

    def forward(z, u, w, b):              # both outputs at once: z' and log det
        z_new, log_det, cache = flows.planar_forward(z, u, w, b)
        return np.concatenate([z_new.ravel(), log_det.ravel()]), cache

    def backward(cache, d):
        d_z, d_u, d_w, d_b = flows.planar_backward(cache, d[:s * n * k].reshape(s, n, k), d[s * n * k:].reshape(s, n))
        return {"z": d_z, "u": d_u, "w": d_w, "b": d_b}

    check_op(forward, backward, inputs).raise_if_failed()


def test_flow_of_several_layers_gradients():
    rng = np.random.default_rng(1)
    s, n, k, L = 2, 3, 4, 3
    inputs = {"z0": rng.standard_normal((s * n, k)), "lam": rng.standard_normal((n, L * flows.params_per_layer(k)))}

    def forward(z0, lam):
        z, log_det, caches = flows.flow_forward(z0, lam, L)
        return np.concatenate([z.ravel(), log_det]), caches

    def backward(caches, d):
        d_z0, d_lam = flows.flow_backward(caches, d[:s * n * k].reshape(s * n, k), d[s * n * k:])
        return {"z0": d_z0, "lam": d_lam}

    check_op(forward, backward, inputs).raise_if_failed()


def test_planar_log_det_is_the_log_determinant_of_the_jacobian_and_always_defined():
    """The matrix determinant lemma against a finite-difference Jacobian, for
    parameters that would make an unconstrained planar map non-invertible."""
    rng = np.random.default_rng(2)
    k = 4
    for scale in (0.5, 5.0):
        u, w = scale * rng.standard_normal((1, k)), scale * rng.standard_normal((1, k))
        u -= (2 + (w @ u.T)[0, 0]) / (w @ w.T)[0, 0] * w       # w.u = -2: f would fold over
        b = rng.standard_normal(1)
        z = rng.standard_normal((1, 1, k))
        z_new, log_det, _ = flows.planar_forward(z, u, w, b)
        # the map is z + û tanh(w.z + b) with w.û = softplus(w.u) - 1 > -1
        u_hat = (z_new - z)[0] / np.tanh(z[0] @ w[0] + b)
        m = np.logaddexp(0, (w @ u.T)[0, 0]) - 1
        assert (u_hat @ w.T)[0, 0] == pytest.approx(m) and m > -1
        jac = numerical_gradient(lambda: flows.planar_forward(z, u, w, b)[0].ravel(), z).reshape(k, k)
        sign, logabsdet = np.linalg.slogdet(jac)
        assert sign > 0 and log_det[0, 0] == pytest.approx(logabsdet, abs=1e-7)


def test_mixture_log_prob_gradients_and_definition():
    rng = np.random.default_rng(3)
    inputs = {"z": rng.standard_normal((7, 5)), "mu": rng.standard_normal((6, 5)),
              "logvar": 0.7 * rng.standard_normal((6, 5))}
    check_op(lambda z, mu, logvar: latent.diag_gaussian_mixture_log_prob(z, mu, logvar),
             lambda cache, d: dict(zip(("z", "mu", "logvar"),
                                       latent.diag_gaussian_mixture_log_prob_backward(cache, d))),
             inputs).raise_if_failed()
    logp, _ = latent.diag_gaussian_mixture_log_prob(**inputs)
    z, mu, logvar = inputs["z"], inputs["mu"], inputs["logvar"]
    each = np.stack([latent.diag_gaussian_log_prob(z, np.tile(mu[j], (7, 1)), np.tile(logvar[j], (7, 1)))[0]
                     for j in range(6)])
    np.testing.assert_allclose(logp, np.log(np.exp(each).mean(axis=0)), rtol=1e-12)
    # far out in the tails every component underflows on its own; the log-sum-exp does not
    far, _ = latent.diag_gaussian_mixture_log_prob(z + 60, mu, logvar)
    assert np.all(np.isfinite(far))
