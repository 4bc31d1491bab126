"""Evaluation: the test ELBO and its parts, the importance-weighted log p(x) and
the active units, in nats per example."""
from __future__ import annotations

from typing import Dict

import numpy as np

from ..model import VAE, memory
from ..model.vae import check_samples
from ..model.latent import importance_weights


def elbo(model: VAE, x: np.ndarray, rng: np.random.Generator, batch_size: int = 1000,
         n_samples: int = 1, c=None, comm=None) -> Dict[str, float]:
    """Negative ELBO of ``x`` (n, d) with its parts, averaged over examples.

    Returns ``{"total", "nll", "kl"}`` in nats per example with beta = 1:
    ``total = nll + kl`` is the loss the PyTorch reference VAE reports as
    "test set loss". ``nll`` uses z sampled from q(z|x) (``n_samples`` draws
    per example, averaged); ``kl`` is analytic, or with a flow or the
    VampPrior its estimate at those z (``VAE.analytic_kl``). ``c``: (n, m),
    the contexts of a conditional model.

    ``comm``: a :class:`~scratchvae.distributed.comm.Communicator` whose ranks
    share the batches (every rank gets the same figures, equal bit for bit to
    one process's: each batch's noise comes from ``rng`` in batch order, and
    its losses are added in that order).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    part, size = (0, 1) if comm is None else (comm.rank, comm.size)
    mine = {}                                   # batch number -> (rows, the losses of each draw)
    for j, start in enumerate(range(0, len(x), batch_size)):
        xb = x[start:start + batch_size]
        cb = None if c is None else c[start:start + batch_size]
        draws = []
        for _ in range(n_samples):
            if j % size == part:
                draws.append(model.loss(xb, rng=rng, c=cb))
            else:                               # another rank's batch: draw its noise all the same
                rng.standard_normal((len(xb), model.latent_dim), dtype=model.dtype)
        if draws:
            mine[j] = (len(xb), draws)
    if comm is not None:
        mine = {j: batch for ranks in comm.allgather(mine) for j, batch in ranks.items()}
    sums = {"nll": 0.0, "kl": 0.0}
    for j in sorted(mine):
        rows, draws = mine[j]
        for losses in draws:
            for k in sums:
                sums[k] += losses[k] * rows / n_samples
    out = {k: v / len(x) for k, v in sums.items()}
    out["total"] = out["nll"] + out["kl"]
    return out


def log_likelihood(model: VAE, x: np.ndarray, k: int, rng: np.random.Generator, batch_size: int = 100,
                   chunk: int = 100, progress=None, c=None, comm=None) -> np.ndarray:
    """Importance-weighted estimate of log p(x) per example (Burda et al. 2016), in nats.

    Returns ``log (1/k) sum_i w_i``, ``w_i = p(x|z_i) p(z_i) / q(z_i|x)``,
    ``z_i ~ q(z|x)``: the model's forward with k samples per example gives
    ``log w = -(nll + kl_sample)``. It is one Monte Carlo draw of the
    importance-weighted bound
    ``L_k = E_{z_1..z_k ~ q}[log (1/k) sum_i w_i] <= log p(x)``: for k = 1
    ``L_k`` is the ELBO, and it rises with k towards log p(x). The bound holds
    for the expectation, so one estimate, a random variable, can come out
    above log p(x). The k samples are drawn ``chunk`` at a time and each
    chunk's ``log sum w`` is added to a running log-sum-exp in
    float64, so memory stays at ``batch_size * chunk`` decoded examples
    whatever k is.

    x: (n, d); c: (n, m) for a conditional model. Returns (n,) float64.
    ``progress``: a callable(done, total). ``comm``: the ranks that share the
    batches, as in :func:`elbo` (every rank returns all n estimates, each the
    one process computes).
    """
    check_samples(k)
    x = model.check_x(x)
    c = model.check_c(c, len(x))
    n, latent = len(x), model.latent_dim
    rows, draws = min(batch_size, n), min(chunk, k)
    memory.require(memory.step_bytes(model, rows, draws) + rows * draws * latent * model.dtype.itemsize,
                   f"the importance-weighted bound, {draws:,} samples of {rows:,} examples at a time")
    part, size = (0, 1) if comm is None else (comm.rank, comm.size)
    out = np.full(n, np.nan)
    for j, start in enumerate(range(0, n, batch_size)):
        xb = x[start:start + batch_size]
        cb = None if c is None else c[start:start + batch_size]
        log_sum = np.full(len(xb), -np.inf)                       # log sum_i w_i so far
        for s0 in range(0, k, chunk):
            m = min(chunk, k - s0)
            eps = rng.standard_normal((m, len(xb), latent), dtype=model.dtype)
            if j % size != part:                                  # another rank's batch: its noise drawn only
                continue
            terms, _ = model.forward(xb, eps, cb, with_grad=False)
            log_mean, _ = importance_weights(terms.log_weight)
            log_sum = np.logaddexp(log_sum, log_mean + np.log(m))
        if j % size == part:
            out[start:start + len(xb)] = log_sum - np.log(k)
            if progress is not None:
                progress(start + len(xb), n)
    if comm is not None:
        for j, theirs in enumerate(comm.allgather(out)):
            mine = np.arange(n) // batch_size % size == j
            out[mine] = theirs[mine]
    return out


def active_units(model: VAE, x: np.ndarray, threshold: float = 0.01, batch_size: int = 1000, c=None):
    """Burda et al.'s active units: latent dimensions u whose posterior mean
    varies over the data, ``Var_x(E_q[z_u | x]) > threshold``.

    Returns ``(count, variances)`` with variances (k,). ``c``: (n, m) for a conditional model.
    """
    means = np.concatenate([model.encode(x[s:s + batch_size], None if c is None else c[s:s + batch_size])[0]
                            for s in range(0, len(x), batch_size)])
    variances = means.astype(np.float64).var(axis=0)
    return int((variances > threshold).sum()), variances
