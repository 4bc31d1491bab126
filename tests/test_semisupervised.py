"""The M2 semi-supervised model: its hand-written gradient, its bookkeeping
of labels and classes, and that unlabelled data help on a small problem."""
import math

import numpy as np
import pytest

import scratchvae as sv
from scratchvae.data.datasets import Dataset
from scratchvae.inference.quality import train_supervised_only
from scratchvae.model.m2 import M2, split_labels
from scratchvae.run import Run, TrainConfig, Trainer
from scratchvae.run import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("backend")


def _instance(seed=0, K=3, b_l=4, b_u=5, d=8, latent=2):
    rng = np.random.default_rng(seed)
    model = M2(d, K, hidden=[6], latent_dim=latent, classifier_hidden=[5], activation="tanh", alpha=2.5,
               seed=seed, dtype=np.float64)
    x_l, x_u = rng.random((b_l, d)), rng.random((b_u, d))
    y_l = rng.integers(0, K, b_l)
    eps = rng.standard_normal((b_l + K * b_u, latent))
    return model, x_l, y_l, x_u, eps


@pytest.mark.parametrize("seed", [0, 1])
def test_m2_gradients_match_finite_differences(seed):
    model, x_l, y_l, x_u, eps = _instance(seed)
    _, grads = model.loss_and_grads(x_l, y_l, x_u, eps=eps)
    grads = {k: g.copy() for k, g in grads.items()}
    assert set(grads) == set(model.params) and any(k.startswith("cls.") for k in grads)
    sv.gradcheck(lambda: model.loss(x_l, y_l, x_u, eps=eps)["total"], model.params, grads).raise_if_failed()


def test_m2_loss_is_the_sum_of_its_definitions():
    model, x_l, y_l, x_u, eps = _instance()
    K = model.n_classes
    losses = model.loss(x_l, y_l, x_u, eps=eps)
    one_hot = np.eye(K)
    # labelled: the CVAE's negative ELBO with c = one-hot(y), + log K, + alpha * cross-entropy
    L_l = np.array([model.vae.loss(x_l[i:i + 1], eps=eps[i:i + 1], c=one_hot[y_l[i:i + 1]])["total"]
                    for i in range(len(x_l))]) + math.log(K)
    log_q = model.log_proba(np.concatenate([x_l, x_u]))
    ce = -log_q[np.arange(len(x_l)), y_l]
    assert losses["labelled"] == pytest.approx(L_l.mean() + model.alpha * ce.mean(), rel=1e-12)
    # unlabelled: sum over y of q(y|x) L(x, y), minus the entropy of q(y|x)
    b_l, b_u = len(x_l), len(x_u)
    U = []
    for i in range(b_u):
        L = [model.vae.loss(x_u[i:i + 1], eps=eps[b_l + k * b_u + i:b_l + k * b_u + i + 1],
                            c=one_hot[[k]])["total"] + math.log(K) for k in range(K)]
        q = np.exp(log_q[b_l + i])
        U.append(q @ L + q @ np.log(q))
    assert losses["unlabelled"] == pytest.approx(np.mean(U), rel=1e-12)


def test_labels_are_split_per_class_and_reproducibly():
    y = np.repeat(np.arange(4), 30)
    labelled, unlabelled = split_labels(y, 5, seed=3)
    assert np.array_equal(np.bincount(y[labelled]), [5, 5, 5, 5])
    assert len(np.intersect1d(labelled, unlabelled)) == 0 and len(labelled) + len(unlabelled) == 120
    assert np.array_equal(labelled, split_labels(y, 5, seed=3)[0])
    assert not np.array_equal(labelled, split_labels(y, 5, seed=4)[0])
    with pytest.raises(ValueError, match="fewer than 40 labels per class"):
        split_labels(y, 40, seed=0)


def test_bad_labels_are_refused():
    model, x_l, y_l, x_u, eps = _instance()
    with pytest.raises(ValueError, match="one label per labelled example"):
        model.loss(x_l, y_l[:2], x_u, eps=eps)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        model.loss(x_l, np.full(len(x_l), 3), x_u, eps=eps)


def _tiny_problem(n=600, seed=0):
    """Two well-separated classes of 6x6 images; the labels follow the pattern."""
    rng = np.random.default_rng(seed)
    protos = (rng.random((2, 36)) > 0.5).astype(np.float32)
    y = rng.integers(0, 2, n)
    x = np.clip(protos[y] * 0.8 + 0.1 + 0.1 * rng.standard_normal((n, 36)), 0, 1).astype(np.float32)
    return Dataset("tiny", x[:n // 2], y[:n // 2].astype(np.int64), x[n // 2:], y[n // 2:].astype(np.int64), (6, 6))


def test_m2_learns_a_separable_problem_from_two_labels_per_class(tmp_path):
    data = _tiny_problem()
    config = TrainConfig(semi_supervised=True, labels_per_class=2, epochs=4, batch_size=50, labelled_batch=4,
                         lr=3e-3, seed=0, hidden=[16], latent_dim=2)
    run = Run(config, data, tmp_path)
    Trainer(run, quiet=True).fit()
    history = run.history
    assert history[0]["epoch"] == 1 and len(history) == 4
    assert history[-1]["test_accuracy"] > 0.95
    assert train_supervised_only(data, per_class=2, steps=100, batch_size=4, classifier_hidden=[16]) > 0.95


def test_semi_supervised_from_the_command_line(tmp_path, monkeypatch, capsys):
    from scratchvae.run import cli
    from scratchvae.data import datasets as ds
    monkeypatch.setattr(ds, "SYNTHETIC_SIZES", (300, 50))
    out = tmp_path / "m2"
    code = cli.main(["train", "--semi-supervised", "--labels-per-class", "5", "--hidden", "16", "--latent", "2",
                     "--epochs", "1", "--batch-size", "50", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "5 labels per class, the other 250 training examples unlabelled" in captured.err
    assert "epoch   1/1" in captured.err and "test accuracy" in captured.err
    assert "test accuracy of q(y|x)" in captured.out
    model = ckpt.load_m2(out)
    assert model.n_classes == 10 and model.predict(np.zeros((3, 784), np.float32)).shape == (3,)
    assert sv.load(out).context_dim == 10          # the CVAE part loads as a plain checkpoint
    assert cli.main(["sample", str(out), "--label", "2", "-n", "3", "-o", str(tmp_path / "s.npy")]) == 0
    assert cli.main(["train", "--semi-supervised", "--iw-samples", "3", "--out", str(tmp_path / "x")]) == 1
    assert "semi-supervised (M2) training" in capsys.readouterr().err
    # and it resumes: one more epoch continues the stored run
    assert cli.main(["train", "--resume", str(out), "--epochs", "2", "--no-plots", "-q"]) == 0
    assert ckpt.read(out)[0]["train"]["epoch"] == 2
