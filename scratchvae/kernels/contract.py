"""The kernel contract: the names every backend defines, the conventions they share, their constants.

:data:`CONTRACT` names every kernel; a backend is any module that defines all
of them with the signatures of ``reference.py``. :data:`FUSED` names the
optional fused kernels, each defined as a composition of contract kernels
(``fused.py``). The conventions every kernel shares:

* data arrays are batch-major ``(rows, features)``, float32 or float64, and a
  kernel computes in the dtype of its inputs. Inputs may be any strided view;
  ``out=``-style buffers are C-contiguous and, when given, receive the result
  (they may alias an input where the docstring says so); when omitted a new
  array is returned;
* losses are per row, in nats summed over the features; weights are per row
  too (``w``, ``row_scale``), so one kernel serves the ELBO (weights 1/n), the
  importance-weighted bound and M2 alike;
* ``scratch`` (a :class:`Scratch`, owned by the caller: a model's workspace,
  an optimizer) lends a backend reusable temporaries; with ``scratch=None`` a
  backend may allocate them.

The contract covers every operation whose cost grows with the features
(pixels, hidden units, parameters). Per-example scalars (a batch's vector of
losses or weights) are combined by the objectives in NumPy.

This module imports nothing of the package, so every backend takes its
constants from here and ``kernels/__init__.py`` can import the backends it needs.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np

CONTRACT = (
    "gemm",
    "bias_activation",
    "activation_backward",
    "bernoulli_nll",
    "continuous_bernoulli_nll",
    "gaussian_nll",
    "gaussian_log_sigma_grad",
    "gaussian_latent",
    "gaussian_latent_backward",
    "log_softmax",
    "log_softmax_backward",
    "repeat_rows",
    "min_max",
    "sum_squares",
    "adam_update",
    "sgd_update",
)

#: kernels a backend may define to do in one call what a sequence of :data:`CONTRACT`
#: kernels does; each is defined by that composition (``fused.py``), which stands in
#: for it in a backend that does not define it
FUSED = ("gemm_bias_activation",)

#: activations every backend implements, by name
ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus", "elu")
#: the ``alpha`` of the activations that take one (slope of leaky_relu, scale of elu)
DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}
#: log(2 pi) / 2, the constant of every Gaussian log-density, per dimension
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: Numba's fastmath flags, the same for every compiled kernel (tested): reassociation
#: and contraction (vectorised sums, FMA) but never ``nnan``/``ninf`` or ``afn``, so NaN
#: and infinity propagate as in NumPy and libm's exp/log stay exact to the last bit (the
#: float32 likelihood kernels use their own, within 1 and 3 ulp: ``numba_math.py``)
FASTMATH = frozenset({"nsz", "arcp", "contract", "reassoc"})


def check_activation(name: str) -> str:
    """``name`` if it is one of :data:`ACTIVATIONS`, else a ValueError naming the choices."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return name


class Scratch:
    """Reusable temporaries, lent to kernels by the object that owns them.

    ``scratch.arrays(tag, like, count)`` returns ``count`` arrays shaped like
    ``like`` (same dtype), the same ones at every call with that tag, shape
    and dtype. A model's workspace and an optimizer each own one, so a
    training step allocates nothing and no temporaries hide in a module.
    """

    def __init__(self):
        self._arrays: Dict[tuple, list] = {}

    def arrays(self, tag: str, like: np.ndarray, count: int = 1) -> list:
        key = (tag, like.shape, like.dtype.str, count)
        found = self._arrays.get(key)
        if found is None:
            found = self._arrays[key] = [np.empty(like.shape, like.dtype) for _ in range(count)]
        return found

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for arrays in self._arrays.values() for a in arrays)


def temporaries(scratch: Optional[Scratch], tag: str, like: np.ndarray, count: int = 1) -> list:
    """``count`` temporaries shaped like ``like``: the scratch's, or new ones without a scratch."""
    if scratch is None:
        return [np.empty_like(like) for _ in range(count)]
    return scratch.arrays(tag, like, count)
