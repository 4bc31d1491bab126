"""Data-parallel SGD by hand: every rank holds the whole model and takes its rows of each batch.

With N ranks and a global batch of B rows, rank r computes on rows ``rows_of(B, r, N)``
(about B/N of them) the gradient of their mean loss, scales it by ``n_r / B`` so that
the ranks' gradients add up to the gradient of the whole batch's mean,

    g = sum_r (n_r / B) g_r,        g_r = (1/n_r) sum_{i in rows r} grad l_i,

and one ``allreduce_sum`` over the model's flat gradient buffer hands every rank the
same g. Every rank then takes the same Adam step, so the ranks' parameters stay
equal bit for bit without ever being sent.

What makes N ranks train the run one process trains (up to the order in which the
float32 gradient is summed): every rank draws the random numbers of the *whole* batch
from the run's one generator, in the order one process draws them (the uniforms that
binarise the batch, a conditional run's contexts, the noise eps of every example),
and keeps its rows. The shuffle, binarisation and noise of an example therefore depend
on the seed and its position in the batch, never on the rank or the number of ranks,
and the generator's state after a step is the same on every rank and in one process.
The binarisation's uniforms, the bulk of the draws (B x d), are not drawn for the
other ranks' rows but jumped over (:func:`skip_uniforms`); the rest is small
(B x latent noise) or, for a conditional run whose context may read the whole
batch, drawn whole.

What a rank's share is belongs to the objective (``Objective.share`` in
``run/train.py``): the ELBO's and the IWAE bound's rows of the batch, or M2's rows of
its unlabelled batch and of the labelled examples drawn for the step, each with the
denominators of the whole batch. The losses (and a rank's failure, and a stop signal)
travel in a second, small sum, so that every rank sees the same losses and stops or
fails at the same step.
"""
from __future__ import annotations

import time
from typing import Tuple

import numpy as np

from .comm import Communicator


def skip_uniforms(rng: np.random.Generator, count: int) -> None:
    """Move ``rng`` past ``count`` float32 uniforms, as ``rng.random(count, dtype=np.float32)``
    would, without drawing them. PCG64 makes one 64-bit output per two float32s (it keeps the
    other half for the next draw), and jumps over outputs in O(log n) (``advance``)."""
    if not isinstance(rng.bit_generator, np.random.PCG64):
        raise TypeError(f"skip_uniforms needs a PCG64 generator, got {type(rng.bit_generator).__name__}")
    if count and rng.bit_generator.state["has_uint32"]:
        rng.random(dtype=np.float32)                # the half kept from the last output
        count -= 1
    if count >= 2:
        rng.bit_generator.advance(count // 2)
    if count % 2:
        rng.random(dtype=np.float32)                # half an output: the other half is kept, as drawing does


def rows_of(n: int, rank: int, size: int) -> slice:
    """Rank ``rank``'s rows of a batch of n: contiguous blocks, the first ``n % size`` ranks one row more."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class Draws:
    """The random numbers of a run's whole batch, taken from its generator in one process's order,
    kept for this rank's rows. Each method takes what one process draws at that point of a step."""

    def __init__(self, run):
        self.run = run
        self._uniforms = {}

    def images(self, idx, rows) -> np.ndarray:
        """Rows ``rows`` of the images ``x_train[idx]`` (float32), binarised, if the run binarises
        every batch, with the uniforms :func:`binarize` draws for them; the other rows' are jumped over."""
        run = self.run
        x = run.x_train[idx[rows]]
        if run.config.binarize == "dynamic":
            d = x.shape[1]
            skip_uniforms(run.rng, rows.start * d)
            u = self._uniform_buffer(x.shape)
            run.rng.random(dtype=np.float32, out=u)
            skip_uniforms(run.rng, (len(idx) - rows.stop) * d)
            np.less(u, x, out=x)
        return x

    def images_and_contexts(self, idx, rows):
        """:meth:`images` and their contexts (None for a plain VAE). A context may read the whole
        batch (the observed part of each image), so a conditional run's images are all binarised."""
        run = self.run
        if run.c_test is None:
            return self.images(idx, rows), None
        x = self.images(idx, slice(0, len(idx)))
        return x[rows], run.train_context(idx, x, run.rng)[rows]

    def noise(self, shape) -> np.ndarray:
        """Standard normals of ``shape``, in the model's dtype (the rank keeps the rows it needs)."""
        return self.run.rng.standard_normal(shape, dtype=self.run.vae.dtype)

    def _uniform_buffer(self, shape):
        if shape not in self._uniforms:
            self._uniforms[shape] = np.empty(shape, np.float32)
        return self._uniforms[shape]


class DataParallelStep:
    """One optimizer step of a run's global batch, split over ``comm``'s ranks.

    ``objective``: the run's :class:`~scratchvae.run.train.Objective`; its
    ``share(run, idx, rank, size, beta, draws)`` computes this rank's share of
    the step (the losses and, in the model's ``grad_buffers``, the gradient,
    both adding up over the ranks to the whole batch's). :attr:`allreduce_seconds` sums the
    time spent in the gradient's sum (waiting for the slowest rank included).
    """

    def __init__(self, comm: Communicator, run, objective):
        self.comm, self.run, self.objective = comm, run, objective
        self.draws = Draws(run)
        self.allreduce_seconds = 0.0
        n_parts = len(objective.parts)
        # the small sum: each loss part's share, then one slot per rank for "my rows failed", then "stop"
        self._losses = np.zeros(n_parts + comm.size + 1)
        self._failed = slice(n_parts, n_parts + comm.size)

    def __call__(self, idx: np.ndarray, beta: float, stop: bool) -> Tuple[dict, bool]:
        """Train on the global batch ``x_train[idx]``; returns its losses (per-example means over
        the whole batch, nats) and whether any rank was asked to stop. Raises FloatingPointError
        on every rank when the loss is not finite on any."""
        run, comm, parts = self.run, self.comm, self.objective.parts
        sums = self._losses
        sums[:] = 0.0
        try:
            share = self.objective.share(run, idx, comm.rank, comm.size, beta, self.draws)
            sums[:len(parts)] = [share[p] for p in parts]
        except FloatingPointError:
            sums[self._failed.start + comm.rank] = 1.0
        sums[-1] = float(stop)
        comm.allreduce_sum(sums)
        failed = np.flatnonzero(sums[self._failed])
        if len(failed):
            raise FloatingPointError(f"the loss is not finite on rank {', '.join(map(str, failed))} of "
                                     f"{comm.size}: the weights have diverged; lower the learning rate or "
                                     "clip the gradient norm")
        t0 = time.perf_counter()
        for buffer in run.model.grad_buffers:
            comm.allreduce_sum(buffer)
        self.allreduce_seconds += time.perf_counter() - t0
        run.optimizer.step(run.model.grads)
        return {p: sums[i] for i, p in enumerate(parts)}, bool(sums[-1])
