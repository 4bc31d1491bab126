"""Latent interpolation: the decoder's means along a straight and a great-circle path between two codes.

    images = interpolate(model, z_from, z_to, steps=10)     # (2, steps, d): linear, spherical

The straight path ``(1 - t) z0 + t z1`` between two typical codes of a
k-dimensional N(0, I) passes nearer the origin than either (its midpoint has
about 1/sqrt(2) of their norm when they are orthogonal), where the prior puts
little mass in high dimensions; the spherical path (slerp, Shoemake 1985;
White 2016 for generative models) follows the great circle instead:

    slerp(z0, z1; t) = sin((1 - t) W) / sin W  z0 + sin(t W) / sin W  z1,   cos W = z0 . z1 / (|z0| |z1|)

and moves through the angle W at a constant rate.
"""
from __future__ import annotations

import numpy as np

from ..model import VAE, memory

PATHS = ("linear", "spherical")


def lerp(z0, z1, t):
    """``(1 - t) z0 + t z1`` for each t: z0, z1 (k,), t (s,) -> (s, k)."""
    z0, z1, t = np.asarray(z0, float), np.asarray(z1, float), np.asarray(t, float)[:, None]
    return (1 - t) * z0 + t * z1


def slerp(z0, z1, t):
    """The spherical path (see the module): z0, z1 (k,), t (s,) -> (s, k).

    For parallel codes (W = 0), and when either is the zero vector, it is the
    straight path; opposite codes (W = pi) have no unique great circle and are
    refused.
    """
    z0, z1, t = np.asarray(z0, float), np.asarray(z1, float), np.asarray(t, float)[:, None]
    norms = np.linalg.norm(z0) * np.linalg.norm(z1)
    cos = 1.0 if norms == 0 else float(np.clip(z0 @ z1 / norms, -1, 1))
    angle = np.arccos(cos)
    if np.sin(angle) < 1e-8:
        if cos < 0:
            raise ValueError("the two codes point in opposite directions: no unique great circle joins them")
        return lerp(z0, z1, t[:, 0])
    return (np.sin((1 - t) * angle) * z0 + np.sin(t * angle) * z1) / np.sin(angle)


def interpolate_bytes(model: VAE, steps: int) -> int:
    """Bytes :func:`interpolate` takes for ``steps`` points per path: t, both
    paths and their float64 temporaries, the repeated context and the decoded rows."""
    rows = len(PATHS) * steps
    return (steps * 8 + rows * model.latent_dim * (4 * 8 + model.dtype.itemsize)
            + rows * model.context_dim * model.dtype.itemsize + memory.decode_bytes(model, rows))


def interpolate(model: VAE, z_from, z_to, steps: int = 10, c=None) -> np.ndarray:
    """Decoded means E[x | z] along both paths from ``z_from`` to ``z_to`` (each (k,)).

    ``steps`` points per path, the two ends included; ``c`` (m,): the context
    of a conditional model, the same at every step. Returns (2, steps, d) in
    the model's dtype: row 0 the linear path, row 1 the spherical one
    (:data:`PATHS`).
    """
    if not (isinstance(steps, (int, np.integer)) and steps >= 2):
        raise ValueError(f"steps must be an integer >= 2 (the two ends included), got {steps!r}")
    memory.require(interpolate_bytes(model, steps), f"interpolating {steps:,} steps per path")
    k = model.latent_dim
    z_from, z_to = (np.asarray(z, float).reshape(-1) for z in (z_from, z_to))
    if z_from.shape != (k,) or z_to.shape != (k,):
        raise ValueError(f"the two codes must each have {k} values, got {z_from.size} and {z_to.size}")
    t = np.linspace(0, 1, steps)
    z = np.concatenate([lerp(z_from, z_to, t), slerp(z_from, z_to, t)]).astype(model.dtype)
    context = None if c is None else np.repeat(np.reshape(c, (1, -1)), len(z), axis=0)
    return model.decode(z, context).reshape(len(PATHS), steps, -1)
