"""The numba_pool backend: the numba backend run as one thread pool.

The products come from the hand-written GEMM (``gemm_numba.py``), which runs
in Numba's thread pool, and the large kernels (bias + activation and its
backward, the Bernoulli likelihoods, Adam) are the pool variants of
``numba.py``, which run in that same pool: one pool for the whole step, no
BLAS pool spinning beside it. Every other kernel is the numba backend's.
``set_backend("numba", gemm="numba")`` selects this backend. It defines the
fused kernel ``gemm_bias_activation``: a layer's bias and activation are the
GEMM's epilogue. Each pool variant splits its work so that results do not
depend on the thread count (``numba.py`` says how, and where it may differ
from its serial twin).
"""
from __future__ import annotations

import sys

import numba as nb

# The contract's kernels, defined here by importing them (hence the noqa: this
# module is a backend, its imports are its definitions).
from . import fused, gemm_numba
from . import numba as serial
from .gemm_numba import gemm  # noqa: F401
from .numba import (gaussian_latent, gaussian_latent_backward, gaussian_log_sigma_grad,  # noqa: F401
                    gaussian_nll, log_softmax, log_softmax_backward, min_max, repeat_rows, sgd_update,
                    sum_squares, warmup)
from .numba import activation_backward_pool as activation_backward  # noqa: F401
from .numba import adam_update_pool as adam_update  # noqa: F401
from .numba import bernoulli_nll_pool as bernoulli_nll  # noqa: F401
from .numba import bias_activation_pool as bias_activation  # noqa: F401
from .numba import continuous_bernoulli_nll_pool as continuous_bernoulli_nll  # noqa: F401


def gemm_bias_activation(x, W, b, activation, alpha, out=None):
    """``f(x @ W + b)`` in one call: for the piecewise-linear activations the GEMM adds the bias
    and applies f to each thread's strip of the product as soon as it is computed, while it is
    in the thread's cache (bit for bit the composition); the others run the composition."""
    if activation in gemm_numba.EPILOGUE_CODES:
        return gemm_numba.gemm_bias_activation(x, W, b, activation, alpha, out)
    return fused.gemm_bias_activation(sys.modules[__name__], x, W, b, activation, alpha, out)


#: the GEMM and the pool kernels split their work so that no number depends on
#: the thread count: the training loop may change it between steps (``threads.py``)
RESULTS_INDEPENDENT_OF_THREADS = True


def max_threads() -> int:
    """The threads the pool may use (``NUMBA_NUM_THREADS``, or fewer if set so)."""
    return nb.get_num_threads()


def set_threads(n: int) -> None:
    """Use ``n`` threads (1 <= n <= :func:`max_threads` when the run began) from the next call on."""
    nb.set_num_threads(n)


def describe() -> dict:
    """The numba backend's settings, with its large kernels in the pool."""
    return dict(serial.describe(), kernels_parallel=True)
