"""Evaluation: the importance-weighted log-likelihood and the quadrature against a closed form,
each against the other on nonlinear models, active units, the posterior picture's grid."""
import math

import numpy as np
import pytest

import naive
import scratchvae as sv
from scratchvae.inference.evaluate import active_units, elbo, log_likelihood
from scratchvae.inference.exact import as_float64, log_marginal, posterior_grid

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


# ----------------------------------------------------------------------
# exact log p(x) by quadrature (latent of size 1 or 2)
# ----------------------------------------------------------------------

def _nonlinear(latent, likelihood="bernoulli", seed=0, d=12):
    """A small tanh VAE with spread-out weights (no closed form), and data drawn from it."""
    model = sv.VAE(d, [8], latent, likelihood=likelihood, activation="tanh", sigma=0.4, dtype=np.float64,
                   seed=seed)
    rng = np.random.default_rng(seed)
    for value in model.params.values():
        value *= 2.5
    return model, model.sample(12, rng, mean=False)


@pytest.mark.parametrize("exact_posterior", [True, False])
def test_quadrature_matches_the_closed_form_log_p_x(exact_posterior):
    model, x, log_px = _linear_gaussian(exact_posterior)
    q = log_marginal(model, x)
    np.testing.assert_allclose(q.log_px, log_px, rtol=0, atol=1e-8)
    assert q.change <= 1e-3 and q.levels >= 2
    assert q.radius > 6          # some posteriors reach past |z| = 6 (within e^-25 of their mass): widened


def test_quadrature_does_not_depend_on_its_starting_grid():
    model, x = _nonlinear(2)
    a = log_marginal(model, x, tol=1e-6)
    b = log_marginal(model, x, tol=1e-6, radius=1.5, tile=0.5)       # too small a box: it must widen
    assert b.radius > 1.5
    np.testing.assert_allclose(a.log_px, b.log_px, rtol=0, atol=1e-5)


def test_importance_weighted_estimate_converges_to_the_quadrature():
    model, x, log_px = _linear_gaussian(exact_posterior=False)
    exact = log_marginal(model, x).log_px.mean()
    means = [log_likelihood(model, x, k=k, rng=np.random.default_rng(k), chunk=500).mean() for k in (10, 100, 5000)]
    assert means[0] < means[1] < means[2] <= exact + 0.01
    assert exact - means[2] < 0.02 < exact - means[0]


@pytest.mark.parametrize("latent, likelihood", [(2, "bernoulli"), (1, "gaussian_pixel"),
                                                (2, "continuous_bernoulli")])
def test_quadrature_agrees_with_monte_carlo_over_the_prior(latent, likelihood):
    """No closed form here: check against log mean_j p(x | z_j), z_j ~ N(0, I), which converges
    to log p(x) (slowly, but surely in one or two dimensions), and the IW bound rises towards it."""
    model, x = _nonlinear(latent, likelihood, seed=latent)
    if likelihood == "gaussian_pixel":
        model.params["dec.log_sigma"][...] = np.log(np.random.default_rng(3).uniform(0.3, 0.8, 12))
    exact = log_marginal(model, x).log_px
    z = np.random.default_rng(4).standard_normal((200_000, latent))
    log_prior = -0.5 * (z ** 2).sum(axis=1) - latent * 0.5 * math.log(2 * math.pi)
    monte_carlo = []
    for xi in x:
        log_joint, _ = model.log_joint(z, np.broadcast_to(xi, (len(z), len(xi))))
        log_lik = log_joint - log_prior
        monte_carlo.append(log_lik.max() + math.log(np.exp(log_lik - log_lik.max()).mean()))
    np.testing.assert_allclose(exact, monte_carlo, rtol=0, atol=0.02)
    assert abs(exact.mean() - np.mean(monte_carlo)) < 0.005
    means = [log_likelihood(model, x, k=k, rng=np.random.default_rng(k), chunk=500).mean() for k in (1, 30, 3000)]
    assert means[0] < means[1] < means[2] < exact.mean() + 0.01


def test_quadrature_of_a_conditional_model_integrates_each_context():
    model = sv.VAE(10, [6], 2, context_dim=2, activation="tanh", dtype=np.float64, seed=4)
    for value in model.params.values():
        value *= 2
    rng = np.random.default_rng(5)
    c = np.eye(2)[rng.integers(0, 2, 16)]
    x = model.sample(16, rng, mean=False, c=c)
    together = log_marginal(model, x, c).log_px
    one_by_one = [log_marginal(model, x[i:i + 1], c[i:i + 1]).log_px[0] for i in range(4)]
    np.testing.assert_allclose(together[:4], one_by_one, rtol=0, atol=1e-3)
    other = log_marginal(model, x[:4], 1 - c[:4]).log_px
    assert np.all(np.abs(other - together[:4]) > 1e-3)    # the context matters
    iw = log_likelihood(model, x, k=20000, rng=np.random.default_rng(6), chunk=500, c=c)
    assert abs(iw.mean() - together.mean()) < 0.05


def test_a_float32_model_is_integrated_in_float64():
    model, x = _nonlinear(2)
    single = sv.VAE.from_config({**model.config(), "dtype": "float32"})
    for name, value in model.params.items():
        single.params[name][...] = value
    got = log_marginal(single, x.astype(np.float32)).log_px
    want = log_marginal(as_float64(single), x).log_px
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_quadrature_refuses_a_large_latent_and_says_when_it_does_not_settle():
    model = sv.VAE(6, [4], 3, dtype=np.float64)
    with pytest.raises(ValueError, match="feasible for a latent of size 1 or 2; this model's latent has 3"):
        log_marginal(model, np.full((2, 6), 0.5))
    model, x = _nonlinear(2)
    with pytest.raises(ValueError, match=r"did not settle: .* more than tol = 1e-12"):
        log_marginal(model, x, tol=1e-12, max_points_per_tile=16)


def test_posterior_grid_is_normalised_and_its_gap_is_the_kl():
    model, x, log_px = _linear_gaussian(exact_posterior=False)
    grid = posterior_grid(model, x[0], rng=np.random.default_rng(0), samples=20000)
    (z1, z2) = grid["axes"]
    cell = (z1[1] - z1[0]) * (z2[1] - z2[0])
    assert np.exp(grid["log_posterior"]).sum() * cell == pytest.approx(1, abs=1e-3)
    assert np.exp(grid["log_q"]).sum() * cell == pytest.approx(1, abs=1e-3)
    assert grid["log_px"] == pytest.approx(log_px[0], abs=1e-8)
    # the gap log p(x) - ELBO is KL(q || p(z|x)): here both are Gaussians, so it has a closed form
    W = model.params["dec.0.W"].T
    S = np.linalg.inv(np.eye(K) + W.T @ W / SIGMA ** 2)
    post_mean = S @ W.T @ (x[0] - model.params["dec.0.b"]) / SIGMA ** 2
    kl = naive.kl_mvn(grid["mu"], np.diag(np.exp(grid["logvar"])), post_mean, S)
    assert grid["log_px"] - grid["elbo"] == pytest.approx(kl, abs=0.02)


# ----------------------------------------------------------------------
# the command: evaluate --exact, --posterior
# ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Two CLI runs on 8x8 bars: latent 2 and latent 3."""
    import contextlib
    import io
    from scratchvae.run import cli
    from cli_helpers import bars
    folder = tmp_path_factory.mktemp("exact")
    np.savez(folder / "bars.npz", x=bars(200))
    for name, extra in (("latent2", ["--latent", "2"]), ("latent3", ["--latent", "3"]),
                        ("flow", ["--latent", "2", "--flow", "planar:2"])):
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["train", "--dataset", str(folder / "bars.npz"), "--hidden", "16", *extra,
                             "--epochs", "2", "--batch-size", "32", "--no-plots", "--out", str(folder / name)]) == 0
    return folder


def test_evaluate_exact_prints_the_chain_of_bounds_and_its_gaps(capsys, small_runs):
    from cli_helpers import run
    code, out, err = run(capsys, "evaluate", small_runs / "latent2", "--exact", "--iw-samples", "200",
                         "--samples", "20")
    assert code == 0, err
    minus_elbo = float(out.split("-ELBO ")[1].split()[0])
    iw = float(out.split("log p(x) >= ")[1].split()[0])
    exact = float(out.split("log p(x) = ")[1].split()[0])
    assert f"ELBO {-minus_elbo:.3f} <= IW bound (k = 200) {iw:.3f} <= exact log p(x) {exact:.3f}" in out
    kl = float(out.split("exact - ELBO = KL(q(z|x) || p(z|x)) ")[1].split()[0])
    assert kl == pytest.approx(exact + minus_elbo, abs=2e-3)
    worst = out.split("exact - IW per image: median ")[1]
    assert "of 20 images, largest " in worst and int(worst.split("--posterior ")[1].split()[0]) < 20
    from scratchvae.run.run import Run
    r = Run.open(small_runs / "latent2")
    assert exact == pytest.approx(log_marginal(r.vae, r.x_test).log_px.mean(), abs=1e-3)
    assert -minus_elbo < iw + 0.05 and iw < exact + 0.05                  # within the estimates' noise


def test_evaluate_exact_of_a_flow_model(capsys, small_runs):
    from cli_helpers import run
    code, out, err = run(capsys, "evaluate", small_runs / "flow", "--exact", "--iw-samples", "50")
    assert code == 0, err
    assert "exact - ELBO = KL(q(z|x) || p(z|x))" in out


def test_evaluate_posterior_draws_the_picture(capsys, small_runs, tmp_path):
    from cli_helpers import assert_png, run
    png = tmp_path / "post.png"
    code, out, err = run(capsys, "evaluate", small_runs / "latent2", "--posterior", "4", "-o", png)
    assert code == 0, err
    assert_png(png)
    line = [l for l in out.splitlines() if l.startswith("  test image 4:")][0]
    log_px = float(line.split("log p(x) = ")[1].split(",")[0])
    elbo_4 = float(line.split("ELBO ")[1].split()[0])
    kl = float(line.split("KL(q(z|x) || p(z|x)) = ")[1].split()[0])
    assert kl == pytest.approx(log_px - elbo_4, abs=2e-3) and kl > 0


@pytest.mark.parametrize("argv, needle", [
    (["latent3", "--exact"], "feasible for a latent of size 1 or 2; this model's latent has 3 dimensions"),
    (["latent3", "--posterior", "0", "-o", "p.png"], "latent of size 1 or 2"),
    (["latent2", "--posterior", "0"], "--posterior I and -o FILE.png go together"),
    (["latent2", "-o", "p.png"], "--posterior I and -o FILE.png go together"),
    (["latent2", "--posterior", "0", "-o", "p.pdf"], "-o must end in .png"),
    (["latent2", "--posterior", "20", "-o", "p.png"], "--posterior must lie in [0, 19]"),
    (["flow", "--posterior", "0", "-o", "p.png"], "carried through a flow (planar:2)"),
])
def test_evaluate_refuses_what_it_cannot_do(capsys, small_runs, tmp_path, monkeypatch, argv, needle):
    from cli_helpers import assert_one_error, run
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "evaluate", small_runs / argv[0], *argv[1:])
    assert_one_error(code, err, needle)
    assert out == "" and not list(tmp_path.iterdir())


def test_posterior_picture_of_a_one_dimensional_latent(tmp_path):
    pytest.importorskip("matplotlib")
    from scratchvae.run import plots
    from cli_helpers import assert_png
    model, x = _nonlinear(1)
    grid = posterior_grid(model, x[0], samples=2000)
    (z,) = grid["axes"]
    assert grid["log_posterior"].shape == (201,)
    assert np.exp(grid["log_posterior"]).sum() * (z[1] - z[0]) == pytest.approx(1, abs=1e-3)
    for shape, name in (((3, 4), "image.png"), (None, "vector.png")):
        assert_png(plots.posterior(grid, x[0], shape, tmp_path / name, "title"))


def test_quadrature_integrates_the_models_own_prior():
    """With a VampPrior, p(x) = ∫ p(x|z) p_vamp(z) dz: against Monte Carlo over that prior."""
    model = sv.VAE(12, [8], 2, activation="tanh", prior="vamp", pseudo_inputs=3, dtype=np.float64, seed=2)
    for name, value in model.params.items():
        if name != "prior.u":
            value *= 2
    x = model.sample(6, np.random.default_rng(0), mean=False)
    exact = log_marginal(model, x).log_px
    z = model.prior_sample(200_000, np.random.default_rng(1))
    for xi, value in zip(x, exact):
        log_joint, _ = model.log_joint(z, np.broadcast_to(xi, (len(z), len(xi))))
        log_lik = log_joint - model.log_prior(z)
        assert value == pytest.approx(log_lik.max() + math.log(np.exp(log_lik - log_lik.max()).mean()), abs=0.02)
    plain = sv.VAE.from_config({**model.config(), "prior": "standard", "pseudo_inputs": 0})
    for name, value in plain.params.items():
        value[...] = model.params[name]
    assert np.all(np.abs(log_marginal(plain, x).log_px - exact) > 1e-3)     # the prior does matter


def test_exact_log_p_x_does_not_depend_on_the_encoder_and_a_flow_has_no_picture():
    flowing = sv.VAE(12, [8], 2, activation="tanh", flow="planar:2", dtype=np.float64, seed=3)
    plain = sv.VAE(12, [8], 2, activation="tanh", dtype=np.float64, seed=4)
    for name, value in plain.params.items():
        if name.startswith("dec."):
            value[...] = flowing.params[name]           # same decoder and prior, other encoders
    x = plain.sample(8, np.random.default_rng(0), mean=False)
    np.testing.assert_allclose(log_marginal(flowing, x).log_px, log_marginal(plain, x).log_px, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"q is a Gaussian carried through a flow \(planar:2\)"):
        posterior_grid(flowing, x[0])


def test_quadrature_refuses_more_images_than_memory_holds(monkeypatch):
    from scratchvae.model import memory
    model, x = _nonlinear(2)
    monkeypatch.setattr(memory, "available_memory", lambda: 50_000_000)      # 50 MB
    log_marginal(model, x)                                                    # 12 images fit
    with pytest.raises(memory.NotEnoughMemoryError, match=r"exact log p\(x\) of 12,000 examples would take"):
        log_marginal(model, np.tile(x, (1000, 1)))
