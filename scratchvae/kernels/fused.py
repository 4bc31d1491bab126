"""The fused kernels, each defined as the composition of contract kernels it replaces.

A fused kernel does in one call, and often one pass over memory, what a short
sequence of the contract's kernels does. It is optional: a backend may define
it (``numba_pool`` does, as the GEMM's epilogue), and where a backend does not,
:func:`~scratchvae.kernels.set_backend` binds the composition below over that
backend's own kernels, so a backend written against the unfused contract keeps
working unchanged. ``reference.py`` defines each fused kernel as this same
composition over the reference kernels, and the conformance check holds a
backend's fused kernel to it.

Each composition takes ``k``, the kernels to compose (a backend module or
``kernels.ops``), then the fused kernel's own arguments.
"""
from __future__ import annotations


def gemm_bias_activation(k, x, W, b, activation, alpha, out=None):
    """``y = f(x @ W + b)``, a layer's forward pass: ``gemm`` then ``bias_activation`` in place.

    x: (rows, fan_in); W: (fan_in, fan_out); b: (fan_out,); ``out`` (rows, fan_out)
    receives y when given. ``activation`` and ``alpha`` as in ``bias_activation``.
    """
    a = k.gemm(x, W, out=out)
    return k.bias_activation(a, b, activation, alpha, out=a)


#: every fused kernel's composition, by name
COMPOSITIONS = {"gemm_bias_activation": gemm_bias_activation}
