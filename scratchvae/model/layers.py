"""Layers with hand-written backprop: Linear (+ activation), MLP, initialisers.

Every op is a pair, written next to each other::

    y, cache = forward(...)
    d_x, d_params = backward(cache, d_y)

Parameters live in a plain ``dict[str, ndarray]`` with dotted names
(``"enc.0.W"``, ``"enc.0.b"``); a Linear layer named ``name`` owns
``name + ".W"`` of shape (fan_in, fan_out) and ``name + ".b"`` of shape
(fan_out,), and computes ``y = f(x @ W + b)``.

A layer may also take a context block c that needs no gradient (the label
or observed pixels of a conditional VAE): its input is then ``[x, c]``,
computed as ``x @ W[:k] + c @ W[k:]`` (k = x's width) without a
concatenated copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..kernels import DEFAULT_ALPHA, check_activation
from ..kernels import ops as K

INITS = ("torch", "glorot_uniform", "glorot_normal", "he_uniform", "he_normal")


# --------------------------------------------------------------------------
# Linear (+ activation): y = f(x @ W + b)
# --------------------------------------------------------------------------

def linear_forward(x, W, b, activation="identity", alpha=None, out=None, c=None, scratch=None):
    """y = f([x, c] @ W + b). x: (batch, k); c: (batch, fan_in - k) or None;
    W: (fan_in, fan_out); b: (fan_out,).

    Returns ``(y, cache)`` with y: (batch, fan_out), written into ``out``
    when given (the training step passes workspace buffers).
    """
    alpha = DEFAULT_ALPHA.get(check_activation(activation), 0.0) if alpha is None else alpha
    if c is None:
        y = K.gemm_bias_activation(x, W, b, activation, alpha, out=out)      # gemm, then bias_activation
    else:
        W_x, W_c = _split(W, x, c)
        a = K.gemm(x, W_x, out=out)
        K.gemm(c, W_c, out=a, accumulate=True, scratch=scratch)         # + c @ W[k:]
        y = K.bias_activation(a, b, activation, alpha, out=a)
    return y, (x, c, W, y, activation, alpha)


def linear_backward(cache, d_y, need_d_x=True, d_W=None, d_b=None, d_x=None, overwrite_d_y=False,
                    row_scale=None, accumulate_d_x=False, scratch=None):
    """Backward of :func:`linear_forward`.

    ``d_a = row_scale * d_y * f'(a)``; ``d_W = [x, c].T @ d_a``;
    ``d_b = sum over batch of d_a``; ``d_x = d_a @ W[:k].T`` (skipped,
    returned as None, when ``need_d_x`` is false: the first layer of an
    encoder has no use for it; the context never needs one).

    ``row_scale`` (batch,) weights each row's gradient (None: 1).
    ``d_W``, ``d_b``, ``d_x`` may be given as outputs; ``overwrite_d_y``
    lets ``d_a`` reuse ``d_y``'s memory; ``accumulate_d_x`` adds to ``d_x``
    (a layer whose input feeds two layers).
    Returns ``(d_x, {"W": d_W, "b": d_b})``.
    """
    x, c, W, y, activation, alpha = cache
    if d_b is None:
        d_b = np.empty(W.shape[1], W.dtype)
    if d_W is None:
        d_W = np.empty_like(W)
    d_a = K.activation_backward(y, d_y, activation, alpha, out=d_y if overwrite_d_y else None, d_b=d_b,
                                row_scale=row_scale)
    W_x, W_c = _split(W, x, c)
    d_W_x, d_W_c = _split(d_W, x, c)
    K.gemm(x, d_a, out=d_W_x, trans_a=True)
    if c is not None:
        K.gemm(c, d_a, out=d_W_c, trans_a=True)
    if need_d_x:
        d_x = K.gemm(d_a, W_x, out=d_x, trans_b=True, accumulate=accumulate_d_x, scratch=scratch)
    return (d_x if need_d_x else None), {"W": d_W, "b": d_b}


def _split(W, x, c):
    """``(W_x, W_c)``: the rows of W that multiply x and c (W and None without a context)."""
    if c is None:
        return W, None
    k = x.shape[1]
    return W[:k], W[k:]


# --------------------------------------------------------------------------
# Initialisers
# --------------------------------------------------------------------------

def init_linear(rng: np.random.Generator, fan_in: int, fan_out: int, init: str, dtype):
    """Draw (W, b) for one layer. W: (fan_in, fan_out), b: (fan_out,).

    * ``torch``: PyTorch's default ``nn.Linear``: W and b uniform in
      +-1/sqrt(fan_in) (kaiming_uniform with a = sqrt(5) gives that bound);
    * ``glorot_uniform`` / ``glorot_normal`` (Glorot and Bengio 2010):
      uniform in +-sqrt(6/(fan_in+fan_out)) / normal with std sqrt(2/(fan_in+fan_out));
    * ``he_uniform`` / ``he_normal`` (He et al. 2015): uniform in
      +-sqrt(6/fan_in) / normal with std sqrt(2/fan_in).

    All but ``torch`` start the bias at zero. Draws are made in float64 and
    then rounded to ``dtype``, so float32 and float64 models with the same
    seed hold the same weights up to rounding.
    """
    shape = (fan_in, fan_out)
    if init == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        W = rng.uniform(-bound, bound, shape)
        b = rng.uniform(-bound, bound, fan_out)
    elif init in ("glorot_uniform", "he_uniform"):
        bound = math.sqrt(6.0 / (fan_in + fan_out if init == "glorot_uniform" else fan_in))
        W = rng.uniform(-bound, bound, shape)
        b = np.zeros(fan_out)
    elif init in ("glorot_normal", "he_normal"):
        std = math.sqrt(2.0 / (fan_in + fan_out if init == "glorot_normal" else fan_in))
        W = rng.normal(0.0, std, shape)
        b = np.zeros(fan_out)
    else:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    return W.astype(dtype), b.astype(dtype)


# --------------------------------------------------------------------------
# MLP: a stack of Linear layers
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerSpec:
    name: str           # parameter prefix, e.g. "enc.0"
    fan_in: int
    fan_out: int
    activation: str


class MLP:
    """A stack of Linear layers ``prefix.0``, ``prefix.1``, ...

    ``sizes = [d_0, d_1, ..., d_L]`` gives L layers; ``activations`` has one
    name per layer. The MLP holds no arrays: parameters are read from and
    gradients written to the dicts the caller passes, so the model's
    parameter dict stays the one source of truth.
    """

    def __init__(self, prefix: str, sizes: Sequence[int], activations: Sequence[str], alpha=None):
        if len(activations) != len(sizes) - 1:
            raise ValueError(f"{prefix}: {len(sizes) - 1} layers need {len(sizes) - 1} activations, "
                             f"got {len(activations)}")
        for s in sizes:
            if not (isinstance(s, (int, np.integer)) and s > 0):
                raise ValueError(f"{prefix}: layer sizes must be positive integers, got {list(sizes)}")
        self.layers: List[LayerSpec] = [
            LayerSpec(f"{prefix}.{i}", int(sizes[i]), int(sizes[i + 1]), check_activation(act))
            for i, act in enumerate(activations)
        ]
        self.alpha = alpha

    def init(self, rng, init: str, dtype) -> Dict[str, np.ndarray]:
        params = {}
        for layer in self.layers:
            params[layer.name + ".W"], params[layer.name + ".b"] = init_linear(
                rng, layer.fan_in, layer.fan_out, init, dtype)
        return params

    def forward(self, params, x, outs=None, c=None, scratch=None) -> Tuple[np.ndarray, list]:
        """x: (batch, d_0 - m) -> (y: (batch, d_L), caches); the first layer also
        sees the context c (batch, m), if any. ``outs``: a buffer per layer."""
        caches = []
        for i, layer in enumerate(self.layers):
            x, cache = linear_forward(x, params[layer.name + ".W"], params[layer.name + ".b"],
                                      layer.activation, self.alpha, out=None if outs is None else outs[i],
                                      c=c if i == 0 else None, scratch=scratch)
            caches.append(cache)
        return x, caches

    def backward(self, caches, d_y, grads, need_d_x=True, d_ins=None, overwrite_d_y=False, row_scale=None,
                 scratch=None):
        """Write each layer's d_W, d_b into ``grads``; return d_x (or None).

        Arrays already in ``grads`` under a layer's names are filled in place
        (the model's flat gradient buffer); missing ones are created.
        ``d_ins[i]`` is a buffer for the gradient of layer i's input;
        ``row_scale`` (batch,) weights the rows of ``d_y``.
        """
        for i in reversed(range(len(self.layers))):
            name = self.layers[i].name
            last = i == len(self.layers) - 1
            d_y, d = linear_backward(caches[i], d_y, need_d_x=need_d_x or i > 0,
                                     d_W=grads.get(name + ".W"), d_b=grads.get(name + ".b"),
                                     d_x=None if d_ins is None else d_ins[i],
                                     overwrite_d_y=overwrite_d_y or not last,
                                     row_scale=row_scale if last else None, scratch=scratch)
            grads[name + ".W"], grads[name + ".b"] = d["W"], d["b"]
        return d_y


# --------------------------------------------------------------------------
# Labels as inputs
# --------------------------------------------------------------------------

def one_hot(labels: np.ndarray, n_classes: int, dtype=np.float32) -> np.ndarray:
    """Integer labels (n,) in [0, n_classes) -> (n, n_classes) rows of one 1 and zeros."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
    out = np.zeros((len(labels), n_classes), dtype)
    out[np.arange(len(labels)), labels] = 1
    return out
