"""The conditional VAE: gradients, the context's bookkeeping, and that the
label really steers the decoder."""
import numpy as np
import pytest

import scratchvae as sv
from scratchvae.model.layers import one_hot


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_pixel"])
@pytest.mark.parametrize("hidden", [[], [7], [8, 6]])
def test_conditional_gradients_match_finite_differences(likelihood, hidden):
    rng = np.random.default_rng(5)
    model = sv.VAE(10, hidden, 3, likelihood=likelihood, activation="elu", seed=1, dtype=np.float64,
                   context_dim=4)
    x = rng.random((5, 10))
    c, eps = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    _, grads = model.loss_and_grads(x, eps=eps, beta=0.7, c=c)
    sv.gradcheck(lambda: model.loss(x, eps=eps, beta=0.7, c=c)["total"], model.params, grads).raise_if_failed()


@pytest.mark.usefixtures("backend")
def test_conditional_importance_weighted_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    model = sv.VAE(10, [7], 3, activation="tanh", seed=1, dtype=np.float64, context_dim=2)
    x, c, eps = rng.random((4, 10)), rng.standard_normal((4, 2)), rng.standard_normal((5, 4, 3))
    _, grads = model.iw_loss_and_grads(x, 5, eps=eps, c=c)
    grads = {k: g.copy() for k, g in grads.items()}
    sv.gradcheck(lambda: model.iw_loss_and_grads(x, 5, eps=eps, c=c)[0]["total"], model.params,
                 grads).raise_if_failed()


@pytest.mark.usefixtures("backend")
def test_context_enters_the_first_layer_of_encoder_and_decoder():
    model = sv.VAE(12, [9], 3, context_dim=5)
    assert model.params["enc.0.W"].shape == (12 + 5, 9)
    assert model.params["dec.0.W"].shape == (3 + 5, 9)
    assert model.config()["context_dim"] == 5
    assert sv.VAE.from_config(model.config()).context_dim == 5


def test_context_is_required_exactly_when_the_model_has_one():
    rng = np.random.default_rng(0)
    x = rng.random((3, 12)).astype(np.float32)
    conditional, plain = sv.VAE(12, [9], 3, context_dim=2), sv.VAE(12, [9], 3)
    with pytest.raises(ValueError, match=r"needs its context c, shape \(batch, 2\)"):
        conditional.loss(x, rng=rng)
    with pytest.raises(ValueError, match="has no context"):
        plain.encode(x, c=np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"c must have shape \(batch, 2\)"):
        conditional.encode(x, c=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="c has 2 rows but the batch has 3"):
        conditional.loss(x, rng=rng, c=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        conditional.sample(2, rng, c=np.full((2, 2), np.nan, np.float32))


def test_a_trained_conditional_vae_draws_the_class_it_is_asked_for():
    # four classes of 6x6 images, each one fixed pattern with a little noise
    rng = np.random.default_rng(0)
    protos = rng.random((4, 36)) > 0.5
    y = rng.integers(0, 4, 2000)
    x = np.clip(protos[y] * 0.9 + 0.05 + 0.03 * rng.standard_normal((2000, 36)), 0, 1).astype(np.float32)
    c = one_hot(y, 4)
    model = sv.VAE(36, [32], 2, context_dim=4, seed=0)
    opt = sv.Adam(model.params, lr=3e-3)
    for step in range(600):
        idx = rng.integers(0, 2000, 64)
        _, grads = model.loss_and_grads(x[idx], rng=rng, c=c[idx])
        opt.step(grads)
    for label in range(4):
        samples = model.sample(50, rng, c=one_hot(np.full(50, label), 4))
        distance = np.abs(samples[:, None, :] - protos[None].astype(np.float32)).mean(axis=2)
        assert np.all(distance.argmin(axis=1) == label)


# ----------------------------------------------------------------------
# the command line: train --conditional label, sample --label


@pytest.fixture
def conditional_run(tmp_path, monkeypatch):
    from scratchvae.run import cli
    from scratchvae.data import datasets as ds
    monkeypatch.setattr(ds, "SYNTHETIC_SIZES", (300, 50))
    out = tmp_path / "run"
    assert cli.main(["train", "--conditional", "label", "--hidden", "16", "--latent", "2", "--epochs", "1",
                     "--batch-size", "50", "--out", str(out), "-q", "--no-plots"]) == 0
    return out


def test_conditional_run_stores_its_context_and_evaluates(conditional_run, capsys):
    from scratchvae.run import checkpoint as ckpt, cli
    header, _ = ckpt.read(conditional_run)
    assert header["model"]["context_dim"] == 10 and header["train"]["config"]["conditional"] == "label"
    assert sv.load(conditional_run).context_dim == 10
    capsys.readouterr()
    assert cli.main(["evaluate", str(conditional_run), "--iw-samples", "3"]) == 0
    assert "synthetic-digits test set (50 examples)" in capsys.readouterr().out


def test_sample_draws_one_label_or_one_row_per_class(conditional_run, tmp_path, capsys):
    from scratchvae.run import cli
    assert cli.main(["sample", str(conditional_run), "--label", "3", "-n", "4", "-o", str(tmp_path / "a.npy")]) == 0
    assert np.load(tmp_path / "a.npy").shape == (4, 784)
    assert cli.main(["sample", str(conditional_run), "-n", "2", "-o", str(tmp_path / "b.npy")]) == 0
    rows = np.load(tmp_path / "b.npy")
    assert rows.shape == (20, 784)
    # the label steers the decoder: one z decoded under two labels gives two images
    same_z = sv.load(conditional_run).decode(np.zeros((2, 2), np.float32),
                                             one_hot(np.array([0, 1]), 10))
    assert np.abs(same_z[0] - same_z[1]).max() > 1e-3


def test_label_is_refused_where_it_makes_no_sense(conditional_run, tmp_path, capsys):
    from scratchvae.run import cli
    assert cli.main(["sample", str(conditional_run), "--label", "10", "-o", str(tmp_path / "a.npy")]) == 1
    assert "--label must lie in [0, 9]" in capsys.readouterr().err
    plain = sv.VAE(784, [8], 2)
    from scratchvae.run import checkpoint as ckpt
    ckpt.save(tmp_path / "plain.npz", plain)
    assert cli.main(["sample", str(tmp_path / "plain.npz"), "--label", "1", "-o", str(tmp_path / "b.npy")]) == 1
    assert "--label needs a conditional model" in capsys.readouterr().err


def test_conditional_training_needs_labels(tmp_path):
    from scratchvae.data.datasets import Dataset
    from scratchvae.run import Run, TrainConfig
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="needs labels"):
        Run(TrainConfig(conditional="label"), Dataset("plain", x, None, x, None), tmp_path)
