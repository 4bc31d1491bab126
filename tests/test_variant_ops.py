"""The variants' own ops, forward beside backward: one planar flow layer, a flow of
several, the VampPrior's mixture log-density, and the prior and flow objects the
model holds, each checked against finite differences (float64, relative error
<= 1e-6) and against its definition."""
import numpy as np
import pytest

from scratchvae.gradcheck import check_op, numerical_gradient
from scratchvae.model import flows, latent, priors

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


# --------------------------------------------------------------------------
# The prior and flow objects the model holds
# --------------------------------------------------------------------------

def _prior_op(prior, components=None):
    """prior.log_prob as an op of z (and of its components, if any), for check_op."""
    def forward(z, mu=None, logvar=None):
        return prior.log_prob(z, None if mu is None else (mu, logvar))

    def backward(cache, d, z, mu=None, logvar=None):
        d_z, d_components = prior.log_prob_backward(z, cache, d)
        return {"z": d_z} if d_components is None else dict(zip(("z", "mu", "logvar"), (d_z, *d_components)))
    return forward, backward


@pytest.mark.parametrize("name", priors.PRIORS)
def test_each_prior_log_prob_gradients(name):
    rng = np.random.default_rng(4)
    prior = priors.make_prior(name, 3 if name == "vamp" else 0)
    inputs = {"z": rng.standard_normal((5, 2))}
    if prior.inputs is not None:
        inputs.update(mu=rng.standard_normal((3, 2)), logvar=0.3 * rng.standard_normal((3, 2)))
    forward, backward = _prior_op(prior)
    check_op(forward, lambda cache, d: backward(cache, d, **inputs), inputs).raise_if_failed()


def test_standard_normal_prior_is_the_textbook_density_and_sampler():
    prior, z = priors.make_prior("standard"), np.array([[0.0, 0.0], [1.0, -2.0]])
    logp, _ = prior.log_prob(z)
    np.testing.assert_allclose(logp, [-np.log(2 * np.pi), -np.log(2 * np.pi) - 2.5], rtol=1e-14)
    draws = prior.sample(20000, 3, np.random.default_rng(0), np.float64)
    assert draws.shape == (20000, 3) and abs(draws.mean()) < 0.02 and abs(draws.var() - 1) < 0.03


def test_the_identity_flow_changes_nothing_and_has_no_parameters():
    flow, z0 = flows.make_flow("none"), np.arange(6.0).reshape(3, 2)
    z, log_det, cache = flow.forward(z0, None)
    assert z is z0 and log_det == 0 and flow.width(2) == 0 and flow.density_at_z
    d_z, d_lam = flow.backward(cache, z0 + 1, np.ones(3))
    np.testing.assert_array_equal(d_z, z0 + 1)
    assert d_lam is None


def test_the_planar_flow_object_is_the_flow_of_its_layers():
    rng = np.random.default_rng(5)
    flow = flows.make_flow("planar:2")
    assert (flow.layers, flow.spec, flow.width(3), flow.density_at_z) == (2, "planar:2", 14, False)
    z0, lam = rng.standard_normal((4, 3)), rng.standard_normal((2, 14))
    z, log_det, _ = flow.forward(z0, lam)
    want_z, want_log_det, _ = flows.flow_forward(z0, lam, 2)
    np.testing.assert_array_equal(z, want_z)
    np.testing.assert_array_equal(log_det, want_log_det)
