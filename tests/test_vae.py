"""The model: full gradient checks, determinism, learning, and bad input."""
import numpy as np
import pytest

import scratchvae as sv
from scratchvae.model.latent import diag_gaussian_log_prob

pytestmark = pytest.mark.usefixtures("backend")

LIKELIHOODS = ["bernoulli", "continuous_bernoulli", "gaussian_fixed", "gaussian_scalar", "gaussian_pixel"]


def _batch(model, rng, n=5):
    if model.likelihood.needs_unit_interval:
        return rng.random((n, model.input_dim))
    return rng.standard_normal((n, model.input_dim))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("hidden", [[7], [8, 6]])
@pytest.mark.parametrize("latent_dim", [1, 20])
def test_loss_and_grads_match_finite_differences(likelihood, hidden, latent_dim):
    rng = np.random.default_rng(len(hidden) * 100 + latent_dim)
    activation = "tanh" if latent_dim == 1 else "elu"
    model = sv.VAE(10, hidden, latent_dim, likelihood=likelihood, activation=activation,
                   init="torch", seed=3, dtype=np.float64, sigma=0.8)
    x, eps = _batch(model, rng), rng.standard_normal((5, latent_dim))
    beta = 0.6
    losses, grads = model.loss_and_grads(x, eps=eps, beta=beta)
    assert losses["total"] == pytest.approx(losses["nll"] + beta * losses["kl"])
    assert sorted(grads) == sorted(model.params)
    report = sv.gradcheck(lambda: model.loss(x, eps=eps, beta=beta)["total"], model.params, grads)
    report.raise_if_failed()


def test_loss_and_grads_with_relu_at_the_reference_shape_subset():
    """ReLU and the 784-400-20 shape of the reference model, checked on a sample of elements."""
    rng = np.random.default_rng(0)
    model = sv.VAE(784, [400], 20, activation="relu", seed=0, dtype=np.float64)
    x, eps = rng.random((4, 784)), rng.standard_normal((4, 20))
    _, grads = model.loss_and_grads(x, eps=eps)
    sv.gradcheck(lambda: model.loss(x, eps=eps)["total"], model.params, grads,
                 max_elements=40).raise_if_failed()


def test_parameter_names_and_shapes():
    model = sv.VAE(784, [400], 20, likelihood="gaussian_pixel")
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {
        "enc.0.W": (784, 400), "enc.0.b": (400,),
        "enc.mu.W": (400, 20), "enc.mu.b": (20,),
        "enc.logvar.W": (400, 20), "enc.logvar.b": (20,),
        "dec.0.W": (20, 400), "dec.0.b": (400,),
        "dec.1.W": (400, 784), "dec.1.b": (784,),
        "dec.log_sigma": (784,),
    }
    assert all(v.dtype == np.float32 for v in model.params.values())


def test_encode_decode_sample_shapes_and_ranges():
    rng = np.random.default_rng(1)
    model = sv.VAE(12, [9, 7], 3, seed=1)
    x = rng.random((6, 12)).astype(np.float32)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (6, 3) and mu.dtype == np.float32
    p = model.decode(mu)
    assert p.shape == (6, 12) and p.min() >= 0 and p.max() <= 1
    s = model.sample(4, rng)
    assert s.shape == (4, 12) and s.dtype == np.float32
    b = model.sample(4, rng, mean=False)
    assert set(np.unique(b)) <= {0.0, 1.0}


def test_float32_step_stays_float32_and_matches_float64():
    rng = np.random.default_rng(2)
    m32 = sv.VAE(10, [8], 4, seed=5, dtype=np.float32)
    m64 = sv.VAE(10, [8], 4, seed=5, dtype=np.float64)
    x, eps = rng.random((6, 10)), rng.standard_normal((6, 4))
    l32, g32 = m32.loss_and_grads(x.astype(np.float32), eps=eps.astype(np.float32))
    l64, g64 = m64.loss_and_grads(x, eps=eps)
    assert all(g.dtype == np.float32 for g in g32.values())
    assert l32["total"] == pytest.approx(l64["total"], rel=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)


def _train(steps, seed=0):
    data_rng = np.random.default_rng(123)
    x = (data_rng.random((64, 16)) < 0.5).astype(np.float32)
    model = sv.VAE(16, [12], 2, seed=seed)
    opt = sv.Adam(model.params, lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        _, grads = model.loss_and_grads(x[rng.integers(0, 64, 16)], rng=rng)
        opt.step(grads)
    return model


def test_same_seed_gives_identical_parameters():
    a, b = _train(20), _train(20)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    c = _train(20, seed=1)
    assert not np.array_equal(a.params["dec.1.W"], c.params["dec.1.W"])


def _structured_data(rng, n=512):
    """Four prototype 6x6 images (bars and blocks) with pixel noise: a 2-factor structure."""
    protos = np.zeros((4, 6, 6))
    protos[0, :, 1] = protos[1, 2, :] = 1
    protos[2, :3, :3] = protos[3, 3:, 3:] = 1
    x = protos[rng.integers(0, 4, n)].reshape(n, 36)
    flip = rng.random(x.shape) < 0.05
    return np.abs(x - flip).astype(np.float32)


def test_training_lowers_the_loss_clearly_and_keeps_kl_positive():
    rng = np.random.default_rng(4)
    x = _structured_data(rng)
    model = sv.VAE(36, [32], 2, seed=0)
    opt = sv.Adam(model.params, lr=3e-3)
    eval_rng = np.random.default_rng(9)
    before = model.loss(x, eps=eval_rng.standard_normal((len(x), 2)).astype(np.float32))
    for _ in range(300):
        _, grads = model.loss_and_grads(x[rng.integers(0, len(x), 64)], rng=rng)
        opt.step(grads)
    after = model.loss(x, eps=eval_rng.standard_normal((len(x), 2)).astype(np.float32))
    assert after["total"] < 0.5 * before["total"], (before, after)
    assert after["kl"] > 0.5        # the latent code is used: KL well above zero


@pytest.mark.parametrize("bad,err,match", [
    (np.zeros((3, 11)), ValueError, r"shape \(batch, 10\), got \(3, 11\)"),
    (np.zeros(10), ValueError, r"shape \(batch, 10\)"),
    (np.zeros((3, 2, 5)), ValueError, "flatten"),
    (np.zeros((0, 10)), ValueError, "empty batch"),
    (np.full((2, 10), np.nan), ValueError, "NaN or inf"),
    (np.full((2, 10), np.inf), ValueError, "NaN or inf"),
    (np.full((2, 10), 1.5), ValueError, r"needs \[0, 1\]"),
    (np.full((2, 10), -0.1), ValueError, r"needs \[0, 1\]"),
    (np.zeros((2, 10), dtype=np.uint8), TypeError, "astype"),
    (np.zeros((2, 10), dtype=np.int64), TypeError, "must hold floats"),
])
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_bad_input_raises_a_clear_error(bad, err, match, likelihood):
    model = sv.VAE(10, [4], 2, likelihood=likelihood)
    with pytest.raises(err, match=match):
        model.loss_and_grads(bad, rng=np.random.default_rng(0))
    with pytest.raises(err, match=match):
        model.encode(bad)


def test_gaussian_accepts_any_finite_values_but_not_nan():
    model = sv.VAE(10, [4], 2, likelihood="gaussian_scalar")
    model.loss_and_grads(np.full((2, 10), -3.0), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="NaN"):
        model.loss_and_grads(np.full((2, 10), np.nan), rng=np.random.default_rng(0))


def test_noise_arguments_are_checked():
    model = sv.VAE(10, [4], 2)
    x = np.zeros((3, 10), np.float32)
    with pytest.raises(ValueError, match="exactly one of rng"):
        model.loss_and_grads(x)
    with pytest.raises(ValueError, match="exactly one of rng"):
        model.loss_and_grads(x, rng=np.random.default_rng(0), eps=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"eps must have shape \(3, 2\) or \(samples, 3, 2\), got \(2, 2\)"):
        model.loss_and_grads(x, eps=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"eps must have shape \(3, 2\)"):
        model.loss_and_grads(x, eps=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="eps has 4 samples per example, expected 1"):
        model.loss_and_grads(x, eps=np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        model.loss_and_grads(x, eps=np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="beta must be"):
        model.loss_and_grads(x, rng=np.random.default_rng(0), beta=-1.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(activation="swish"), "unknown activation 'swish'"),
    (dict(likelihood="poisson"), "unknown likelihood 'poisson'"),
    (dict(init="xavier"), "unknown init 'xavier'"),
    (dict(hidden=[0]), "positive integers"),
    (dict(latent_dim=2.5), "latent_dim must be a positive integer"),
])
def test_bad_configuration_is_refused(kwargs, match):
    args = dict(input_dim=10, hidden=[4], latent_dim=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sv.VAE(**args)
    with pytest.raises(TypeError, match="float32 or float64"):
        sv.VAE(10, [4], 2, dtype=np.int32)


def test_diverged_weights_raise_instead_of_returning_nan():
    model = sv.VAE(10, [4], 2, dtype=np.float64)
    model.params["enc.logvar.b"][:] = 1e4           # exp(logvar) overflows
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(FloatingPointError, match="not finite"):
            model.loss_and_grads(np.full((2, 10), 0.5), rng=np.random.default_rng(0))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("hidden,k,context_dim", [([7], 1, 0), ([6, 5], 5, 0), ([6], 3, 2), ([], 4, 0)])
def test_importance_weighted_gradients_match_finite_differences(likelihood, hidden, k, context_dim):
    rng = np.random.default_rng(11)
    model = sv.VAE(10, hidden, 3, likelihood=likelihood, activation="tanh", seed=2, dtype=np.float64,
                   sigma=0.8, context_dim=context_dim)
    x, eps = _batch(model, rng, 4), rng.standard_normal((k, 4, 3))
    c = rng.standard_normal((4, context_dim)) if context_dim else None
    losses, grads = model.iw_loss_and_grads(x, k, eps=eps, c=c)
    grads = {name: g.copy() for name, g in grads.items()}    # the FD calls below reuse model.grads
    report = sv.gradcheck(lambda: model.iw_loss_and_grads(x, k, eps=eps, c=c)[0]["total"], model.params, grads)
    report.raise_if_failed()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_pixel"])
@pytest.mark.parametrize("samples,context_dim", [(1, 0), (3, 0), (2, 3)])
def test_the_one_backward_is_the_gradient_of_any_weighting_of_the_forward(likelihood, samples, context_dim):
    """sum_r a_r nll_r + sum_i b_i kl_i + sum_r c_r kl_sample_r, every weight different."""
    rng = np.random.default_rng(21)
    model = sv.VAE(9, [6], 2, likelihood=likelihood, activation="elu", seed=5, dtype=np.float64,
                   context_dim=context_dim)
    n = 4
    x, eps = _batch(model, rng, n), rng.standard_normal((samples, n, 2))
    c = rng.standard_normal((n, context_dim)) if context_dim else None
    a, b, w_s = rng.random(samples * n), rng.random(n), rng.random(samples * n)

    def objective():
        terms, _ = model.forward(x, eps, c)
        return float(a @ terms.nll + b @ terms.kl + w_s @ terms.kl_sample)

    _, cache = model.forward(x, eps, c)
    grads = {k: g.copy() for k, g in model.backward(cache, a, b, w_s).items()}
    sv.gradcheck(objective, model.params, grads).raise_if_failed()


def test_the_forward_terms_agree_with_their_definitions():
    rng = np.random.default_rng(22)
    model = sv.VAE(8, [5], 3, seed=1, dtype=np.float64)
    x = rng.random((3, 8))
    eps = rng.standard_normal((4000, 3, 3))
    terms, _ = model.forward(x, eps)
    # kl_sample = log q(z|x) - log p(z) at each z, whose mean over eps is the analytic KL
    mu, logvar = model.encode(x)
    log_q, _ = diag_gaussian_log_prob(terms.z, np.tile(mu, (4000, 1)), np.tile(logvar, (4000, 1)))
    log_p, _ = diag_gaussian_log_prob(terms.z, np.zeros_like(terms.z), np.zeros_like(terms.z))
    np.testing.assert_allclose(terms.kl_sample, log_q - log_p, rtol=1e-12, atol=1e-12)
    per_example = terms.kl_sample.reshape(4000, 3)
    se = per_example.std(axis=0) / np.sqrt(4000)
    assert np.all(np.abs(per_example.mean(axis=0) - terms.kl) < 4 * se)
    # log w = log p(x, z) - log q(z|x), with log p(x, z) from the decoder half alone
    log_joint, _ = model.log_joint(terms.z[:3], x)
    np.testing.assert_allclose(terms.log_weight[0], log_joint - log_q[:3], rtol=1e-12)
    np.testing.assert_allclose(terms.mu, mu, rtol=1e-15)


def test_importance_weighted_bound_tightens_with_k_and_matches_the_elbo_at_k_1():
    rng = np.random.default_rng(12)
    model = sv.VAE(10, [8], 2, seed=3, dtype=np.float64)
    x = np.tile(rng.random((4, 10)), (500, 1))
    l1 = model.iw_loss_and_grads(x, 1, rng=np.random.default_rng(1))[0]["total"]
    l20 = model.iw_loss_and_grads(x, 20, rng=np.random.default_rng(2))[0]["total"]
    minus_elbo = np.mean([model.loss(x, rng=np.random.default_rng(s))["total"] for s in range(5)])
    assert l1 == pytest.approx(minus_elbo, rel=2e-3)      # -L_1 estimates -ELBO
    assert l20 < l1 - 0.05                                 # more samples, tighter bound


def test_importance_weighted_training_refuses_bad_k_and_noise():
    model = sv.VAE(10, [4], 2)
    with pytest.raises(ValueError, match="k .* must be an integer >= 1"):
        model.iw_loss_and_grads(np.zeros((2, 10)), 0, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"eps must have shape \(k, batch, latent\)"):
        model.iw_loss_and_grads(np.zeros((2, 10)), 3, eps=np.zeros((2, 2, 2)))


@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_scalar", "gaussian_pixel"])
def test_weighted_losses_and_their_gradients(context_dim, likelihood):
    rng = np.random.default_rng(12)
    model = sv.VAE(10, [7], 2, activation="tanh", seed=4, dtype=np.float64, context_dim=context_dim,
                   likelihood=likelihood)
    x, eps, w = rng.random((6, 10)), rng.standard_normal((6, 2)), rng.random(6)
    c = rng.standard_normal((6, 3)) if context_dim else None
    per_example, grads = model.weighted_loss_and_grads(x, w, eps=eps, beta=0.8, c=c)
    grads = {k: g.copy() for k, g in grads.items()}
    losses = model.loss(x, eps=eps, beta=0.8, c=c)
    assert per_example.mean() == pytest.approx(losses["total"], rel=1e-12)
    sv.gradcheck(lambda: float(w @ model.weighted_loss_and_grads(x, w, eps=eps, beta=0.8, c=c)[0]),
                 model.params, grads).raise_if_failed()
    # equal weights 1/n give loss_and_grads' gradient
    _, mean_grads = model.loss_and_grads(x, eps=eps, beta=0.8, c=c)
    mean_grads = {k: g.copy() for k, g in mean_grads.items()}
    _, equal = model.weighted_loss_and_grads(x, np.full(6, 1 / 6), eps=eps, beta=0.8, c=c)
    for k in mean_grads:
        np.testing.assert_allclose(equal[k], mean_grads[k], rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="one per example"):
        model.weighted_loss_and_grads(x, w[:3], eps=eps, c=c)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")    # the NaN's arithmetic
def test_checked_batches_are_not_scanned_again_and_a_nan_still_stops_the_step(monkeypatch):
    """A training loop's batches are rows of data checked when loaded: ``checked=True`` skips the
    per-step scan of their values (issue 20), and a NaN among them still surfaces in the loss."""
    from scratchvae.kernels import ops
    model = sv.VAE(12, [8], 3)
    x = np.random.default_rng(0).random((5, 12)).astype(np.float32)
    scans = []
    real = ops.min_max
    monkeypatch.setattr(ops, "min_max", lambda a: scans.append(a.shape) or real(a))
    for call in (lambda **kw: model.loss_and_grads(x, rng=np.random.default_rng(1), **kw),
                 lambda **kw: model.iw_loss_and_grads(x, 3, rng=np.random.default_rng(1), **kw)):
        call(checked=True)
        assert scans == []
        call()
        assert scans == [(5, 12)]
        scans.clear()
    x[2, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.loss_and_grads(x, rng=np.random.default_rng(1))
    with pytest.raises(FloatingPointError, match="not finite"):
        model.loss_and_grads(x, rng=np.random.default_rng(1), checked=True)


@pytest.mark.parametrize("kwargs,kind,needle", [
    # issue 21, the small ones: each raised an internal error, or one that named another argument
    (dict(hidden="400"), TypeError, "hidden must be a list of positive integers"),    # iterated as '4','0','0'
    (dict(hidden=400), TypeError, "hidden must be a list of positive integers"),      # 'int' is not iterable
    (dict(hidden=None), TypeError, "hidden must be a list"),
    (dict(hidden=[0]), ValueError, r"hidden must be .*got \[0\]"),                     # blamed "dec: layer sizes"
    (dict(hidden=[-3]), ValueError, r"hidden must be .*got \[-3\]"),
    (dict(latent_dim=0), ValueError, "latent_dim must be a positive integer, got 0"),
    (dict(latent_dim="2"), ValueError, "latent_dim must be a positive integer, got '2'"),  # str concatenation
    (dict(input_dim=0), ValueError, "input_dim must be a positive integer, got 0"),
    (dict(dtype="x"), TypeError, "dtype must be float32 or float64, got 'x'"),        # "data type 'x' not understood"
    (dict(seed=-1), ValueError, "seed must be an integer >= 0, got -1"),              # "expected non-negative integer"
    (dict(seed="a"), ValueError, "seed must be an integer >= 0, got 'a'"),            # SeedSequence's message
    (dict(seed=None), ValueError, "seed must be an integer >= 0, got None"),          # "has no len()"
    (dict(likelihood="gaussian_fixed", sigma="a"), ValueError, "sigma must be a positive finite number"),
])
def test_odd_constructor_arguments_are_refused_by_name(kwargs, kind, needle):
    args = {"input_dim": 8, "hidden": [4], "latent_dim": 2, **kwargs}
    with pytest.raises(kind, match=needle):
        sv.VAE(**args)


def test_sampling_with_something_else_than_a_generator_is_refused_by_name():
    """issue 21, the small ones: rng=None or a seed gave "'NoneType' object has no attribute 'standard_normal'"."""
    model = sv.VAE(8, [4], 2)
    for rng in (None, 0):
        with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
            model.sample(3, rng)
        with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
            model.loss(np.full((2, 8), 0.5, np.float32), rng=0)
    with pytest.raises(ValueError, match="n must be an integer >= 0, got -1"):   # "negative dimensions"
        model.prior_sample(-1, np.random.default_rng(0))
