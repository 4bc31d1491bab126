"""Finite-difference gradient checking, for tests and for learners.

Check any hand-written gradient against central differences::

    import numpy as np, scratchvae as sv
    model = sv.VAE(12, [8], 3, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).random((5, 12))
    eps = np.random.default_rng(1).standard_normal((5, 3))
    _, grads = model.loss_and_grads(x, eps=eps)
    report = sv.gradcheck(lambda: model.loss(x, eps=eps)["total"], model.params, grads)
    print(report)          # one row per parameter: shape, max |error|, relative error
    report.raise_if_failed()

The numerical gradient of each element is ``(f(p + h) - f(p - h)) / 2h``
(error O(h^2)); run checks in float64, where ``h = 1e-5`` balances the
truncation error (h^2 f'''/6) against rounding (1e-16 |f| / h). The relative error of a
parameter is ``||analytic - numeric|| / max(||analytic||, ||numeric||)``
over its checked elements.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np


@dataclass
class Row:
    name: str
    shape: tuple
    checked: int
    max_abs_error: float
    rel_error: float
    ok: bool


@dataclass
class GradcheckReport:
    rows: List[Row] = field(default_factory=list)
    rtol: float = 1e-6

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def max_rel_error(self) -> float:
        return max((r.rel_error for r in self.rows), default=0.0)

    def __str__(self):
        w = max([len(r.name) for r in self.rows] + [9])
        lines = [f"{'parameter':<{w}}  {'shape':<12} {'checked':>7}  {'max |err|':>10}  {'rel err':>10}",
                 "-" * (w + 48)]
        for r in self.rows:
            lines.append(f"{r.name:<{w}}  {str(r.shape):<12} {r.checked:>7}  {r.max_abs_error:10.3e}  "
                         f"{r.rel_error:10.3e}  {'ok' if r.ok else 'FAIL'}")
        lines.append(f"{'all ok' if self.ok else 'FAILED'} (relative error tolerance {self.rtol:g})")
        return "\n".join(lines)

    def raise_if_failed(self):
        if not self.ok:
            raise AssertionError("gradient check failed\n" + str(self))


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-5,
                       indices: Optional[np.ndarray] = None) -> np.ndarray:
    """Central differences of ``f()`` with respect to the elements of ``x``.

    ``f`` reads ``x`` (perturbed in place, always restored) and returns a
    scalar or an array (then the result is a Jacobian: one derivative of
    each output per element). ``indices`` (flat) limits the elements; the
    result then has one leading entry per index, otherwise the shape of
    ``x``, followed by the shape of ``f()``.
    """
    flat = x.reshape(-1)             # a view: writes reach x
    idx = np.arange(flat.size) if indices is None else np.asarray(indices)
    grad = []
    for i in idx:
        orig = flat[i]
        flat[i] = orig + h
        f_plus = f()
        flat[i] = orig - h
        f_minus = f()
        flat[i] = orig
        grad.append((np.asarray(f_plus) - f_minus) / (2 * h))
    grad = np.array(grad, dtype=np.float64)
    return grad.reshape(x.shape + grad.shape[1:]) if indices is None else grad


def gradcheck(f: Callable[[], float], arrays: Dict[str, np.ndarray], analytic: Dict[str, np.ndarray],
              h: float = 1e-5, rtol: float = 1e-6, atol: float = 1e-10,
              max_elements: Optional[int] = None, seed: int = 0) -> GradcheckReport:
    """Compare ``analytic[name]`` with central differences of ``f()`` for every name.

    arrays: the arrays ``f`` reads, perturbed in place one element at a time
    (float64 recommended). ``max_elements`` checks a random subset of that
    many elements per array (chosen with ``seed``) instead of all. A
    parameter passes when its relative error is at most ``rtol``, or when
    both gradients are below ``atol`` in norm (a gradient that is exactly
    zero, like a dead ReLU's, has no meaningful relative error).
    """
    missing = set(arrays) - set(analytic)
    if missing:
        raise ValueError(f"no analytic gradient for {sorted(missing)}")
    rng = np.random.default_rng(seed)
    report = GradcheckReport(rtol=rtol)
    for name, x in arrays.items():
        a = np.asarray(analytic[name], dtype=np.float64)
        if a.shape != x.shape:
            raise ValueError(f"analytic gradient {name!r} has shape {a.shape}, array has {x.shape}")
        idx = None
        if max_elements is not None and x.size > max_elements:
            idx = rng.choice(x.size, max_elements, replace=False)
        num = numerical_gradient(f, x, h, idx)
        a = a.reshape(-1)[idx] if idx is not None else a
        err = np.linalg.norm(a - num)
        scale = max(np.linalg.norm(a), np.linalg.norm(num))
        rel = 0.0 if err == 0 else (err / scale if scale > 0 else np.inf)
        ok = rel <= rtol or scale <= atol
        report.rows.append(Row(name, x.shape, num.size, float(np.max(np.abs(a - num), initial=0.0)),
                               float(rel), bool(ok)))
    return report


def check_op(forward: Callable, backward: Callable, inputs: Dict[str, np.ndarray],
             seed: int = 0, **kwargs) -> GradcheckReport:
    """Gradient-check a forward/backward pair.

    ``forward(**inputs)`` returns ``(out, cache)``; ``backward(cache, d_out)``
    returns a dict of gradients for (some of) the inputs. The check uses the
    scalar ``sum(w * out)`` with a fixed random ``w``, so every element of
    ``out`` takes part. ``kwargs`` go to :func:`gradcheck`.
    """
    out, cache = forward(**inputs)
    w = np.random.default_rng(seed).standard_normal(np.shape(out))
    grads = backward(cache, w.astype(np.asarray(out).dtype))
    return gradcheck(lambda: float(np.sum(w * forward(**inputs)[0])),
                     {k: inputs[k] for k in grads}, grads, **kwargs)
