"""Parameter dicts whose arrays are views into one flat buffer.

A model's parameters (and its gradients, and Adam's moments) stay a plain
``dict[str, ndarray]`` for the reader, while the arrays are consecutive
slices of one 1-D buffer, so that an update can sweep all of them in one
kernel call. The dict knows its buffer (:attr:`FlatDict.buffer`); nothing has
to rediscover it.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np


class FlatDict(dict):
    """A ``dict[str, ndarray]`` whose arrays tile one 1-D buffer, in key order.

    It behaves as a plain dict (print it, index it, assign to its arrays in
    place). :attr:`buffer` is the 1-D buffer while every entry is still the
    view it was made with; after an entry is replaced by another array it is
    None, and whoever needs one sweep falls back to one call per array.
    """

    def __init__(self, flat: np.ndarray, views: Dict[str, np.ndarray]):
        super().__init__(views)
        self._flat = flat
        self._views = tuple(views.values())

    @property
    def buffer(self) -> Optional[np.ndarray]:
        if len(self) == len(self._views) and all(a is b for a, b in zip(self.values(), self._views)):
            return self._flat
        return None


def zeros_like(arrays: Dict[str, np.ndarray], dtype=None) -> FlatDict:
    """A new zeroed buffer seen as arrays shaped like ``arrays`` (same keys, order)."""
    dtype = np.dtype(dtype or next(iter(arrays.values())).dtype)
    flat = np.zeros(sum(a.size for a in arrays.values()), dtype)
    views, start = {}, 0
    for k, a in arrays.items():
        views[k] = flat[start:start + a.size].reshape(a.shape)
        start += a.size
    return FlatDict(flat, views)


def pack(arrays: Dict[str, np.ndarray], dtype=None) -> FlatDict:
    """``arrays`` copied into one new buffer."""
    out = zeros_like(arrays, dtype)
    for k, a in arrays.items():
        out[k][...] = a
    return out
