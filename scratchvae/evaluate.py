"""Evaluation: the test ELBO and its parts, in nats per example."""
from __future__ import annotations

from typing import Dict

import numpy as np

from .vae import VAE


def elbo(model: VAE, x: np.ndarray, rng: np.random.Generator, batch_size: int = 1000,
         n_samples: int = 1) -> Dict[str, float]:
    """Negative ELBO of ``x`` (n, d) with its parts, averaged over examples.

    Returns ``{"total", "nll", "kl"}`` in nats per example with beta = 1:
    ``total = nll + kl`` is the loss the PyTorch reference VAE reports as
    "test set loss". ``nll`` uses z sampled from q(z|x) (``n_samples`` draws
    per example, averaged); ``kl`` is analytic.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    sums = {"nll": 0.0, "kl": 0.0}
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        for _ in range(n_samples):
            losses = model.loss(xb, rng=rng)
            for k in sums:
                sums[k] += losses[k] * len(xb) / n_samples
    out = {k: v / len(x) for k, v in sums.items()}
    out["total"] = out["nll"] + out["kl"]
    return out
