"""Beyond the standard normal: the VampPrior, planar flows and DReG, each gradient
checked against finite differences (float64, central differences, relative error
<= 1e-6), and each term checked against its definition computed another way."""
import numpy as np
import pytest

import scratchvae as sv
from scratchvae.gradcheck import gradcheck, numerical_gradient
from scratchvae.model import latent
from scratchvae.run import TrainConfig, checkpoint

pytestmark = pytest.mark.usefixtures("backend")

VARIANTS = {"vamp": dict(prior="vamp", pseudo_inputs=4), "flow": dict(flow="planar:3")}


def _model(variant, hidden=(6,), likelihood="bernoulli", seed=5):
    return sv.VAE(9, list(hidden), 3, likelihood=likelihood, activation="tanh", seed=seed, dtype=np.float64,
                  sigma=0.8, **VARIANTS[variant])


def _x(model, rng, n=4):
    if model.likelihood.needs_unit_interval:
        return rng.random((n, model.input_dim))
    return rng.standard_normal((n, model.input_dim))


def _copy(grads):
    return {k: g.copy() for k, g in grads.items()}


# --------------------------------------------------------------------------
# the model: every objective, every variant
# --------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("hidden,likelihood", [([6], "bernoulli"), ([6, 5], "gaussian_pixel"), ([], "bernoulli")])
def test_elbo_gradients(variant, hidden, likelihood):
    rng = np.random.default_rng(10)
    model = _model(variant, hidden, likelihood)
    x, eps = _x(model, rng), rng.standard_normal((4, 3))
    losses, grads = model.loss_and_grads(x, eps=eps, beta=0.6)
    assert sorted(grads) == sorted(model.params)
    assert losses["total"] == pytest.approx(losses["nll"] + 0.6 * losses["kl"])
    gradcheck(lambda: model.loss(x, eps=eps, beta=0.6)["total"], model.params, _copy(grads)).raise_if_failed()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("k", [1, 4])
def test_importance_weighted_gradients(variant, k):
    rng = np.random.default_rng(11)
    model = _model(variant, [6], "gaussian_scalar")
    x, eps = _x(model, rng), rng.standard_normal((k, 4, 3))
    _, grads = model.iw_loss_and_grads(x, k, eps=eps)
    gradcheck(lambda: model.iw_loss_and_grads(x, k, eps=eps)[0]["total"], model.params,
              _copy(grads)).raise_if_failed()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("samples", [1, 3])
def test_the_one_backward_takes_any_weighting(variant, samples):
    """sum_r a_r nll_r + sum_i b_i kl_i + sum_r c_r kl_sample_r, every weight different:
    kl (the samples' mean of kl_sample here) and kl_sample both have their gradient."""
    rng = np.random.default_rng(12)
    model = _model(variant, [6])
    n = 4
    x, eps = _x(model, rng, n), rng.standard_normal((samples, n, 3))
    a, b, c = rng.random(samples * n), rng.random(n), rng.random(samples * n)

    def objective():
        terms, _ = model.forward(x, eps)
        return float(a @ terms.nll + b @ terms.kl + c @ terms.kl_sample)

    _, cache = model.forward(x, eps)
    grads = _copy(model.backward(cache, a, b, c))
    gradcheck(objective, model.params, grads).raise_if_failed()


def test_flow_on_a_conditional_vae():
    rng = np.random.default_rng(13)
    model = sv.VAE(9, [6], 3, activation="tanh", seed=1, dtype=np.float64, context_dim=2, flow="planar:2")
    x, eps, c = rng.random((4, 9)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    _, grads = model.loss_and_grads(x, eps=eps, c=c)
    gradcheck(lambda: model.loss(x, eps=eps, c=c)["total"], model.params, _copy(grads)).raise_if_failed()


def test_weighted_losses_of_a_vampprior_model():
    rng = np.random.default_rng(14)
    model = _model("vamp")
    x, eps, w = rng.random((5, 9)), rng.standard_normal((5, 3)), rng.random(5)
    per_example, grads = model.weighted_loss_and_grads(x, w, eps=eps, beta=0.8)
    grads = _copy(grads)
    assert per_example.mean() == pytest.approx(model.loss(x, eps=eps, beta=0.8)["total"], rel=1e-12)
    gradcheck(lambda: float(w @ model.weighted_loss_and_grads(x, w, eps=eps, beta=0.8)[0]),
              model.params, grads).raise_if_failed()


# --------------------------------------------------------------------------
# the terms against their definitions
# --------------------------------------------------------------------------

def test_vampprior_terms_agree_with_their_definitions():
    rng = np.random.default_rng(20)
    model = _model("vamp")
    x = rng.random((3, 9))
    eps = rng.standard_normal((2, 3, 3))
    terms, _ = model.forward(x, eps)
    mu, logvar = model.encode(x)
    # the prior is the mixture of the encoder's posteriors at the pseudo-inputs
    mu_p, logvar_p = model.pseudo_posteriors()
    for got, want in zip((mu_p, logvar_p), model.encode(model.params["prior.u"])):   # u starts in [0, 1]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    z = terms.z
    log_q, _ = latent.diag_gaussian_log_prob(z, np.tile(mu, (2, 1)), np.tile(logvar, (2, 1)))
    log_p = np.log(np.mean([np.exp(latent.diag_gaussian_log_prob(z, np.tile(mu_p[j], (6, 1)),
                                                                 np.tile(logvar_p[j], (6, 1)))[0])
                            for j in range(model.pseudo_inputs)], axis=0))
    np.testing.assert_allclose(terms.kl_sample, log_q - log_p, rtol=1e-10)
    np.testing.assert_allclose(terms.kl, terms.kl_sample.reshape(2, 3).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(model.log_prior(z), log_p, rtol=1e-10)
    log_joint, _ = model.log_joint(z[:3], x)
    np.testing.assert_allclose(terms.log_weight[0], log_joint - log_q[:3], rtol=1e-10)


def test_flow_terms_agree_with_the_change_of_variables():
    """log q(z_L|x) = log q_0(z_0|x) - log |det dz_L/dz_0|, the Jacobian by finite differences."""
    rng = np.random.default_rng(21)
    model = _model("flow")
    x = rng.random((2, 9))
    eps = rng.standard_normal((2, 3))
    terms, _ = model.forward(x, eps)
    mu, logvar = model.encode(x)
    z0 = mu + np.exp(logvar / 2) * eps
    log_q0, _ = latent.diag_gaussian_log_prob(z0, mu, logvar)
    for i in range(2):
        e = eps[i:i + 1].copy()
        jac = numerical_gradient(lambda: model.forward(x[i:i + 1], e)[0].z.ravel(), e)   # dz_L/deps
        jac = jac / np.exp(logvar[i] / 2)[:, None]                                      # dz_L/dz_0
        _, logabsdet = np.linalg.slogdet(jac)
        log_q = log_q0[i] - logabsdet
        assert terms.kl_sample[i] == pytest.approx(log_q - latent.standard_normal_log_prob(terms.z[i:i + 1])[0],
                                                   abs=1e-7)
    # the flow moves z: z_L is not z_0, and embed() is the flow at eps = 0
    assert np.abs(terms.z - z0).max() > 1e-3
    np.testing.assert_allclose(model.embed(x), model.forward(x, np.zeros((2, 3)))[0].z, rtol=1e-12)


def test_estimated_kl_averages_to_the_analytic_kl_of_a_known_flow():
    """Layers whose tanh saturates (b = 50: h = 1, h' = 0) only shift z by the sum of their û,
    so q(z_L|x) = N(mu + shift, diag(exp(logvar))): the sampled KL must average to its
    analytic KL to N(0, I), and log det must be 0."""
    rng = np.random.default_rng(22)
    model = _model("flow")
    model.params["enc.flow.W"][...] = 0
    lam = model.params["enc.flow.b"].reshape(3, 7)
    lam[:, :6] = rng.standard_normal((3, 6))
    lam[:, 6] = 50.0
    x = rng.random((2, 9))
    eps = rng.standard_normal((20000, 2, 3))
    terms, _ = model.forward(x, eps)
    mu, logvar = model.encode(x)
    shifted = terms.z[:2] - (mu + np.exp(logvar / 2) * eps[0])
    np.testing.assert_allclose(terms.z[-2:] - (mu + np.exp(logvar / 2) * eps[-1]), shifted, atol=1e-12)
    analytic = 0.5 * ((mu + shifted) ** 2 + np.exp(logvar) - 1 - logvar).sum(axis=1)
    se = terms.kl_sample.reshape(20000, 2).std(axis=0) / np.sqrt(20000)
    assert np.all(np.abs(terms.kl - analytic) < 4 * se)
    assert np.abs(shifted).min() > 0.01


def test_vampprior_samples_follow_the_mixture():
    model = _model("vamp", seed=7)
    mu_p, logvar_p = model.pseudo_posteriors()
    z = model.prior_sample(40000, np.random.default_rng(0))
    mean = mu_p.mean(axis=0)
    second = (np.exp(logvar_p) + mu_p ** 2).mean(axis=0)
    se = z.std(axis=0) / np.sqrt(len(z))
    assert np.all(np.abs(z.mean(axis=0) - mean) < 4 * se)
    np.testing.assert_allclose((z ** 2).mean(axis=0), second, rtol=0.05)
    x = model.sample(5, np.random.default_rng(1))
    assert x.shape == (5, 9) and 0 <= x.min() and x.max() <= 1


# --------------------------------------------------------------------------
# DReG
# --------------------------------------------------------------------------

def _dreg_surrogate(model, x, eps, w2, w1, frozen):
    """The function whose gradient DReG's encoder gradient is, written from public parts:
    ``sum_r w2_r [nll_r + log q_bar(z_r) - log p_bar(z_r)] + sum_r w1_r [-log p(z_bar_r)]``,
    z_r = mu(x) + exp(logvar(x)/2) eps_r live; q_bar, p_bar (the density's parameters)
    and z_bar frozen at the starting point; w2 = w~^2/n on the path, w1 = w~/n on the prior's
    own parameters (the encoder at the pseudo-inputs)."""
    mu_bar, logvar_bar, prior_bar, z_bar = frozen
    k, _, latent_dim = eps.shape
    mu, logvar = model.encode(x)
    z = (np.tile(mu, (k, 1)) + np.tile(np.exp(logvar / 2), (k, 1)) * eps.reshape(-1, latent_dim))
    x_rows = np.tile(x, (k, 1))
    nll = model.log_prior(z) - model.log_joint(z, x_rows)[0]
    log_q_bar, _ = latent.diag_gaussian_log_prob(z, np.tile(mu_bar, (k, 1)), np.tile(logvar_bar, (k, 1)))
    log_p_bar = (latent.standard_normal_log_prob(z) if prior_bar is None
                 else latent.diag_gaussian_mixture_log_prob(z, *prior_bar)[0])
    path = w2 @ (nll + log_q_bar - log_p_bar)
    return float(path + (0.0 if prior_bar is None else w1 @ -model.log_prior(z_bar)))


@pytest.mark.parametrize("variant", ["standard", "vamp"])
@pytest.mark.parametrize("k", [1, 5])
def test_dreg_gradients(variant, k):
    """Encoder: the gradient of the DReG surrogate; decoder and pseudo-inputs: the IWAE gradient."""
    rng = np.random.default_rng(30)
    kw = {} if variant == "standard" else VARIANTS["vamp"]
    model = sv.VAE(9, [6], 3, activation="tanh", seed=2, dtype=np.float64, **kw)
    n = 4
    x, eps = rng.random((n, 9)), rng.standard_normal((k, n, 3))
    _, dreg = model.iw_loss_and_grads(x, k, eps=eps, dreg=True)
    dreg = _copy(dreg)
    _, iwae = model.iw_loss_and_grads(x, k, eps=eps)
    iwae = _copy(iwae)
    terms, _ = model.forward(x, eps, with_grad=False)
    _, w = latent.importance_weights(terms.log_weight)
    w = w.reshape(-1)
    mu, logvar = model.encode(x)
    frozen = (mu.copy(), logvar.copy(), None if variant == "standard" else
              tuple(a.copy() for a in model.pseudo_posteriors()), terms.z.copy())
    enc = {name: p for name, p in model.params.items() if name.startswith("enc.")}
    gradcheck(lambda: _dreg_surrogate(model, x, eps, w ** 2 / n, w / n, frozen), enc, dreg).raise_if_failed()
    rest = {name: p for name, p in model.params.items() if not name.startswith("enc.")}
    gradcheck(lambda: model.iw_loss_and_grads(x, k, eps=eps)[0]["total"], rest, dreg).raise_if_failed()
    for name in rest:
        np.testing.assert_allclose(dreg[name], iwae[name], rtol=1e-12, atol=1e-15)
    assert any(not np.allclose(dreg[name], iwae[name]) for name in enc)


def _gradient_draws(model, x, k, dreg, draws, rng):
    out = []
    for _ in range(draws):
        _, g = model.iw_loss_and_grads(x, k, rng=rng, dreg=dreg)
        out.append(np.concatenate([g[name].ravel() for name in sorted(g) if name.startswith("enc.")]))
    return np.array(out)


def test_dreg_is_unbiased_and_quieter_than_iwae_for_many_samples():
    """Same expectation as the IWAE gradient (to within Monte-Carlo error, the same draws for
    both; the biased path-only estimator with weights w~ instead of w~^2 fails this by far),
    and a smaller variance of the encoder's gradient at k = 50."""
    model = sv.VAE(6, [5], 2, activation="tanh", seed=3, dtype=np.float64)
    x = np.random.default_rng(31).random((2, 6))
    iwae = _gradient_draws(model, x, 5, False, 1000, np.random.default_rng(32))
    dreg = _gradient_draws(model, x, 5, True, 1000, np.random.default_rng(32))
    diff = dreg - iwae
    t = diff.mean(axis=0) / (diff.std(axis=0) / np.sqrt(len(diff)) + 1e-300)
    assert np.abs(t).max() < 5, np.abs(t).max()
    iwae50 = _gradient_draws(model, x, 50, False, 150, np.random.default_rng(33))
    dreg50 = _gradient_draws(model, x, 50, True, 150, np.random.default_rng(33))
    assert np.median(dreg50.var(axis=0) / iwae50.var(axis=0)) < 0.5


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(prior="laplace"), "prior must be one of standard, vamp"),
    (dict(prior="vamp"), "pseudo_inputs >= 1"),
    (dict(pseudo_inputs=5), "use prior='vamp'"),
    (dict(prior="vamp", pseudo_inputs=5, context_dim=2), "conditional"),
    (dict(prior="vamp", pseudo_inputs=5, flow="planar:2"), "inverse"),
    (dict(flow="planar:0"), "planar:L with L >= 1"),
    (dict(flow="radial:2"), "planar:L"),
])
def test_bad_variant_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sv.VAE(10, [4], 2, **kwargs)


def test_dreg_refuses_a_flow():
    model = sv.VAE(10, [4], 2, flow="planar:2")
    with pytest.raises(ValueError, match="inverse"):
        model.iw_loss_and_grads(np.zeros((2, 10)), 3, rng=np.random.default_rng(0), dreg=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_keep_the_standard_weights_and_round_trip(variant, tmp_path):
    """The variants' parameters come from a generator of their own: every other weight is the
    standard VAE's of the same seed. Their configuration and parameters survive a checkpoint."""
    model = sv.VAE(12, [8], 3, seed=4, **VARIANTS[variant])
    plain = sv.VAE(12, [8], 3, seed=4)
    for k in plain.params:
        np.testing.assert_array_equal(model.params[k], plain.params[k])
    extra = set(model.params) - set(plain.params)
    assert extra == ({"prior.u"} if variant == "vamp" else {"enc.flow.W", "enc.flow.b"})
    for v in model.params.values():
        v += 0.01
    path = checkpoint.save(tmp_path / "m.npz", model)
    loaded = sv.load(path)
    assert loaded.config() == model.config() and repr(loaded) == repr(model)
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])
    x = np.random.default_rng(0).random((3, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded.embed(x), model.embed(x))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_learn_and_match_in_float32(variant):
    rng = np.random.default_rng(4)
    protos = np.zeros((4, 36))
    protos[0, :6] = protos[1, 6:12] = protos[2, ::6] = protos[3, 3::6] = 1
    x = np.abs(protos[rng.integers(0, 4, 512)] - (rng.random((512, 36)) < 0.05)).astype(np.float32)
    model = sv.VAE(36, [32], 2, seed=0, **VARIANTS[variant])
    m64 = sv.VAE(36, [32], 2, seed=0, dtype=np.float64, **VARIANTS[variant])
    eps = rng.standard_normal((64, 2))
    l32, g32 = model.loss_and_grads(x[:64], eps=eps.astype(np.float32))
    l64, g64 = m64.loss_and_grads(x[:64].astype(np.float64), eps=eps)
    assert l32["total"] == pytest.approx(l64["total"], rel=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-4)
    opt = sv.Adam(model.params, lr=3e-3)
    before = model.loss(x, eps=np.zeros((512, 2), np.float32))["total"]
    for _ in range(300):
        _, grads = model.loss_and_grads(x[rng.integers(0, 512, 64)], rng=rng)
        opt.step(grads)
    after = model.loss(x, eps=np.zeros((512, 2), np.float32))["total"]
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("kwargs", [VARIANTS["vamp"], VARIANTS["flow"], dict(prior="vamp", pseudo_inputs=6, hidden=[])])
@pytest.mark.parametrize("n, samples", [(1, 1), (16, 1), (5, 7)])
def test_the_workspace_estimate_covers_the_variants(kwargs, n, samples):
    """The memory guard's estimate bounds what a variant's step allocates (the VampPrior
    encodes its pseudo-inputs with the batch; a flow keeps its parameters per example)."""
    from scratchvae.model import memory
    kwargs = dict(kwargs)
    model = sv.VAE(50, kwargs.pop("hidden", [30, 20]), 5, dtype=np.float64, **kwargs)
    ws = model.workspace(n, samples)
    arrays = [a for v in vars(ws).values() for a in (v if isinstance(v, list) else [v]) if isinstance(a, np.ndarray)]
    actual = sum(a.nbytes for a in arrays)
    assert actual <= memory.step_bytes(model, n, samples) <= 1.5 * actual + 1000


@pytest.mark.parametrize("vae_kwargs,config_kwargs,iw_dreg,match", [
    (dict(prior="vamp", pseudo_inputs=5, flow="planar:2"), dict(prior="vamp", flow="planar:2"), False,
     "VampPrior cannot go with a flow"),
    (dict(prior="vamp", pseudo_inputs=5, context_dim=10), dict(prior="vamp", conditional="label"), False,
     "VampPrior encodes its pseudo-inputs without a context"),
    (dict(flow="planar:2"), dict(flow="planar:2", iw_samples=3, iw_gradient="dreg"), True, "DReG needs"),
])
def test_the_model_and_the_run_refuse_a_combination_with_one_message(vae_kwargs, config_kwargs, iw_dreg, match):
    """check_variants is the one home of each rule: the VAE and the run configuration say the same."""
    with pytest.raises(ValueError, match=match) as from_config:
        TrainConfig(**config_kwargs)
    with pytest.raises(ValueError, match=match) as from_model:
        model = sv.VAE(10, [4], 2, **vae_kwargs)
        model.iw_loss_and_grads(np.zeros((2, 10)), 3, rng=np.random.default_rng(0), dreg=iw_dreg)
    assert str(from_model.value) == str(from_config.value)
