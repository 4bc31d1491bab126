"""A third-party kernel backend: the shape of one, in a screenful.

A backend is a module that defines every kernel of ``scratchvae.kernels.CONTRACT``
with the signatures of ``scratchvae/kernels/reference.py``. This one takes
most kernels from the library's numpy backend and writes two of its own, the
ReLU layer's forward and backward, as one NumPy expression each (yours might
call C, Cython or an accelerator instead). Select it with

    PYTHONPATH=examples SCRATCHVAE_BACKEND=my_backend.kernels scratchvae train --epochs 1

or ``sv.register_backend("mine", my_backend.kernels); sv.set_backend("mine")``,
and check it with ``sv.check_backend("my_backend.kernels")``.
"""
import numpy as np

from scratchvae.kernels import CONTRACT
from scratchvae.kernels import numpy as numpy_backend

# everything not written below comes from the numpy backend
globals().update({name: getattr(numpy_backend, name) for name in CONTRACT})


def bias_activation(a, b, activation, alpha, out=None):
    """y = max(a + b, 0) for relu; the other activations from the numpy backend."""
    if activation != "relu":
        return numpy_backend.bias_activation(a, b, activation, alpha, out)
    y = np.add(a, b, out=out)
    return np.maximum(y, 0, out=y)


def activation_backward(y, d_y, activation, alpha, out=None, d_b=None, row_scale=None):
    """d_a = row_scale * d_y * [y > 0] for relu; the other activations from the numpy backend."""
    if activation != "relu":
        return numpy_backend.activation_backward(y, d_y, activation, alpha, out, d_b, row_scale)
    d_a = np.where(y > 0, d_y, 0).astype(y.dtype)
    if row_scale is not None:
        d_a *= np.asarray(row_scale, y.dtype)[:, None]
    if d_b is not None:
        d_b[...] = d_a.sum(axis=0)
    if out is None:
        return d_a
    out[...] = d_a
    return out
