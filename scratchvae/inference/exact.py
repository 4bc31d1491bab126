"""Exact log p(x) for a latent of size 1 or 2, by quadrature over z, and the true posterior.

    log p(x) = log ∫ p(x | z) p(z) dz  ~  log sum_j p(x | z_j) p(z_j) + k log h

over a lattice of spacing h (the trapezoid rule: for a smooth integrand that
vanishes at the edges of the box its error falls faster than any power of h;
a ReLU decoder's kinks leave an error like h^2), in float64 with log-sum-exp. With it the ELBO's gap is measured, not bounded:
``log p(x) - ELBO = KL(q(z|x) || p(z|x))``.

**One product scores every image.** ``log p(x|eta) = T(x) . eta + h(x) +
log p(0|eta)`` (``Likelihood.linear_terms``), so decoding N lattice points once
and scoring n images against them is one (n, d) @ (d, N) product.

**Where the lattice goes, and how fine.** The box ``[-R, R]^k`` is cut into
square tiles. Level 0 evaluates every tile for every image at a coarse
spacing; an image then keeps the tiles holding all but e^-25 of its mass
(:data:`NEGLIGIBLE`) and a ring of neighbours. Each further level halves h on
the kept tiles, first adding any neighbour of a tile that has become
significant (a flood fill), and the levels stop when the largest change of any
image's log p(x) is below ``tol``. A box whose edge tiles hold mass is
doubled. Cost: the decoder runs once per kept point, shared by every image
(images with different contexts c are integrated separately).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model import VAE, latent, memory
from ..model.flows import NO_DENSITY_AT_Z

#: nats: a tile whose mass lies this far below an image's total is left out (e^-25 ~ 1e-11 of it)
NEGLIGIBLE = 25.0
#: decoded points and images per block of the scoring product (bounds memory at about 16 MB a block)
POINTS, ROWS = 2048, 1024


@dataclass
class Quadrature:
    """What :func:`log_marginal` computed."""
    log_px: np.ndarray      # (n,) log p(x) (or log p(x | c)), nats, float64
    spacing: float          # h of the finest lattice
    change: float           # largest |change| of any log p(x) in the last halving of h, nats
    radius: float           # the lattice covers [-radius, radius]^k
    points: int             # decoder evaluations in all
    levels: int             # lattices evaluated (level 0 included)


def as_float64(model: VAE) -> VAE:
    """The same model computing in float64 (itself if it already does)."""
    if model.dtype == np.float64:
        return model
    twin = VAE.from_config({**model.config(), "dtype": "float64"})
    for name, value in model.params.items():
        twin.params[name][...] = value
    return twin


def check_latent(model: VAE, q_density: bool = False) -> None:
    """A ValueError unless the latent has 1 or 2 dimensions (a lattice in k dimensions needs m^k
    points); with ``q_density``, also unless q(z|x) has a density to draw on the lattice (no flow)."""
    if model.latent_dim > 2:
        raise ValueError(f"exact log p(x) integrates over z on a grid, which is feasible for a latent of size 1 "
                         f"or 2; this model's latent has {model.latent_dim} dimensions (estimate log p(x) with "
                         "importance sampling instead)")
    if q_density and not model.q_flow.density_at_z:
        raise ValueError(f"the picture draws q(z|x) on a grid, and this model's q is a Gaussian carried through "
                         f"a flow ({model.flow}): {NO_DENSITY_AT_Z}; --exact works")


def log_marginal(model: VAE, x, c=None, tol: float = 1e-3, radius: float = 6.0, tile: float = 0.25,
                 max_points_per_tile: int = 256, progress=None, comm=None) -> Quadrature:
    """``log p(x)`` per example by quadrature over z (``log p(x | c)`` for a conditional model).

    x: (n, d); c: (n, m) if conditional. ``tol``: stop halving the spacing
    when no log p(x) changes by more than this (nats). ``radius``, ``tile``:
    the starting box ``[-radius, radius]^k`` and the tiles' side.
    ``max_points_per_tile``: the finest lattice has at most this many points
    per tile and axis (a ValueError if ``tol`` is not met by then).
    ``progress``: a callable(settled, total), called after each level with the
    number of images whose log p(x) has settled. ``comm``: a
    :class:`~scratchvae.distributed.comm.Communicator` whose ranks share the
    decoding of each level's tiles (every rank gets one process's figures, bit
    for bit: each tile's masses are computed whole by one rank).
    """
    check_latent(model)
    model = as_float64(model)
    x = model.check_x(x)
    c = model.check_c(c, len(x))
    tiles = round(2 * radius / tile) ** model.latent_dim
    # per image its terms T (d), and per tile a mass and three masks; a block of scores and their
    # exponentials, the all-zero images and the decoder's outputs for a block of points
    memory.require(len(x) * (8 * model.input_dim + 11 * tiles) + 8 * (2 * min(ROWS, len(x)) + model.input_dim)
                   * POINTS + memory.decode_bytes(model, POINTS), f"exact log p(x) of {len(x):,} examples")
    groups = [(None, np.arange(len(x)))] if c is None else _same_rows(c)
    log_px, parts, done = np.empty(len(x)), [], 0
    for context, rows in groups:
        report = None if progress is None else (lambda settled, done=done: progress(done + settled, len(x)))
        parts.append(_integrate(model, x[rows], context, tol, radius, tile, max_points_per_tile, report, comm))
        log_px[rows] = parts[-1].log_px
        done += len(rows)
    return Quadrature(log_px, min(q.spacing for q in parts), max(q.change for q in parts),
                      max(q.radius for q in parts), sum(q.points for q in parts), max(q.levels for q in parts))


def _same_rows(c):
    """``[(context (m,), indices of the rows equal to it), ...]``."""
    unique, inverse = np.unique(c, axis=0, return_inverse=True)
    return [(unique[g], np.flatnonzero(inverse.reshape(-1) == g)) for g in range(len(unique))]


class _Lattice:
    """Tiles of side ``tile`` over ``[-radius, radius]^k`` and the images' scores on them."""

    def __init__(self, model, x, context, radius, tile, comm=None):
        self.model, self.radius, self.tile, self.k = model, radius, tile, model.latent_dim
        self.comm = comm
        self.side = int(round(2 * radius / tile))
        self.corners = -radius + tile * np.indices((self.side,) * self.k).reshape(self.k, -1).T
        self.T, self.h_x = model.likelihood.linear_terms(x, model.likelihood_params)
        self.context = context
        self.points = 0

    def offsets(self, m):
        """The m^k points of a tile's lattice (cell midpoints), relative to its corner, and the spacing."""
        h = self.tile / m
        return (np.indices((m,) * self.k).reshape(self.k, -1).T + 0.5) * h, h

    def masses(self, images, pairs, m):
        """``log sum_j p(x_i, z_j)`` over tile t's points, for every (image ``images[r]``, tile t)
        with ``pairs[r, t]`` (pairs: (len(images), tiles) bool); -inf elsewhere. Lattice of m
        points per tile and axis.

        The points are decoded :data:`POINTS` at a time: several whole tiles (scored
        for every image any of them needs) or part of one tile. With ranks, rank r
        takes every r-th batch of tiles, and one sum hands every rank all the masses
        (the other ranks' columns enter it as zeros, so each column is its owner's).
        """
        offsets, _ = self.offsets(m)
        per_tile = len(offsets)
        part, size = (0, 1) if self.comm is None else (self.comm.rank, self.comm.size)
        mass = np.full(pairs.shape, -np.inf)
        tiles = np.flatnonzero(pairs.any(axis=0))
        zeros = np.zeros((min(POINTS, per_tile * len(tiles)), self.model.input_dim))
        points = self.points
        for j, b0 in enumerate(range(0, len(tiles), max(1, POINTS // per_tile))):
            batch = tiles[b0:b0 + max(1, POINTS // per_tile)]
            if j % size != part:
                mass[:, batch] = 0.0                # another rank's tiles: nothing, in the sum
                continue
            rows = np.flatnonzero(pairs[:, batch].any(axis=1))
            T = self.T[images[rows]]
            z = (self.corners[batch][:, None, :] + offsets).reshape(-1, self.k)
            acc = np.full((len(rows), len(batch)), -np.inf)
            for p0 in range(0, len(z), POINTS):
                zp = z[p0:p0 + POINTS]
                c = None if self.context is None else np.broadcast_to(self.context, (len(zp), len(self.context)))
                # log p(0, z) and the decoder's output eta: with T . eta + h(x), log p(x, z) for every image
                log_p0z, eta = self.model.log_joint(zp, zeros[:len(zp)], c)
                self.points += len(zp)
                first = p0 // per_tile                  # the batch's tiles this chunk of points covers
                covered = slice(first, first + max(1, len(zp) // per_tile))
                for r0 in range(0, len(rows), ROWS):
                    scores = (T[r0:r0 + ROWS] @ eta.T + log_p0z).reshape(len(T[r0:r0 + ROWS]), -1,
                                                                        min(per_tile, len(zp)))
                    acc[r0:r0 + ROWS, covered] = np.logaddexp(acc[r0:r0 + ROWS, covered], latent.log_sum_exp(scores))
            wanted = pairs[np.ix_(rows, batch)]
            mass[np.ix_(rows, batch)] = np.where(wanted, acc + self.h_x[images[rows], None], -np.inf)
        if self.comm is not None:
            self.comm.allreduce_sum(mass)
            self.points = points + sum(self.comm.allgather(self.points - points))
        return mass

    def grid(self, tiles):
        """(n, tiles) bool viewed as (n, side, ..., side)."""
        return tiles.reshape((len(tiles),) + (self.side,) * self.k)

    def ring(self, tiles):
        """The tiles and their neighbours (the 3^k block around each), per image."""
        grown = self.grid(tiles.copy())
        for axis in range(1, self.k + 1):
            shifted = grown.copy()
            lo, hi = [slice(None)] * (self.k + 1), [slice(None)] * (self.k + 1)
            lo[axis], hi[axis] = slice(1, None), slice(None, -1)
            shifted[tuple(lo)] |= grown[tuple(hi)]
            shifted[tuple(hi)] |= grown[tuple(lo)]
            grown = shifted
        return grown.reshape(tiles.shape)

    def at_edge(self, tiles):
        """Does any image have a tile in the outermost ring of the box?"""
        g = self.grid(tiles)
        return any(np.take(g, [0, -1], axis=axis).any() for axis in range(1, self.k + 1))


def _significant(mass):
    """Per image, the tiles within :data:`NEGLIGIBLE` nats of its total, and the total."""
    total = latent.log_sum_exp(mass)
    return mass >= (total - NEGLIGIBLE)[:, None], total


def _integrate(model, x, context, tol, radius, tile, max_points_per_tile, report, comm=None):
    """:func:`log_marginal` for images that share one context (or have none)."""
    while True:
        lattice = _Lattice(model, x, context, radius, tile, comm)
        result = _levels(lattice, tol, max_points_per_tile, report)
        if result is not None:
            return result
        radius *= 2                                   # mass at the edge of the box: a bigger box


def _levels(lattice, tol, max_points_per_tile, report):
    """The levels of refinement on one box; None if the images' mass reaches its edge.

    An image whose log p(x) changed by at most ``tol`` in the last halving is
    settled: later levels compute only the others (and decode only their tiles).
    """
    k, m, n = lattice.k, 4, len(lattice.T)
    significant, total = _significant(lattice.masses(np.arange(n), np.ones((n, len(lattice.corners)), bool), m))
    if lattice.at_edge(significant):
        return None
    log_px = total + k * math.log(lattice.offsets(m)[1])
    assigned, change, levels = lattice.ring(significant), np.full(n, math.inf), 1
    while True:
        rows = np.flatnonzero(change > tol)
        if report is not None:
            report(n - len(rows))
        if not len(rows):
            return Quadrature(log_px, lattice.tile / m, float(change.max()), lattice.radius, lattice.points, levels)
        if 2 * m > max_points_per_tile:
            raise ValueError(f"the quadrature did not settle: halving the spacing to {lattice.tile / m:.3g} still "
                             f"changed log p(x) of {len(rows)} example(s) by up to {change.max():.3g} nats, more "
                             f"than tol = {tol:g}; raise max_points_per_tile or tol")
        m, levels = 2 * m, levels + 1
        mine = assigned[rows]
        mass = lattice.masses(rows, mine, m)
        while True:                                   # flood fill: every significant tile keeps its ring
            significant, total = _significant(mass)
            new = lattice.ring(significant) & ~mine
            if not new.any():
                break
            mass = np.where(new, lattice.masses(rows, new, m), mass)
            mine |= new
        if lattice.at_edge(significant):
            return None
        assigned[rows] = mine
        refined = total + k * math.log(lattice.offsets(m)[1])
        change[rows] = np.abs(refined - log_px[rows])
        log_px[rows] = refined


def posterior_grid(model: VAE, x, c=None, rng=None, points: int = 201, samples: int = 10_000, tol: float = 1e-3):
    """The true posterior ``p(z | x) = p(x, z) / p(x)`` and the encoder's ``q(z | x)`` of
    one example on a lattice around both (for a picture), and the gap between them.

    x: (d,) or (1, d); c: (m,) or (1, m) if conditional; ``rng`` draws the
    ``samples`` codes of the ELBO's estimate. Returns a dict: ``axes`` (k
    arrays of ``points`` values), ``log_posterior`` and ``log_q`` (each
    ``(points,) * k``, log-densities per unit of z), ``log_px`` (by
    quadrature), ``elbo`` (its mean over the samples, nats) and ``mu``,
    ``logvar`` (k,), q's parameters. ``log_px - elbo`` estimates
    KL(q(z|x) || p(z|x)).
    """
    check_latent(model, q_density=True)
    model = as_float64(model)
    x = np.reshape(x, (1, -1))
    c = None if c is None else np.reshape(c, (1, -1))
    log_px = float(log_marginal(model, x, c, tol=tol).log_px[0])
    rng = np.random.default_rng(0) if rng is None else rng
    terms, _ = model.forward(x, rng.standard_normal((samples, 1, model.latent_dim)), c, with_grad=False)
    elbo = -float(terms.nll.mean() + terms.kl[0])
    mu, logvar = (a[0] for a in model.encode(x, c))
    std = np.exp(logvar / 2)
    # the window: q's +-5 std and, seen on a coarse lattice over the prior's range, the posterior's mass
    coarse = np.linspace(-6, 6, 121)
    log_joint = _on_lattice(model, x, c, [coarse] * model.latent_dim)
    heavy = np.argwhere(log_joint >= log_joint.max() - NEGLIGIBLE)
    lo = np.minimum(mu - 5 * std, coarse[heavy.min(axis=0)] - 0.1)
    hi = np.maximum(mu + 5 * std, coarse[heavy.max(axis=0)] + 0.1)
    axes = [np.linspace(lo[j], hi[j], points) for j in range(model.latent_dim)]
    zs = _points(axes)
    log_q, _ = latent.diag_gaussian_log_prob(zs, mu, logvar)
    shape = [len(a) for a in axes]
    return {"axes": axes, "log_posterior": _on_lattice(model, x, c, axes) - log_px, "log_q": log_q.reshape(shape),
            "log_px": log_px, "elbo": elbo, "mu": mu, "logvar": logvar}


def _points(axes):
    """Every point of the lattice ``axes`` (k arrays), (prod of their lengths, k), the first axis slowest."""
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))


def _on_lattice(model, x, c, axes):
    """``log p(x, z)`` of one example at every point of the lattice ``axes`` (k arrays), shaped like it."""
    zs = _points(axes)
    values = np.concatenate([
        model.log_joint(z, np.repeat(x, len(z), 0), None if c is None else np.repeat(c, len(z), 0))[0]
        for z in np.array_split(zs, max(1, len(zs) // POINTS))])
    return values.reshape([len(a) for a in axes])
