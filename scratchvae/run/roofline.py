"""A roofline report of one training step: where the time goes, kernel by kernel.

    report = sv.profile(batch_size=128)          # or: scratchvae bench --batch-size 128
    print(report)

Every call the step makes into the kernel contract is timed (the active
backend, or the one named). Each kernel (each GEMM shape and layout
separately) gets its calls per step, its time per step, its share of the
step and its rate: GFLOP/s for the products, GB/s for the rest, the bytes
being those of the arrays it reads and writes. The rates are set against two
ceilings measured in the same run: the compute peak (NumPy's BLAS on a
2048 x 2048 float32 product) and the memory bandwidth (a copy of 256 MB, read
plus write). Last, the whole step in examples/s and as a fraction of the GEMM
limit: the peak divided by the step's GEMM FLOP per example.

Timing each call adds about a microsecond to it, so the step runs a little
slower under the report than alone; the report says both.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .. import kernels
from ..model import VAE
from ..optim import Adam

#: the compute-peak product: (n, n) @ (n, n) float32
PEAK_N = 2048
#: bytes of the bandwidth copy
COPY_BYTES = 256 << 20


@dataclass
class Row:
    kernel: str
    shape: str
    calls: float           # per step
    seconds: float         # per step
    flop: float            # per step (products only; 0 for the rest)
    bytes: float           # per step, read + written


@dataclass
class Profile:
    backend: str
    gemm: str
    batch_size: int
    architecture: str
    rows: List[Row]
    step_seconds: float            # per step, timed alone
    profiled_step_seconds: float   # per step, with every kernel call timed
    peak_gflops: float
    bandwidth_gbs: float
    gemm_flop_per_example: float
    steps: int
    notes: List[str] = field(default_factory=list)

    @property
    def examples_per_s(self) -> float:
        return self.batch_size / self.step_seconds

    @property
    def gemm_limit(self) -> float:
        """Examples/s at which the products alone, at the compute peak, would take all the time."""
        return self.peak_gflops * 1e9 / self.gemm_flop_per_example

    def table(self) -> List[List[str]]:
        """The kernel rows as strings: kernel, shape, calls, us, %, GFLOP/s, GB/s, % of ceiling."""
        out = []
        for r in sorted(self.rows, key=lambda r: -r.seconds):
            gflops = r.flop / r.seconds / 1e9 if r.flop else None
            gbs = r.bytes / r.seconds / 1e9
            ceiling = 100 * gflops / self.peak_gflops if gflops else 100 * gbs / self.bandwidth_gbs
            out.append([r.kernel, r.shape, f"{r.calls:g}", f"{1e6 * r.seconds:.1f}",
                        f"{100 * r.seconds / self.profiled_step_seconds:.1f}",
                        "-" if gflops is None else f"{gflops:.1f}", f"{gbs:.1f}",
                        f"{ceiling:.0f}% {'peak' if gflops else 'bandwidth'}"])
        return out

    def __str__(self):
        headers = ["kernel", "shape", "calls/step", "us/step", "% step", "GFLOP/s", "GB/s", "of ceiling"]
        rows = self.table()
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(cells, widths)))
        kernel_s = sum(r.seconds for r in self.rows)
        lines = [f"roofline of one training step: VAE {self.architecture}, batch {self.batch_size}, "
                 f"backend {self.backend}, gemm {self.gemm}",
                 f"ceilings: compute {self.peak_gflops:.1f} GFLOP/s (float32 {PEAK_N}^2 product, BLAS), "
                 f"memory {self.bandwidth_gbs:.1f} GB/s ({COPY_BYTES >> 20} MB copy)", "",
                 fmt(headers), fmt(["-" * w for w in widths])]
        lines += [fmt(r) for r in rows]
        lines += ["",
                  f"kernels {1e6 * kernel_s:.0f} us of a {1e6 * self.profiled_step_seconds:.0f} us profiled step "
                  f"({100 * kernel_s / self.profiled_step_seconds:.0f}%; the rest is Python between the calls)",
                  f"step alone: {1e6 * self.step_seconds:.0f} us = {self.examples_per_s:,.0f} examples/s = "
                  f"{100 * self.examples_per_s / self.gemm_limit:.1f}% of the GEMM limit "
                  f"({self.gemm_limit:,.0f} examples/s: {self.gemm_flop_per_example / 1e6:.2f} MFLOP of products "
                  f"per example at the compute peak)"]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _shape(name, args, kwargs) -> str:
    if name == "gemm_bias_activation":            # x (m, k), W (k, n): the product, then bias and f
        (m, k), n = args[0].shape, args[1].shape[1]
        return f"{m}x{k}x{n} NN + b, {args[3]}"
    if name == "gemm":
        a, b = args[0], args[1]
        ta, tb = kwargs.get("trans_a", False), kwargs.get("trans_b", False)
        m, k = (a.shape[1], a.shape[0]) if ta else a.shape
        n = b.shape[0] if tb else b.shape[1]
        layout = ("T" if ta else "N") + ("T" if tb else "N") + (" +=" if kwargs.get("accumulate") else "")
        return f"{m}x{k}x{n} {layout}"
    first = next((a for a in args if isinstance(a, np.ndarray)), None)
    return "x".join(map(str, first.shape)) if first is not None else ""


def _gemm_flop(name, args, kwargs) -> float:
    """The multiply-adds (2 m k n) of a call's product: of ``gemm`` and of the fused kernels that hold one."""
    if name not in ("gemm", "gemm_bias_activation"):
        return 0.0
    a, b = args[0], args[1]
    m, k = a.shape[::-1] if kwargs.get("trans_a", False) else a.shape
    n = b.shape[0] if kwargs.get("trans_b", False) else b.shape[1]
    return 2.0 * m * k * n


def _bytes(args, kwargs, result) -> float:
    """Bytes of every distinct array a call reads or writes (arguments and results)."""
    seen, total = set(), 0
    results = result if isinstance(result, tuple) else (result,)
    for a in (*args, *kwargs.values(), *results):
        if isinstance(a, np.ndarray) and id(a) not in seen:
            seen.add(id(a))
            total += a.nbytes
    return float(total)


def _ceilings():
    """(GFLOP/s of a float32 BLAS product, GB/s of a large copy), best of three each."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((PEAK_N, PEAK_N), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        np.matmul(a, a, out=c)
        best = min(best, time.perf_counter() - t)
    peak = 2.0 * PEAK_N ** 3 / best / 1e9
    src = np.ones(COPY_BYTES // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = np.inf
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return peak, 2.0 * COPY_BYTES / best / 1e9


def profile(backend: Optional[str] = None, gemm: Optional[str] = None, batch_size: int = 128,
            input_dim: int = 784, hidden: Sequence[int] = (400,), latent_dim: int = 20,
            seconds: float = 3.0, seed: int = 0) -> Profile:
    """Time every kernel call of training steps of ``VAE(input_dim, hidden, latent_dim)``
    (float32, Bernoulli, Adam) on batches of ``batch_size`` random grey images.

    ``backend``/``gemm``: as :func:`scratchvae.set_backend` (default: the
    active backend). Runs about ``seconds`` of steps alone, then as many
    profiled. Returns a :class:`Profile`; ``print`` it for the table.
    """
    if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    before = (kernels.get_backend(), kernels.get_gemm())
    if backend is not None or gemm is not None:
        kernels.set_backend(backend or kernels.get_backend(), gemm)
    try:
        info = kernels.describe()
        model = VAE(input_dim, hidden, latent_dim, seed=seed)
        opt = Adam(model.params)
        rng = np.random.default_rng(seed)
        pool = rng.random((4 * batch_size, input_dim), dtype=np.float32)

        def step(i):
            x = pool[(i % 4) * batch_size:(i % 4 + 1) * batch_size]
            opt.step(model.loss_and_grads(x, rng=rng, checked=True)[1])    # as the training loop steps

        kernels.warmup()
        for i in range(5):
            step(i)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 2 or n < 3:
            step(n)
            n += 1
        alone = (time.perf_counter() - t0) / n

        totals = defaultdict(lambda: [0, 0.0, 0.0, 0.0])      # calls, seconds, flop, bytes
        # a fused kernel the backend runs itself is timed as one call; a composed one is not, its
        # parts are (the composition calls them through ops)
        original = {name: getattr(kernels.ops, name) for name in kernels.CONTRACT + kernels.running_fused()}

        def timed(name, fn):
            def call(*args, **kwargs):
                t = time.perf_counter()
                result = fn(*args, **kwargs)
                dt = time.perf_counter() - t
                entry = totals[name, _shape(name, args, kwargs)]
                entry[0] += 1
                entry[1] += dt
                entry[2] += _gemm_flop(name, args, kwargs)
                entry[3] += _bytes(args, kwargs, result)
                return result
            return call

        for name, fn in original.items():
            setattr(kernels.ops, name, timed(name, fn))
        try:
            t0, steps = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds / 2 or steps < 3:
                step(steps)
                steps += 1
            profiled = (time.perf_counter() - t0) / steps
        finally:
            for name, fn in original.items():
                setattr(kernels.ops, name, fn)
        peak, bandwidth = _ceilings()
        rows = [Row(k, shape, c / steps, s / steps, f / steps, b / steps)
                for (k, shape), (c, s, f, b) in totals.items()]
        gemm_flop = sum(r.flop for r in rows) / batch_size
        arch = "-".join(map(str, [input_dim, *hidden, latent_dim]))
        return Profile(info["backend"], str(info["gemm"]), batch_size, arch, rows, alone, profiled, peak,
                       bandwidth, gemm_flop, steps)
    finally:
        kernels.set_backend(*before)
