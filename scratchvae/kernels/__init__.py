"""Kernels: the one way array work enters a training step, behind one open contract.

Model code never imports a backend. It calls ``ops.NAME(...)``::

    from ..kernels import ops as K
    y = K.bias_activation(K.gemm(x, W), b, "relu", 0.0)

and :func:`set_backend` rebinds ``ops``, so swapping the backend changes
every layer at once. To a reader's editor and to static tools ``ops`` is
``reference`` (a ``TYPE_CHECKING`` import below), so "go to definition" on
``K.gaussian_latent`` lands on the textbook kernel. The backends that come
with the library:

``reference`` (``kernels/reference.py``)
    the specification: each kernel as its textbook formula, one line per
    formula. Slow, allocates freely, never tuned: read it next to the maths.
``numpy`` (``kernels/numpy.py``)
    the same contract in tuned, in-place NumPy that allocates nothing when the
    caller passes its buffers; the default when Numba is missing.
``numba`` (``kernels/numba.py``)
    compiled and fused loops; the default when Numba imports.
``numba_pool`` (``kernels/numba_pool.py``)
    the numba backend run as one thread pool: the hand-written GEMM and the
    large kernels in Numba's pool.

**The contract** (``kernels/contract.py``, re-exported here): :data:`CONTRACT`
names every kernel; a backend is any module that defines all of them with the
signatures of ``reference.py`` (checked by :func:`register_backend`).

**Open.** :func:`register_backend` adds a backend by name (a module or its
import path); ``SCRATCHVAE_BACKEND=package.module`` (or a top-level
``module``) selects an out-of-tree backend in the API, the command line and
subprocesses alike; what its import or its kernels raise becomes one error
naming the backend (:class:`BackendError`), and :func:`check_backend` runs
every kernel of a backend against ``reference`` on awkward shapes and prints
a report.

**GEMM.** A backend brings its own ``gemm``; ``set_backend(name, gemm=G)``
(or ``$SCRATCHVAE_GEMM``) takes the products from :data:`GEMMS` instead:
``blas`` (NumPy's BLAS), ``numba`` (the hand-written ``kernels/gemm_numba.py``)
or ``reference``. The numba backend with the hand-written GEMM runs as one
pool: ``set_backend("numba", gemm="numba")`` selects ``numba_pool`` (:data:`ONE_POOL`).

**Fused.** :data:`FUSED` names kernels that do in one call what a sequence
of contract kernels does (``gemm_bias_activation``: a layer's forward pass).
Each is defined as that composition (``fused.py``; the reference backend's is
it), a backend may define its own (checked against the composition), and
``ops.NAME`` is the composition over the backend's kernels where it does not:
a backend of the unfused contract needs nothing more. ``numba_pool`` applies
the bias and activation as its GEMM's epilogue.

The default backend comes from ``$SCRATCHVAE_BACKEND``, or else is Numba when
it imports and NumPy otherwise; it is chosen at the first kernel call, so
``import scratchvae`` never imports Numba.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import sys
import time
import types
from typing import TYPE_CHECKING, Dict, Optional, Union

import numpy as np

from . import conformance, fused, reference
from .contract import (ACTIVATIONS, CONTRACT, DEFAULT_ALPHA, FASTMATH, FUSED, HALF_LOG_2PI, Scratch,  # noqa: F401
                       check_activation, temporaries)     # (re-exported: the contract's names live here too)
from .numpy import set_blas_threads
from .threads import ThreadTuner

# --------------------------------------------------------------------------
# The registry and the active backend
# --------------------------------------------------------------------------

BUILTIN_BACKENDS = {"reference": "scratchvae.kernels.reference", "numpy": "scratchvae.kernels.numpy",
                    "numba": "scratchvae.kernels.numba", "numba_pool": "scratchvae.kernels.numba_pool"}
#: where each GEMM lives: a module whose ``gemm`` follows the contract
GEMMS = {"blas": "scratchvae.kernels.numpy", "numba": "scratchvae.kernels.gemm_numba",
         "reference": "scratchvae.kernels.reference"}
#: how :func:`describe` names each of them
GEMM_LABELS = {"blas": "numpy.matmul (BLAS)", "numba": "scratchvae gemm_numba (Numba)",
               "reference": "reference (numpy.einsum)"}
#: a backend and a GEMM that run in one thread pool: ``set_backend(backend, gemm=G)``
#: selects the backend named here, whose large kernels run in the pool the GEMM runs in
ONE_POOL = {("numba", "numba"): "numba_pool"}


class _Ops:
    """The active backend's kernels as attributes. Until a backend is chosen,
    the first lookup chooses the default (so ``import scratchvae`` never
    imports Numba)."""

    def __getattr__(self, name):
        if (name in CONTRACT or name in FUSED) and _active["backend"] is None:
            set_backend(default_backend())
            return getattr(self, name)
        raise AttributeError(name)


if TYPE_CHECKING:          # for editors and static tools: K.NAME is the textbook kernel
    from . import reference as ops
else:
    ops = _Ops()
_registry: Dict[str, Union[str, types.ModuleType]] = dict(BUILTIN_BACKENDS)
_active = {"backend": None, "gemm": None, "module": None, "fused": ()}


def register_backend(name: str, module: Union[str, types.ModuleType]) -> None:
    """Make ``module`` (a module or its import path) selectable as backend ``name``.

    The module must define every kernel of :data:`CONTRACT` with the
    signature of ``kernels/reference.py``, and may define fused kernels of
    :data:`FUSED` (with theirs); :func:`check_backend` then tests what the
    kernels compute. A module given by path is imported now.
    """
    if not (isinstance(name, str) and name):
        raise ValueError(f"a backend name must be a non-empty string, got {name!r}")
    mod = _import(module, name) if isinstance(module, str) else module
    _check_signatures(mod, name)
    _registry[name] = mod


def backends() -> tuple:
    """The names :func:`set_backend` accepts (a dotted module path works too)."""
    return tuple(_registry)


class BackendError(RuntimeError):
    """A kernel of a backend from outside the library raised: the message names
    the backend, the kernel and the error (the original is its ``__cause__``)."""


def _import(path: str, name: str) -> types.ModuleType:
    builtin = path in BUILTIN_BACKENDS.values() or path in GEMMS.values()      # only Numba can be missing
    try:
        return importlib.import_module(path)
    except ImportError as e:
        hint = ("install it (pip install 'scratchvae[fast]') or use the numpy backend"
                if builtin else "check the module path and that its package is installed")
        raise ImportError(f"kernel backend {name!r} needs a module that does not import ({e}); {hint}") from None
    except Exception as e:              # the module's own code failed as it ran: name it, the backend and the error
        if builtin:
            raise
        raise ImportError(f"kernel backend {name!r}: importing {path} raised {type(e).__name__}: {e}; fix "
                          "the module or choose another backend") from e


def _guarded(name: str, kernel: str, fn):
    """``fn``, the kernel ``kernel`` of the outside backend ``name``, with what it raises turned into one
    :class:`BackendError` naming both (FloatingPointError and MemoryError pass unchanged: the library's
    loops act on them)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FloatingPointError, MemoryError, BackendError):
            raise
        except Exception as e:
            raise BackendError(f"kernel backend {name!r}: its kernel {kernel} raised {type(e).__name__}: {e}; "
                               "fix the backend or choose another (check it with "
                               "scratchvae.kernels.check_backend)") from e
    return call


def own_fused(module) -> tuple:
    """The fused kernels of :data:`FUSED` that ``module`` defines itself."""
    return tuple(k for k in FUSED if callable(getattr(module, k, None)))


def _check_signatures(module, name, kernels=CONTRACT) -> None:
    missing = [k for k in kernels if not callable(getattr(module, k, None))]
    if missing:
        raise ImportError(f"backend {name!r} does not implement {', '.join(missing)}")
    kernels = tuple(kernels) + tuple(k for k in own_fused(module) if k not in kernels)
    wrong = [k for k in kernels if inspect.signature(getattr(module, k)) != inspect.signature(getattr(reference, k))]
    if wrong:
        k = wrong[0]
        raise ImportError(f"backend {name!r}: {k}{inspect.signature(getattr(module, k))} differs from the "
                          f"contract {k}{inspect.signature(getattr(reference, k))}"
                          + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))


def _module(name: str) -> types.ModuleType:
    """The module of the backend ``name``: a registered name, or a dotted import path."""
    entry = _registry.get(name)
    if entry is None:
        if "." not in name:        # a top-level module is a module path too, if it imports
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ValueError(f"unknown kernel backend {name!r}: neither a registered backend "
                                 f"({', '.join(_registry)}) nor an importable module; give one of those, or a "
                                 "module path on PYTHONPATH such as mybackend or mypackage.mybackend")
        register_backend(name, name)
        entry = _registry[name]
    if isinstance(entry, str):
        entry = _import(entry, name)
        _check_signatures(entry, name)
        _registry[name] = entry
    return entry


def default_backend() -> str:
    """``$SCRATCHVAE_BACKEND`` if set, else ``numba`` when Numba imports, else ``numpy``."""
    name = os.environ.get("SCRATCHVAE_BACKEND")
    if name:
        return name
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numpy"
    return "numba"


def set_backend(name: str, gemm: Optional[str] = None) -> None:
    """Route every kernel call to the backend ``name``.

    ``name``: one of :func:`backends` or a module path (``package.module``),
    registered on first use. ``gemm``: one of :data:`GEMMS` to take the
    matrix products from instead of the backend's own (default:
    ``$SCRATCHVAE_GEMM``, else the backend's). A pair in :data:`ONE_POOL`
    selects the backend it names: ``set_backend("numba", gemm="numba")`` is
    ``numba_pool`` with that GEMM.

    A fused kernel of :data:`FUSED` is the backend's own where it defines one
    and the products are its own GEMM's; otherwise the composition of
    ``fused.py`` over the kernels just bound.
    """
    gemm = gemm or os.environ.get("SCRATCHVAE_GEMM") or None
    if gemm is not None and gemm not in GEMMS:
        raise ValueError(f"unknown GEMM {gemm!r}; choose one of {', '.join(GEMMS)}")
    name = ONE_POOL.get((name, gemm), name)
    module = _module(name)
    # an outside backend's kernels are wrapped so that what they raise names the backend
    outside = getattr(module, "__name__", None) not in BUILTIN_BACKENDS.values()
    wrap = (lambda k, fn: _guarded(name, k, fn)) if outside else (lambda k, fn: fn)
    gemm_fn = wrap("gemm", module.gemm) if gemm is None else _import(GEMMS[gemm], f"gemm {gemm}").gemm
    for k in CONTRACT:
        setattr(ops, k, wrap(k, getattr(module, k)))
    ops.gemm = gemm_fn
    # a backend's fused kernel runs its own products: with another GEMM chosen, the composition does
    own = own_fused(module) if gemm is None or gemm_fn is module.gemm else ()
    for k in FUSED:
        setattr(ops, k, wrap(k, getattr(module, k)) if k in own else functools.partial(fused.COMPOSITIONS[k], ops))
    _active.update(backend=name, gemm=gemm, module=module, fused=own)


def get_backend() -> str:
    """The name of the backend ``ops`` routes to (choosing the default if none was set)."""
    if _active["backend"] is None:
        set_backend(default_backend())
    return _active["backend"]


def get_gemm() -> Optional[str]:
    """The name in :data:`GEMMS` the products come from, or None for the backend's own."""
    get_backend()
    return _active["gemm"]


def active_module() -> types.ModuleType:
    """The module of the active backend."""
    get_backend()
    return _active["module"]


def running_fused() -> tuple:
    """The fused kernels of :data:`FUSED` the active backend runs itself; ``ops`` composes the others."""
    get_backend()
    return _active["fused"]


def _running_gemm() -> Optional[str]:
    """The name in :data:`GEMMS` of the GEMM that runs: the one chosen, else the
    backend's own when it is one of them; None for a GEMM of the backend's making."""
    own = {path: key for key, path in GEMMS.items()}.get(getattr(active_module().gemm, "__module__", None))
    return _active["gemm"] or own


def _running_modules() -> list:
    """The active backend's module, and the module of the GEMM that runs when it is one of :data:`GEMMS`."""
    gemm = _running_gemm()
    return [active_module()] + ([_import(GEMMS[gemm], f"gemm {gemm}")] if gemm else [])


def thread_tuner(**options) -> Optional[ThreadTuner]:
    """A :class:`~scratchvae.kernels.threads.ThreadTuner` (``options`` passed on)
    for the active backend's thread pool, or None where the thread count may
    not change mid-run: a backend whose results depend on it (OpenBLAS rounds
    some products differently with more threads) or that runs another GEMM than
    its own. A backend allows it with ``RESULTS_INDEPENDENT_OF_THREADS = True``
    and the functions ``max_threads()`` and ``set_threads(n)``."""
    module = active_module()
    if not getattr(module, "RESULTS_INDEPENDENT_OF_THREADS", False) or ops.gemm is not module.gemm:
        return None
    return ThreadTuner(module.max_threads(), module.set_threads, **options)


def set_threads(n: int) -> dict:
    """Let the kernels use ``n`` threads from the next call on: NumPy's OpenBLAS and, when
    Numba is loaded, its thread pool (up to ``NUMBA_NUM_THREADS``). Returns what was set,
    e.g. ``{"blas": 2, "numba": 2}`` (a library missing from it was not found).
    Data-parallel ranks call it to share a machine's cores."""
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    done = {"blas": int(n)} if set_blas_threads(n) else {}
    numba = sys.modules.get("numba")
    if numba is not None:
        done["numba"] = min(int(n), numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(done["numba"])
    return done


def warmup() -> float:
    """Compile or load every kernel of the active backend now; returns the seconds it took.

    With Numba the first call of each kernel otherwise pays its compilation
    (or its load from the on-disk cache) in the middle of the first step.
    """
    start = time.perf_counter()
    for module in _running_modules():
        if hasattr(module, "warmup"):
            module.warmup()
    return time.perf_counter() - start


def describe() -> dict:
    """The active backend and its settings: versions, threads, cache, which GEMM runs."""
    info = {"backend": get_backend()}
    for module in _running_modules():
        if hasattr(module, "describe"):
            info.update(module.describe())
    gemm = _running_gemm()
    info["gemm"] = GEMM_LABELS[gemm] if gemm else info.get("gemm", "the backend's own")
    info["fused"] = ", ".join(running_fused()) or "none (compositions of the contract's kernels)"
    info["numpy"] = np.__version__
    return info


def check_backend(backend, verbose: bool = True, quick: bool = False, kernels=None):
    """Run every kernel of ``backend`` against ``reference`` and return a
    :class:`~scratchvae.kernels.conformance.Report` (``report.ok``).

    ``backend``: a backend name, a module path or a module. Awkward shapes
    (1 row or column, odd, prime, large), float32 and float64, contiguous
    and strided inputs, every ``gemm`` layout, outputs given and allocated.
    ``verbose`` prints the report, one line per kernel; ``quick`` runs the
    small shapes only; ``kernels`` checks those names only (a GEMM module of
    :data:`GEMMS`: ``check_backend("scratchvae.kernels.gemm_numba", kernels=["gemm"])``).
    By default every kernel of :data:`CONTRACT` and the fused kernels the
    backend defines, each against its reference composition.
    """
    whole = not kernels
    kernels = tuple(kernels or CONTRACT)
    if isinstance(backend, types.ModuleType):
        module = backend
    elif whole:
        module = _module(backend)
    else:
        module = _import(backend, backend)
    _check_signatures(module, getattr(module, "__name__", str(backend)), kernels)
    if whole:
        kernels += own_fused(module)
    report = conformance.check(module, quick=quick, kernels=kernels)
    if verbose:
        print(report)
    return report
