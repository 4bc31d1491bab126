"""Parameter dicts whose arrays are views into one flat buffer.

A model's parameters (and its gradients, and Adam's moments) stay a plain
``dict[str, ndarray]`` for the reader, while the arrays are consecutive
slices of one 1-D buffer, so that an update can sweep all of them in one
kernel call.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np


def zeros_like(arrays: Dict[str, np.ndarray], dtype=None) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """A new zeroed 1-D buffer and a dict of views into it shaped like ``arrays`` (same keys, order)."""
    dtype = np.dtype(dtype or next(iter(arrays.values())).dtype)
    flat = np.zeros(sum(a.size for a in arrays.values()), dtype)
    views, start = {}, 0
    for k, a in arrays.items():
        views[k] = flat[start:start + a.size].reshape(a.shape)
        start += a.size
    return flat, views


def pack(arrays: Dict[str, np.ndarray], dtype=None) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Copy ``arrays`` into one new 1-D buffer; return it and the dict of views."""
    flat, views = zeros_like(arrays, dtype)
    for k, a in arrays.items():
        views[k][...] = a
    return flat, views


def flat_view(arrays: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
    """The 1-D buffer the arrays tile, in dict order, or None if they do not.

    True when every array is C-contiguous, all share a dtype and each starts
    where the previous one ends inside one 1-D base array. An array never
    moves in memory, so the answer for the same array objects is remembered
    (the optimizer asks every step).
    """
    values = tuple(arrays.values())
    for seen, answer in _RECENT:
        if len(seen) == len(values) and all(a is b for a, b in zip(seen, values)):
            return answer
    answer = _tiled_buffer(values)
    _RECENT.insert(0, (values, answer))
    del _RECENT[4:]
    return answer


_RECENT: list = []


def _tiled_buffer(values) -> Optional[np.ndarray]:
    if not values:
        return None
    first = values[0]
    base = first
    while base.base is not None and isinstance(base.base, np.ndarray):
        base = base.base
    if base.ndim != 1 or not base.flags.c_contiguous or base.dtype != first.dtype:
        return None
    item = first.dtype.itemsize
    start = (first.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
    pos = start
    for v in values:
        if (v.dtype != first.dtype or not v.flags.c_contiguous
                or v.__array_interface__["data"][0] != base.__array_interface__["data"][0] + pos * item):
            return None
        pos += v.size
    if pos > base.size:
        return None
    return base[start:pos]
