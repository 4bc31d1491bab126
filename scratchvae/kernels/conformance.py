"""The conformance check of a kernel backend against ``reference``: :func:`check`.

Every kernel of the contract runs on the same inputs in the candidate and in
the reference, on awkward shapes (a single row or column, odd and prime
sizes, a training batch, a 650k-parameter vector), in float32 and float64,
with C-contiguous and strided inputs, with its outputs given and allocated,
and (for ``gemm``) in every layout. A case passes when every output agrees
within the dtype's tolerance, the dtype is kept and the inputs the kernel
must not write are unchanged. Used through :func:`scratchvae.kernels.check_backend`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .contract import ACTIVATIONS, CONTRACT, FUSED
from . import reference as R

DTYPES = (np.float32, np.float64)
#: max |got - want| <= RTOL * max(|want|, 1): float32 sums over 784 terms lose ~1e-5
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
SHAPES = ((1, 1), (1, 7), (3, 1), (5, 13), (17, 31), (61, 784), (128, 400))
QUICK_SHAPES = SHAPES[:5]
GEMM_SHAPES = ((1, 1, 1), (1, 7, 3), (5, 1, 13), (17, 31, 5), (13, 20, 400), (128, 400, 20), (128, 784, 400))
FLAT_SIZES = (1, 7, 4099, 652_824)


@dataclass
class KernelResult:
    name: str
    cases: int = 0
    max_error: float = 0.0               # largest error as a fraction of the tolerance
    failures: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.cases > 0 and not self.failures


@dataclass
class Report:
    """One :class:`KernelResult` per kernel; ``ok`` when every case of every kernel passed."""
    backend: str
    results: List[KernelResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def __str__(self):
        w = max(len(r.name) for r in self.results)
        lines = [f"conformance of {self.backend} against reference"]
        for r in self.results:
            status = "ok  " if r.ok else "FAIL"
            line = f"  {r.name:<{w}}  {status} {r.cases:4d} cases  worst error {r.max_error:6.3f} of the tolerance"
            if r.failures:
                line += f"\n      {r.failures[0]}" + (f" (and {len(r.failures) - 1} more)" if len(r.failures) > 1 else "")
            lines.append(line)
        lines.append(f"{'all kernels conform' if self.ok else 'NOT CONFORMING'} "
                     f"({sum(r.cases for r in self.results)} cases)")
        return "\n".join(lines)


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------

def _strided(a: np.ndarray) -> np.ndarray:
    """The values of ``a`` as a view that is not contiguous (every other element of a larger array)."""
    if a.ndim == 1:
        buf = np.empty(2 * len(a), a.dtype)
        buf[::2] = a
        return buf[::2]
    buf = np.empty((a.shape[0], 2 * a.shape[1]), a.dtype)
    buf[:, ::2] = a
    return buf[:, ::2]


def _layouts(quick):
    return ("contiguous",) if quick else ("contiguous", "strided")


def _lay(layout, *arrays):
    return arrays if layout == "contiguous" else tuple(_strided(a) for a in arrays)


# A case: (description, make) where make() returns (args, kwargs, outputs, frozen):
# ``outputs`` names what to compare: "return" (the return value or tuple) and/or
# keyword arguments that are written in place; ``frozen`` the arguments that must
# come back unchanged. make() is called once per backend: each gets fresh arrays.
Case = Tuple[str, Callable[[], tuple]]


def _cases_gemm(rng, quick) -> Iterator[Case]:
    for m, k, n in GEMM_SHAPES[:5] if quick else GEMM_SHAPES:
        for dtype in DTYPES:
            for ta in (False, True):
                for tb in (False, True):
                    for layout in _layouts(quick):
                        for accumulate in (False, True):
                            def make(m=m, k=k, n=n, dtype=dtype, ta=ta, tb=tb, layout=layout, accumulate=accumulate):
                                a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
                                b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
                                a, b = _lay(layout, a, b)
                                out = rng.standard_normal((m, n)).astype(dtype)
                                kw = dict(out=out, trans_a=ta, trans_b=tb, accumulate=accumulate)
                                if not accumulate and n % 2:
                                    kw["out"] = None                 # allocated
                                return (a, b), kw, ("return",), (0, 1)
                            yield (f"{m}x{k}x{n} {'T' if ta else 'N'}{'T' if tb else 'N'} {dtype.__name__} "
                                   f"{layout}{' accumulate' if accumulate else ''}"), make


def _cases_bias_activation(rng, quick):
    for shape, dtype, act, layout in _grid(quick):
        def make(shape=shape, dtype=dtype, act=act, layout=layout):
            a = (3 * rng.standard_normal(shape)).astype(dtype)
            b = rng.standard_normal(shape[1]).astype(dtype)
            a, b = _lay(layout, a, b)
            return (a, b, act, 0.2), {}, ("return",), (0, 1)
        yield f"{shape} {dtype.__name__} {act} {layout}", make
        if layout == "contiguous":
            def make_inplace(shape=shape, dtype=dtype, act=act):
                a = (3 * rng.standard_normal(shape)).astype(dtype)
                return (a, rng.standard_normal(shape[1]).astype(dtype), act, 0.2), {"out": a}, ("return",), (1,)
            yield f"{shape} {dtype.__name__} {act} out=a (in place)", make_inplace


def _cases_gemm_bias_activation(rng, quick):
    for m, k, n in GEMM_SHAPES[:5] if quick else GEMM_SHAPES:
        for dtype in DTYPES:
            for act in ACTIVATIONS:
                for layout in _layouts(quick):
                    def make(m=m, k=k, n=n, dtype=dtype, act=act, layout=layout):
                        x, W = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
                        b = rng.standard_normal(n).astype(dtype)
                        x, W, b = _lay(layout, x, W, b)
                        kw = {} if n % 2 else {"out": np.empty((m, n), dtype)}
                        return (x, W, b, act, 0.2), kw, ("return",), (0, 1, 2)
                    yield f"{m}x{k}x{n} {dtype.__name__} {act} {layout}", make


def _cases_activation_backward(rng, quick):
    for shape, dtype, act, layout in _grid(quick):
        for variant in ("plain", "d_b", "row_scale"):
            def make(shape=shape, dtype=dtype, act=act, layout=layout, variant=variant):
                y = R.bias_activation((3 * rng.standard_normal(shape)).astype(dtype), np.zeros(shape[1], dtype),
                                      act, 0.2)
                d_y = rng.standard_normal(shape).astype(dtype)
                y, d_y = _lay(layout, y, d_y)
                kw = {}
                if variant != "plain":
                    kw["d_b"] = np.zeros(shape[1], dtype)
                if variant == "row_scale":
                    kw["row_scale"] = rng.random(shape[0]).astype(dtype)
                    kw["out"] = np.empty(shape, dtype)
                return (y, d_y, act, 0.2), kw, ("return",) + (("d_b",) if "d_b" in kw else ()), (0, 1)
            yield f"{shape} {dtype.__name__} {act} {layout} {variant}", make


def _grid(quick):
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in DTYPES:
            for act in ACTIVATIONS:
                for layout in _layouts(quick):
                    yield shape, dtype, act, layout


def _logits(rng, shape, dtype):
    l = 4 * rng.standard_normal(shape)
    l.flat[::5] *= 1e-3                     # near 0, where the continuous Bernoulli switches to its series
    l.flat[::7] = 0.0
    return l.astype(dtype)


def _cases_loss(name):
    def cases(rng, quick):
        for shape in QUICK_SHAPES if quick else SHAPES:
            for dtype in DTYPES:
                for layout in _layouts(quick):
                    for with_grad in (True, False):
                        def make(shape=shape, dtype=dtype, layout=layout, with_grad=with_grad):
                            l = _logits(rng, shape, dtype)
                            x = rng.random(shape).astype(dtype)
                            l, x = _lay(layout, l, x)
                            kw = {"with_grad": with_grad}
                            if with_grad and shape[0] % 2:
                                kw.update(nll=np.empty(shape[0], dtype), grad=np.empty(shape, dtype))
                            return (l, x), kw, ("return",), (0, 1)
                        yield f"{shape} {dtype.__name__} {layout} with_grad={with_grad}", make
    return cases


def _cases_gaussian_nll(rng, quick):
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in DTYPES:
            for sigma in ("scalar", "pixel"):
                for layout in _layouts(quick):
                    def make(shape=shape, dtype=dtype, sigma=sigma, layout=layout):
                        mean, x = rng.standard_normal(shape).astype(dtype), rng.random(shape).astype(dtype)
                        log_sigma = (0.3 * rng.standard_normal(1 if sigma == "scalar" else shape[1])).astype(dtype)
                        mean, x = _lay(layout, mean, x)
                        return (mean, x, log_sigma), {}, ("return",), (0, 1, 2)
                    yield f"{shape} {dtype.__name__} sigma per {sigma} {layout}", make


def _cases_gaussian_log_sigma_grad(rng, quick):
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in DTYPES:
            for sigma in ("scalar", "pixel"):
                def make(shape=shape, dtype=dtype, sigma=sigma):
                    mean, x = rng.standard_normal(shape).astype(dtype), rng.random(shape).astype(dtype)
                    log_sigma = (0.3 * rng.standard_normal(1 if sigma == "scalar" else shape[1])).astype(dtype)
                    w = rng.random(shape[0]).astype(dtype)
                    return (mean, x, log_sigma, w), {}, ("return",), (0, 1, 2, 3)
                yield f"{shape} {dtype.__name__} sigma per {sigma}", make


def _latent_inputs(rng, n, k, s, dtype):
    mu = rng.standard_normal((n, k)).astype(dtype)
    logvar = rng.standard_normal((n, k)).astype(dtype)
    eps = rng.standard_normal((s * n, k)).astype(dtype)
    return mu, logvar, eps


def _cases_gaussian_latent(rng, quick):
    for n, k in QUICK_SHAPES if quick else SHAPES:
        for s in (1, 3):
            for dtype in DTYPES:
                def make(n=n, k=k, s=s, dtype=dtype):
                    mu, logvar, eps = _latent_inputs(rng, n, k, s, dtype)
                    kw = {} if n % 2 else {"z": np.empty((s * n, k), dtype), "kl": np.empty(n, dtype),
                                           "kl_sample": np.empty(s * n, dtype)}
                    return (mu, logvar, eps), kw, ("return",), (0, 1, 2)
                yield f"({n}, {k}) x {s} samples {dtype.__name__}", make


def _cases_gaussian_latent_backward(rng, quick):
    for n, k in QUICK_SHAPES if quick else SHAPES:
        for s in (1, 3):
            for dtype in DTYPES:
                for weights in ("kl", "kl_sample", "both", "none"):
                    def make(n=n, k=k, s=s, dtype=dtype, weights=weights):
                        mu, logvar, eps = _latent_inputs(rng, n, k, s, dtype)
                        z = R.gaussian_latent(mu, logvar, eps)[0]
                        d_z = rng.standard_normal((s * n, k)).astype(dtype)
                        w_kl = rng.random(n).astype(dtype) if weights in ("kl", "both") else None
                        w_ks = rng.random(s * n).astype(dtype) if weights in ("kl_sample", "both") else None
                        return (mu, logvar, eps, z, d_z, w_kl, w_ks), {}, ("return",), (0, 1, 2, 3, 4)
                    yield f"({n}, {k}) x {s} samples {dtype.__name__} weights {weights}", make


def _cases_log_softmax(rng, quick):
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in DTYPES:
            def make(shape=shape, dtype=dtype):
                logits = (3 * rng.standard_normal(shape)).astype(dtype)
                logits[0] += 1000                          # stability: no overflow
                return (logits,), {}, ("return",), (0,)
            yield f"{shape} {dtype.__name__}", make


def _cases_log_softmax_backward(rng, quick):
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in DTYPES:
            def make(shape=shape, dtype=dtype):
                log_p = R.log_softmax((3 * rng.standard_normal(shape)).astype(dtype))
                return (log_p, rng.standard_normal(shape).astype(dtype)), {}, ("return",), (0, 1)
            yield f"{shape} {dtype.__name__}", make


def _cases_repeat_rows(rng, quick):
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in DTYPES:
            for times in (1, 3):
                def make(shape=shape, dtype=dtype, times=times):
                    kw = {"out": np.empty((times * shape[0], shape[1]), dtype)} if times > 1 else {}
                    return (rng.standard_normal(shape).astype(dtype), times), kw, ("return",), (0,)
                yield f"{shape} {dtype.__name__} x {times}", make


def _cases_min_max(rng, quick):
    for shape in QUICK_SHAPES if quick else SHAPES:
        for dtype in DTYPES:
            for layout in _layouts(quick):
                for nan in (False, True):
                    def make(shape=shape, dtype=dtype, layout=layout, nan=nan):
                        x = rng.standard_normal(shape).astype(dtype)
                        if nan:
                            x.flat[x.size // 2] = np.nan
                        return _lay(layout, x), {}, ("return",), (0,)
                    yield f"{shape} {dtype.__name__} {layout}{' with a NaN' if nan else ''}", make


def _cases_sum_squares(rng, quick):
    for size in FLAT_SIZES[:3] if quick else FLAT_SIZES:
        for dtype in DTYPES:
            def make(size=size, dtype=dtype):
                return (rng.standard_normal(size).astype(dtype),), {}, ("return",), (0,)
            yield f"({size},) {dtype.__name__}", make


def _cases_update(kind):
    def cases(rng, quick):
        for size in FLAT_SIZES[:3] if quick else FLAT_SIZES:
            for dtype in DTYPES:
                for decay in (0.0, 0.01):
                    for step in (1, 10):
                        def make(size=size, dtype=dtype, decay=decay, step=step):
                            p, g = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
                            m = 0.1 * rng.standard_normal(size).astype(dtype)
                            if kind == "adam":
                                v = 0.01 * rng.random(size).astype(dtype)
                                return ((p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, step, decay, 0.5), {},
                                        ("arg0", "arg2", "arg3"), (1,))
                            return (p, g, m, 1e-2, 0.9, decay, 0.5), {}, ("arg0", "arg2"), (1,)
                        yield f"({size},) {dtype.__name__} weight_decay={decay} step={step}", make
    return cases


CASES: Dict[str, Callable] = {
    "gemm": _cases_gemm,
    "bias_activation": _cases_bias_activation,
    "activation_backward": _cases_activation_backward,
    "bernoulli_nll": _cases_loss("bernoulli_nll"),
    "continuous_bernoulli_nll": _cases_loss("continuous_bernoulli_nll"),
    "gaussian_nll": _cases_gaussian_nll,
    "gaussian_log_sigma_grad": _cases_gaussian_log_sigma_grad,
    "gaussian_latent": _cases_gaussian_latent,
    "gaussian_latent_backward": _cases_gaussian_latent_backward,
    "log_softmax": _cases_log_softmax,
    "log_softmax_backward": _cases_log_softmax_backward,
    "repeat_rows": _cases_repeat_rows,
    "min_max": _cases_min_max,
    "sum_squares": _cases_sum_squares,
    "adam_update": _cases_update("adam"),
    "sgd_update": _cases_update("sgd"),
    "gemm_bias_activation": _cases_gemm_bias_activation,
}
assert tuple(CASES) == CONTRACT + FUSED


# --------------------------------------------------------------------------
# running and comparing
# --------------------------------------------------------------------------

def _copy(value):
    if isinstance(value, np.ndarray):
        # a strided view stays strided: copy the values into a new strided view
        return _strided(value.copy()) if not (value.flags.c_contiguous or value.flags.f_contiguous) else value.copy()
    return value


def _outputs(result, args, kwargs, names):
    got = []
    for name in names:
        if name == "return":
            got.extend(result if isinstance(result, tuple) else (result,))
        elif name.startswith("arg"):
            got.append(args[int(name[3:])])
        else:
            got.append(kwargs[name])
    return got


def _compare(got, want, dtype) -> Tuple[float, Optional[str]]:
    """The error as a fraction of the tolerance, and what is wrong (None if nothing)."""
    if len(got) != len(want):
        return math.inf, f"returned {len(got)} values, the reference {len(want)}"
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None or g is None:
            if (w is None) != (g is None):
                return math.inf, f"output {i} is {'None' if g is None else 'an array'}, the reference's is not"
            continue
        g_arr, w_arr = np.asarray(g), np.asarray(w)
        if g_arr.shape != w_arr.shape:
            return math.inf, f"output {i} has shape {g_arr.shape}, the reference's {w_arr.shape}"
        if isinstance(g, np.ndarray) and g.dtype != np.dtype(dtype):
            return math.inf, f"output {i} has dtype {g.dtype}, expected {np.dtype(dtype)}"
        w64, g64 = w_arr.astype(np.float64), g_arr.astype(np.float64)
        if not np.array_equal(np.isnan(w64), np.isnan(g64)):
            return math.inf, f"output {i}: NaN where the reference has none, or the other way round"
        finite = ~np.isnan(w64)
        if not finite.any():
            continue
        scale = max(float(np.max(np.abs(w64[finite]))), 1.0)
        err = float(np.max(np.abs(g64[finite] - w64[finite]))) / (RTOL[np.dtype(dtype)] * scale)
        worst = max(worst, err)
        if not err <= 1.0:
            return worst, f"output {i} differs by {err:.3g} times the tolerance"
    return worst, None


def _dtype_of(args):
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            return a.dtype
    return np.dtype(np.float64)


def check(module, quick: bool = False, kernels=None) -> Report:
    """Run every kernel of :data:`CONTRACT` in ``module`` (or those named in ``kernels``, fused
    ones too) against the reference."""
    results = []
    for name in kernels or CONTRACT:
        result = KernelResult(name)
        rng = np.random.default_rng(sum(map(ord, name)))
        candidate, reference = getattr(module, name), getattr(R, name)
        for label, make in CASES[name](rng, quick):
            result.cases += 1
            args, kwargs, names, frozen = make()
            ref_args, ref_kwargs = [_copy(a) for a in args], {k: _copy(v) for k, v in kwargs.items()}
            before = {i: np.array(args[i], copy=True) for i in frozen}
            try:
                got = _outputs(candidate(*args, **kwargs), args, kwargs, names)
            except Exception as e:                  # a kernel that raises fails its case, the check goes on
                result.failures.append(f"{label}: raised {type(e).__name__}: {e}")
                continue
            want = _outputs(reference(*ref_args, **ref_kwargs), ref_args, ref_kwargs, names)
            err, problem = _compare(got, want, _dtype_of(args))
            for i, value in before.items():
                if not np.array_equal(value, args[i], equal_nan=True):
                    problem = problem or f"input {i} was modified"
            if "out" in kwargs and kwargs["out"] is not None and "return" in names:
                first = got[0]
                if first is not kwargs["out"] and not np.shares_memory(first, kwargs["out"]):
                    problem = problem or "did not return the out= array it was given"
            result.max_error = max(result.max_error, err if math.isfinite(err) else 0.0)
            if problem:
                result.failures.append(f"{label}: {problem}")
        results.append(result)
    return Report(getattr(module, "__name__", str(module)), results)
