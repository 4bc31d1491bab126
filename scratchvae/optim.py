"""Optimizers that update a parameter dict in place: Adam (and AdamW) and SGD.

Their state is plain arrays: :meth:`Optimizer.state_dict` returns a flat
``dict[str, ndarray]`` a checkpoint stores as is, and
:meth:`Optimizer.load_state_dict` puts it back.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import numpy as np

from . import flat
from .kernels import Scratch
from .kernels import ops as K


def _buffer(arrays) -> Optional[np.ndarray]:
    """The one flat buffer ``arrays`` tile (a :class:`~scratchvae.flat.FlatDict`'s), or None."""
    return getattr(arrays, "buffer", None)


def global_grad_norm(grads: Dict[str, np.ndarray]) -> float:
    """sqrt(sum over all gradients of g^2)."""
    g = _buffer(grads)
    return math.sqrt(K.sum_squares(g) if g is not None else sum(K.sum_squares(v) for v in grads.values()))


class Optimizer:
    """Shared bookkeeping: hyperparameter checks, per-parameter buffers, the
    step counter and global gradient-norm clipping.

    ``max_grad_norm``: when the global norm of the gradients exceeds it, the
    gradients are scaled by ``max_grad_norm / norm`` for this step (the
    caller's arrays are not modified). ``last_grad_norm`` holds the norm seen
    by the latest step.

    When the parameters are views into one flat buffer (a
    :class:`~scratchvae.flat.FlatDict`, as a ``VAE``'s are) and so are
    the gradients, the state is kept flat too and each step is one kernel
    call over all parameters; otherwise it loops over them.
    """

    buffers = ()           # names of the per-parameter state arrays
    hyperparameters = ()   # attribute names that config() records

    def __init__(self, params: Dict[str, np.ndarray], lr: float, weight_decay: float,
                 max_grad_norm: Optional[float]):
        _check_nonneg("lr", lr, strictly=True)
        _check_nonneg("weight_decay", weight_decay)
        if max_grad_norm is not None:
            _check_nonneg("max_grad_norm", max_grad_norm, strictly=True)
        _check_params(params)
        self.params = params
        self.lr, self.weight_decay, self.max_grad_norm = lr, weight_decay, max_grad_norm
        self.step_count = 0
        self.last_grad_norm = float("nan")
        self.keys = list(params)
        self.flat_params = _buffer(params)
        self.state = {b: flat.zeros_like(params) for b in self.buffers}
        self.scratch = Scratch()

    def _grad_scale(self, grads) -> float:
        if not isinstance(grads, Mapping):
            raise TypeError(f"grads must be a dict of arrays by parameter name, got {type(grads).__name__}")
        if set(grads) != set(self.params):
            raise ValueError(f"gradient keys differ from parameter keys: missing "
                             f"{sorted(set(self.params) - set(grads))}, extra {sorted(set(grads) - set(self.params))}")
        for k, g in grads.items():
            if not (isinstance(g, np.ndarray) and g.dtype.kind in "iuf"):
                raise TypeError(f"gradient {k!r} must be an array of real numbers, got "
                                f"{g.dtype if isinstance(g, np.ndarray) else type(g).__name__}")
            if g.shape != self.params[k].shape:
                raise ValueError(f"gradient {k!r} has shape {g.shape}, parameter has {self.params[k].shape}")
        if self.max_grad_norm is None:
            return 1.0
        self.last_grad_norm = global_grad_norm(grads)
        return min(1.0, self.max_grad_norm / (self.last_grad_norm + 1e-6))

    def config(self) -> dict:
        """The optimizer's type and hyperparameters (JSON-ready), as a checkpoint's header records them."""
        return {"type": type(self).__name__, **{k: getattr(self, k) for k in self.hyperparameters}}

    def step(self, grads: Dict[str, np.ndarray]) -> None:
        """Update every parameter in place from ``grads`` (same keys and shapes)."""
        scale = self._grad_scale(grads)
        self.step_count += 1
        g_flat = _buffer(grads) if self.flat_params is not None else None
        if g_flat is not None and list(grads) == self.keys:
            self._update(self.flat_params, g_flat, *(self.state[b].buffer for b in self.buffers), grad_scale=scale)
            return
        for k, p in self.params.items():
            self._update(p, grads[k], *(self.state[b][k] for b in self.buffers), grad_scale=scale)

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Flat state: ``"step"`` and ``"<buffer>.<param name>"`` arrays (copies)."""
        out = {"step": np.array(self.step_count, dtype=np.int64)}
        for b in self.buffers:
            out.update({f"{b}.{k}": v.copy() for k, v in self.state[b].items()})
        return out

    def load_state_dict(self, state: Dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (checks names, shapes, that
        the buffers hold finite real numbers and the step count is an integer >= 0)."""
        expected = {"step"} | {f"{b}.{k}" for b in self.buffers for k in self.params}
        if set(state) != expected:
            raise ValueError(f"optimizer state does not match the parameters: missing "
                             f"{sorted(expected - set(state))}, extra {sorted(set(state) - expected)}")
        step = np.asarray(state["step"])
        if not (step.shape == () and step.dtype.kind in "iu" and step >= 0):
            raise ValueError(f"optimizer state step must be one integer >= 0, got {step.dtype} {step.shape}")
        for b in self.buffers:
            for k, v in self.state[b].items():
                src = np.asarray(state[f"{b}.{k}"])
                if src.shape != v.shape:
                    raise ValueError(f"optimizer state {b}.{k} has shape {src.shape}, expected {v.shape}")
                if src.dtype.kind != "f" or not np.isfinite(src).all():
                    raise ValueError(f"optimizer state {b}.{k} must hold finite real numbers "
                                     f"(dtype {src.dtype}{'' if src.dtype.kind != 'f' else ', NaN or inf found'})")
                v[...] = src
        self.step_count = int(step)


class Adam(Optimizer):
    """Adam with bias correction (Kingma and Ba 2015).

    ``weight_decay`` is decoupled, as in AdamW (Loshchilov and Hutter 2019):
    each step first shrinks ``p *= 1 - lr * weight_decay``. Defaults match
    PyTorch's ``torch.optim.Adam``.
    """

    buffers = ("m", "v")
    hyperparameters = ("lr", "betas", "eps", "weight_decay", "max_grad_norm")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None):
        super().__init__(params, lr, weight_decay, max_grad_norm)
        try:
            self.betas = tuple(betas)
        except TypeError:
            self.betas = ()
        if len(self.betas) != 2 or not all(_is_number(b) for b in self.betas):
            raise ValueError(f"Adam betas must be a pair of numbers (beta1, beta2), each in [0, 1), got {betas!r}")
        self.beta1, self.beta2 = self.betas
        for name, b in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= b < 1:
                raise ValueError(f"Adam {name} must lie in [0, 1), got {b}")
        _check_nonneg("eps", eps)
        self.eps = eps

    def _update(self, p, g, m, v, grad_scale):
        K.adam_update(p, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.step_count,
                      self.weight_decay, grad_scale, self.scratch)


class SGD(Optimizer):
    """Stochastic gradient descent with heavy-ball momentum and L2 weight decay.

    ``buf = momentum * buf + g + weight_decay * p``; ``p -= lr * buf``
    (PyTorch's ``torch.optim.SGD`` without dampening or Nesterov).
    """

    buffers = ("momentum",)
    hyperparameters = ("lr", "momentum", "weight_decay", "max_grad_norm")

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0,
                 max_grad_norm: Optional[float] = None):
        super().__init__(params, lr, weight_decay, max_grad_norm)
        if not (_is_number(momentum) and 0 <= momentum < 1):
            raise ValueError(f"SGD momentum must lie in [0, 1), got {momentum!r}")
        self.momentum = momentum

    def _update(self, p, g, buf, grad_scale):
        K.sgd_update(p, g, buf, self.lr, self.momentum, self.weight_decay, grad_scale, self.scratch)


def _is_number(value) -> bool:
    """A real number (Python's or NumPy's), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_params(params) -> None:
    """``params`` is a non-empty dict of float32/float64 arrays, which the optimizer updates in place."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of parameter arrays by name (e.g. model.params), "
                        f"got {type(params).__name__}")
    if not params:
        raise ValueError("params is empty: give the optimizer at least one parameter array (e.g. model.params)")
    for k, p in params.items():
        if not (isinstance(p, np.ndarray) and p.dtype in (np.float32, np.float64)):
            got = p.dtype if isinstance(p, np.ndarray) else type(p).__name__
            raise TypeError(f"parameter {k!r} must be a float32 or float64 NumPy array (updated in place), "
                            f"got {got}")


def _check_nonneg(name, value, strictly=False):
    if not _is_number(value):
        raise TypeError(f"{name} must be a finite number {'>' if strictly else '>='} 0, got {value!r}")
    ok = math.isfinite(value) and (value > 0 if strictly else value >= 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>' if strictly else '>='} 0, got {value}")
