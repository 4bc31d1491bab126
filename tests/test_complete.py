"""Data completion: masks, the exactness of Metropolis-within-Gibbs on a model
whose conditional is known in closed form, baselines and the error metrics."""
import numpy as np
import pytest

import scratchvae as sv
from scratchvae.inference.complete import (Mask, compare, cvae_complete, gibbs_complete, mean_image_complete,
                                           missing_pixel_errors, nearest_neighbour_complete, observed_context)


def test_masks_have_the_promised_shape():
    rng = np.random.default_rng(0)
    half = Mask.parse("bottom-half").sample(rng, 3, (28, 28)).reshape(3, 28, 28)
    assert half[:, 14:].all() and not half[:, :14].any()
    block = Mask.parse("block").sample(rng, 50, (28, 28)).reshape(50, 28, 28)
    assert np.all(block.sum(axis=(1, 2)) == 14 * 14)
    rows, cols = block.any(axis=2), block.any(axis=1)
    assert np.all(rows.sum(1) == 14) and np.all(cols.sum(1) == 14)      # one square each
    assert len({tuple(np.flatnonzero(r)) for r in rows}) > 1              # at different places
    rand = Mask.parse("random:0.3").sample(rng, 200, (28, 28))
    assert abs(rand.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / rand.size)
    assert str(Mask.parse("random:0.3")) == "random:0.3"


@pytest.mark.parametrize("bad", ["left-half", "random:1.5", "random:0", "random:"])
def test_bad_mask_names_are_refused(bad):
    with pytest.raises(ValueError, match="bottom-half, block or random:P"):
        Mask.parse(bad)


def _linear_gaussian():
    """x = z W + b + 0.5 noise, z ~ N(0, I): x ~ N(b, W^T W + 0.25 I), so
    p(x_mis | x_obs) is Gaussian in closed form. The encoder keeps its random
    initial weights: a poor proposal, which MwG must correct."""
    model = sv.VAE(4, [], 2, likelihood="gaussian_fixed", sigma=0.5, dtype=np.float64, seed=3)
    W, b = model.params["dec.0.W"], model.params["dec.0.b"]
    W[...] = [[1.0, 0.5, -0.8, 0.3], [0.2, -1.0, 0.4, 0.9]]
    b[...] = [0.1, -0.2, 0.3, 0.0]
    return model, b.copy(), W.T @ W + 0.25 * np.eye(4)


def test_metropolis_within_gibbs_targets_the_exact_conditional_and_pseudo_gibbs_does_not():
    model, b, cov = _linear_gaussian()
    x = np.array([0.8, -0.5, 0.0, 0.0])
    mis = np.array([False, False, True, True])
    obs = ~mis
    exact = b[mis] + cov[np.ix_(mis, obs)] @ np.linalg.solve(cov[np.ix_(obs, obs)], x[obs] - b[obs])
    n = 3000         # independent chains; the spread of their averages gives the standard error
    X, M = np.tile(x, (n, 1)), np.tile(mis, (n, 1))
    done, acceptance = gibbs_complete(model, X, M, np.random.default_rng(0), steps=400, burn_in=200)
    assert np.all(done[:, obs] == x[obs])
    est, stderr = done[:, mis].mean(0), done[:, mis].std(0) / np.sqrt(n)
    assert np.all(np.abs(est - exact) < 4 * stderr), (est, exact, stderr)
    assert 0 < acceptance < 1
    pseudo, acceptance = gibbs_complete(model, X, M, np.random.default_rng(0), steps=400, burn_in=200,
                                        metropolis=False)
    assert acceptance == 1
    assert np.any(np.abs(pseudo[:, mis].mean(0) - exact) > 50 * stderr)   # biased by the bad encoder


def test_completion_recovers_a_deterministic_missing_half():
    # two 6x6 patterns whose top halves differ: the top half determines the bottom
    rng = np.random.default_rng(1)
    protos = (rng.random((2, 36)) > 0.5).astype(np.float32)
    protos[1, :18] = 1 - protos[0, :18]
    y = rng.integers(0, 2, 3000)
    x = np.clip(protos[y] * 0.9 + 0.05, 0, 1)
    model = sv.VAE(36, [24], 2, seed=0)
    opt = sv.Adam(model.params, lr=3e-3)
    for _ in range(500):
        opt.step(model.loss_and_grads(x[rng.integers(0, 3000, 64)], rng=rng)[1])
    missing = np.zeros((40, 36), bool)
    missing[:, 18:] = True
    test = x[:40]
    for metropolis in (True, False):
        done, _ = gibbs_complete(model, test, missing, np.random.default_rng(2), steps=60, burn_in=20,
                                 metropolis=metropolis)
        assert np.abs(done - test)[missing].mean() < 0.1
        assert np.array_equal(done[~missing], test[~missing])


def test_cvae_completion_uses_the_observed_context():
    rng = np.random.default_rng(3)
    x = rng.random((5, 16)).astype(np.float32)
    missing = rng.random((5, 16)) < 0.5
    c = observed_context(x, missing)
    assert c.shape == (5, 32)
    assert np.array_equal(c[:, 16:], missing.astype(np.float32))
    assert not np.any(c[:, :16][missing])                   # missing values never leak into the context
    model = sv.VAE(16, [8], 2, context_dim=32)
    done = cvae_complete(model, x, missing, rng)
    assert np.array_equal(done[~missing], x[~missing])
    with pytest.raises(ValueError, match="--conditional mask"):
        cvae_complete(sv.VAE(16, [8], 2, context_dim=10), x, missing, rng)
    with pytest.raises(ValueError, match="plain VAE"):
        gibbs_complete(model, x, missing, rng)


def test_a_flow_model_completes_by_pseudo_gibbs_only():
    """The Metropolis ratio needs q(z|x) at the chain's state: a planar flow's needs its inverse."""
    rng = np.random.default_rng(5)
    model = sv.VAE(16, [8], 2, seed=1, flow="planar:2")
    x = rng.random((3, 16)).astype(np.float32)
    missing = Mask.parse("random:0.5").sample(rng, 3, (4, 4))
    with pytest.raises(ValueError, match="pseudo-Gibbs"):
        gibbs_complete(model, x, missing, rng, steps=4, burn_in=1)
    results = compare(model, x, x, missing, rng, steps=4, burn_in=1)
    assert "pseudo-Gibbs" in results and "Metropolis-within-Gibbs" not in results
    done = results["pseudo-Gibbs"][0]
    np.testing.assert_array_equal(done[~missing], x[~missing])


def test_baselines_and_metrics():
    rng = np.random.default_rng(4)
    train = rng.random((100, 20)).astype(np.float32)
    missing = rng.random((10, 20)) < 0.4
    test = train[:10].copy()
    # the nearest neighbour on the observed pixels of a training image is that image
    assert np.array_equal(nearest_neighbour_complete(train, test, missing), test)
    mean_fill = mean_image_complete(train, test, missing)
    assert np.allclose(mean_fill[missing], np.broadcast_to(train.mean(0), test.shape)[missing])
    perfect = missing_pixel_errors(test, test, missing)
    assert perfect["mse"] == 0
    t = test[missing].astype(np.float64)
    assert perfect["bce"] == pytest.approx(-(t * np.log(t) + (1 - t) * np.log(1 - t)).mean(), rel=1e-5)
    half = missing_pixel_errors(test, np.full_like(test, 0.5), missing)
    assert half["bce"] == pytest.approx(np.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="shape of x"):
        gibbs_complete(sv.VAE(20, [8], 2), test, missing[:, :5], rng)


# ----------------------------------------------------------------------
# the command line: train --conditional mask:KIND, scratchvae complete


def _train(tmp_path, monkeypatch, *extra):
    from scratchvae.run import cli
    from scratchvae.data import datasets as ds
    monkeypatch.setattr(ds, "SYNTHETIC_SIZES", (300, 40))
    out = tmp_path / ("run" + "".join(extra).replace(":", "_"))
    assert cli.main(["train", "--hidden", "16", "--latent", "2", "--epochs", "1", "--batch-size", "50",
                     "--out", str(out), "-q", "--no-plots", *extra]) == 0
    return out


def _complete(capsys, *argv):
    from scratchvae.run import cli
    capsys.readouterr()
    code = cli.main(["complete", *map(str, argv)])
    return code, *capsys.readouterr()


def test_complete_a_plain_run_prints_every_method_and_draws_them(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    run = _train(tmp_path, monkeypatch)
    code, out, err = _complete(capsys, run, "--mask", "block", "-n", "4", "--score", "20", "--steps", "6",
                               "--burn-in", "2", "-o", tmp_path / "c.png")
    assert code == 0, err
    assert "mask block: error on the missing pixels of 20 test images" in out
    for method in ("training mean image", "nearest training image", "pseudo-Gibbs", "Metropolis-within-Gibbs"):
        assert method in out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_complete_with_a_mask_conditional_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    run = _train(tmp_path, monkeypatch, "--conditional", "mask:bottom-half")
    assert sv.load(run).context_dim == 2 * 784
    code, out, err = _complete(capsys, run, "--score", "10", "-o", tmp_path / "c.png")
    assert code == 0, err
    assert "mask bottom-half" in out and "conditional VAE" in out and "Gibbs" not in out


def test_complete_refuses_what_it_cannot_do(tmp_path, monkeypatch, capsys):
    run = _train(tmp_path, monkeypatch)
    code, _, err = _complete(capsys, run, "-o", tmp_path / "c.png")
    assert code == 1 and "give --mask" in err
    code, _, err = _complete(capsys, run, "--mask", "left", "-o", tmp_path / "c.png")
    assert code == 1 and "bottom-half, block or random:P" in err
    code, _, err = _complete(capsys, run, "--mask", "block", "-o", tmp_path / "c.jpg")
    assert code == 1 and "must end in .png" in err
    labelled = _train(tmp_path, monkeypatch, "--conditional", "label")
    code, _, err = _complete(capsys, labelled, "--mask", "block", "-o", tmp_path / "c.png")
    assert code == 1 and "takes labels, not observed pixels" in err


def test_a_bad_conditional_option_is_refused(capsys, tmp_path):
    from scratchvae.run import cli
    assert cli.main(["train", "--conditional", "mask:left", "--out", str(tmp_path / "r"), "-q"]) == 1
    assert "unknown mask 'left'" in capsys.readouterr().err
    assert cli.main(["train", "--conditional", "labels", "--out", str(tmp_path / "r"), "-q"]) == 1
    assert "none, label or mask:KIND" in capsys.readouterr().err
