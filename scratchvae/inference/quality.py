"""Sample quality with NumPy alone: a classifier trained here on the real images,
and what it says about a set of samples.

Image samples are usually judged by a network trained on real images: the
Inception score (Salimans et al. 2016) and the Fréchet Inception distance
(Heusel et al. 2017). Inception is not at hand (and never saw Fashion-MNIST),
so the judge here is an MLP classifier trained in this library on the real
training images, and its test accuracy goes with every figure, so that one
can see how far to trust it (as papers on MNIST do with a LeNet). The
same training on the few labelled images of a semi-supervised split is the
baseline M2 is measured against (:func:`train_supervised_only`). Three
figures, for samples s against real images r:

* **Fréchet distance** in the classifier's feature space (its last hidden
  layer): the squared 2-Wasserstein distance between the Gaussians with the
  features' means and covariances,
  ``FD = |m_r - m_s|^2 + tr(C_r + C_s - 2 (C_r^1/2 C_s C_r^1/2)^1/2)``.
  0 when the samples' features are distributed as the real ones; it grows
  with blur (features off the real ones) and with missing variety
  (covariance too small). The headline figure; its floor is the distance
  between two sets of real images, reported beside it.
* **confidence**: the mean of the classifier's top probability (an image
  between classes gets a low one);
* **class balance**: the entropy of the histogram of predicted classes
  divided by log C: 1 when every class is drawn equally often (as in
  Fashion-MNIST's test set), 0 when every sample falls in one class.
"""
from __future__ import annotations

import math

import numpy as np

from .. import flat
from ..kernels import ops as K
from ..model.layers import one_hot
from ..model.m2 import accuracy, classifier, classify, split_labels
from ..optim import Adam


def gaussian_frechet_distance(m1, c1, m2, c2) -> float:
    """``|m1 - m2|^2 + tr(c1 + c2 - 2 (c1^1/2 c2 c1^1/2)^1/2)`` for means (d,) and
    symmetric positive semi-definite covariances (d, d).

    ``c1^1/2 = V diag(sqrt(l)) V^T`` from c1's eigendecomposition; the trace of
    the square root of the symmetric ``c1^1/2 c2 c1^1/2`` is the sum of the
    square roots of its eigenvalues (rounding can make tiny ones negative:
    they are clipped at 0).
    """
    m1, m2, c1, c2 = (np.asarray(a, np.float64) for a in (m1, m2, c1, c2))
    lam, V = np.linalg.eigh(c1)
    root = (V * np.sqrt(np.clip(lam, 0, None))) @ V.T
    middle = np.linalg.eigvalsh(root @ c2 @ root)
    cross = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * cross)


def frechet_distance(f1, f2) -> float:
    """The Fréchet distance between two sets of feature vectors (n1, d) and (n2, d)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    return gaussian_frechet_distance(f1.mean(axis=0), np.cov(f1, rowvar=False),
                                     f2.mean(axis=0), np.cov(f2, rowvar=False))


def prediction_figures(proba) -> dict:
    """Confidence and class balance of predictions proba (n, C) (rows sum to 1):
    ``confidence`` = mean top probability; ``balance`` = entropy of the predicted
    classes' frequencies / log C; ``class_counts`` (C,) how many fell in each class."""
    proba = np.asarray(proba, np.float64)
    counts = np.bincount(proba.argmax(axis=1), minlength=proba.shape[1])
    freq = counts[counts > 0] / len(proba)
    return {"confidence": float(proba.max(axis=1).mean()),
            "balance": float(-(freq * np.log(freq)).sum() / math.log(proba.shape[1])) + 0.0,   # not -0.0
            "class_counts": counts.tolist()}


def train_classifier(x, y, n_classes: int, steps: int, batch_size: int = 100, lr: float = 1e-3, seed: int = 0,
                     hidden=(400,), activation="relu", init="torch"):
    """M2's classifier network ``cls`` (:func:`~scratchvae.model.m2.classifier`) trained
    by cross-entropy on (x (n, d) float32, y (n,)) for ``steps`` Adam steps on batches
    drawn with replacement. Returns ``(mlp, params)``."""
    mlp = classifier(x.shape[1], hidden, n_classes, activation)
    params = flat.pack(mlp.init(np.random.default_rng([seed, 1]), init, np.float32))
    grads = flat.zeros_like(params)
    opt = Adam(params, lr=lr)
    rng = np.random.default_rng([seed, 9])
    for _ in range(steps):
        pick = rng.integers(0, len(x), batch_size)
        logits, caches = mlp.forward(params, x[pick])
        # mean cross-entropy: d/dlog q_y = -1/B at the label
        d_log_q = -one_hot(y[pick], n_classes, np.float32) / batch_size
        mlp.backward(caches, K.log_softmax_backward(K.log_softmax(logits), d_log_q), grads, need_d_x=False)
        opt.step(grads)
    return mlp, params


def train_supervised_only(data, per_class: int = 100, steps: int = 4690, batch_size: int = 100,
                          lr: float = 1e-3, seed: int = 0, classifier_hidden=(400,), activation="relu",
                          init="torch"):
    """The baseline M2 is measured against: its classifier network alone, trained
    by cross-entropy on the labelled examples M2 gets (:func:`~scratchvae.model.m2.split_labels`)
    for ``steps`` Adam steps. Returns the test accuracy."""
    labelled, _ = split_labels(data.y_train, per_class, seed)
    n_classes = int(data.y_train.max()) + 1
    mlp, params = train_classifier(data.x_train[labelled], data.y_train[labelled], n_classes, steps, batch_size,
                                   lr, seed, classifier_hidden, activation, init)
    return accuracy(lambda x: classify(mlp, params, x), data.x_test, data.y_test)


class SampleJudge:
    """A classifier trained on real images (x (n, d), y (n,)) that scores sets of samples.

    ``steps`` Adam steps on batches of ``batch_size`` drawn with the seed, an
    MLP with ``hidden`` ReLU layers (its last hidden layer is the feature space).
    """

    def __init__(self, x, y, n_classes: int, steps: int = 3000, batch_size: int = 100, seed: int = 0,
                 hidden=(400,)):
        self.n_classes = int(n_classes)
        self.mlp, self.params = train_classifier(np.asarray(x, np.float32), np.asarray(y), self.n_classes, steps,
                                                 batch_size, seed=seed, hidden=hidden)

    def _forward(self, x, batch_size=1000):
        """``(features (n, h), probabilities (n, C))``, float64: the input of the
        output layer, and the softmax of its output."""
        x = np.asarray(x, np.float32)
        feats, proba = [], []
        for s in range(0, len(x), batch_size):
            logits, caches = self.mlp.forward(self.params, x[s:s + batch_size])
            feats.append(caches[-1][0].astype(np.float64))
            proba.append(np.exp(K.log_softmax(logits).astype(np.float64)))
        return np.concatenate(feats), np.concatenate(proba)

    def predict(self, x):
        """The most probable class of each row of x (n, d), (n,) int64."""
        return classify(self.mlp, self.params, np.asarray(x, np.float32))

    def accuracy(self, x, y) -> float:
        """The fraction of x (n, d) classified as y (n,)."""
        return accuracy(self.predict, x, np.asarray(y))

    def score(self, samples, real) -> dict:
        """The figures of ``samples`` (n, d) against ``real`` images (m, d), same pixel
        scale as the training images: ``frechet``, ``confidence``, ``balance``, ``class_counts``."""
        f_s, p_s = self._forward(samples)
        f_r, _ = self._forward(real)
        return {"frechet": frechet_distance(f_r, f_s), **prediction_figures(p_s)}
