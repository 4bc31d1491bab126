"""Helpers shared by the benchmark scripts.

Nothing here imports NumPy (or any array library) at module level: a script
sets the thread-count environment variables first (:func:`apply_thread_env`)
and only then imports the libraries that read them.

* the argument parser every script starts from (:func:`parser`: ``--save``,
  ``--json``, and ``--threads`` and ``--quick`` where a script has them) and
  comma-separated integers (:func:`integers`);
* machine, OS, Python and package versions (:func:`machine_info`,
  :func:`package_versions`), thread settings (:func:`thread_env`);
* CPU use of other processes during a timed block (:class:`CpuMonitor`), so a
  result taken on a busy machine says so;
* alternating rounds (:func:`rotated`), summaries (:func:`summarize`);
* the sgemm peak (:func:`sgemm_peak`) that bounds what any GEMM-bound code
  can reach on this machine with these threads;
* Markdown tables (:func:`markdown_table`) and atomic JSON files
  (:func:`write_json`) written to ``benchmarks/out/`` (untracked) unless a
  script is given ``--save`` (then ``benchmarks/results/``, the committed
  records: :func:`add_output_options`, :func:`output_path`).

Every record should say what the numbers ran on: :func:`machine_info` (CPU,
its vector ISA flags, whether the OpenBLAS variables that force a kernel are
set) and :func:`blas_info` (the BLAS library, its kernel and threads).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from typing import Dict, Iterable, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
#: the checkout the benchmarks belong to: importing this module puts it first
#: on sys.path, so the scripts measure this checkout's scratchvae, installed or
#: not (a benchmark venv may hold only torch and JAX)
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
#: committed records (``--save``) and the untracked default
RESULTS_DIR, OUT_DIR = os.path.join(HERE, "results"), os.path.join(HERE, "out")
#: environment variables that force OpenBLAS's kernel or cache model (this
#: workplace sets OPENBLAS_CORETYPE=Haswell, which halves sgemm on AVX-512
#: machines); a user's machine does not, so speed runs unset them
OPENBLAS_FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

#: environment variables that size the thread pools of the BLAS libraries,
#: OpenMP runtimes and Numba; all are read once, when the library loads
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


# --------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------

def thread_env(threads: int) -> Dict[str, str]:
    """The environment variables that pin every thread pool to ``threads``."""
    return {k: str(threads) for k in THREAD_ENV_VARS}


def apply_thread_env(threads: int) -> Dict[str, str]:
    """Set :func:`thread_env` in ``os.environ`` (call before importing NumPy)."""
    env = thread_env(threads)
    os.environ.update(env)
    return env


def cpu_affinity() -> Optional[List[int]]:
    """The CPUs this process may run on (None where the OS does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


# --------------------------------------------------------------------------
# machine and versions
# --------------------------------------------------------------------------

def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpu_model() -> str:
    info = _read("/proc/cpuinfo")
    if info:
        for line in info.splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def physical_cores() -> Optional[int]:
    """Distinct (package, core) pairs in /proc/cpuinfo; None off Linux."""
    info = _read("/proc/cpuinfo")
    if not info:
        return None
    cores, phys = set(), "0"
    for line in info.splitlines():
        if line.startswith("physical id"):
            phys = line.split(":", 1)[1].strip()
        elif line.startswith("core id"):
            cores.add((phys, line.split(":", 1)[1].strip()))
    return len(cores) or None


def memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_flags() -> List[str]:
    """The SIMD features that matter for float32 GEMM speed."""
    info = _read("/proc/cpuinfo") or ""
    for line in info.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                                "amx_tile", "asimd", "sve") if f in flags]
    return []


def machine_info() -> dict:
    """CPU, cores, memory, OS and Python of this machine (JSON-ready)."""
    load = None
    try:
        load = list(os.getloadavg())
    except (AttributeError, OSError):
        pass
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "cpu_flags": cpu_flags(),
        "affinity": cpu_affinity(),
        "memory_bytes": memory_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "load_average_at_start": load,
        "openblas_forcing_env": {k: os.environ.get(k) for k in OPENBLAS_FORCING},
    }


def package_versions(names: Iterable[str]) -> Dict[str, Optional[str]]:
    """Installed versions, read from package metadata without importing (None: absent)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def numpy_blas() -> Optional[dict]:
    """The BLAS NumPy was built against, as ``numpy.show_config`` reports it."""
    import numpy as np
    try:
        cfg = np.show_config(mode="dicts")
    except TypeError:          # NumPy < 1.25 only prints
        return None
    blas = (cfg.get("Build Dependencies") or {}).get("blas") or {}
    return {k: blas.get(k) for k in ("name", "version", "openblas configuration") if k in blas}


def blas_info() -> dict:
    """The BLAS NumPy runs with: library, version, the kernel it chose (OpenBLAS's
    ``architecture``: ``Haswell`` for AVX2, ``SkylakeX`` for AVX-512) and its threads,
    from threadpoolctl when installed (it loads NumPy), else the build configuration."""
    import numpy  # noqa: F401  (threadpoolctl reports the libraries already loaded)
    out = {"build": numpy_blas(), "runtime": None,
           "openblas_forcing_env": {k: os.environ.get(k) for k in OPENBLAS_FORCING}}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        out["runtime"] = "threadpoolctl not installed: the kernel OpenBLAS chose is unknown"
        return out
    out["runtime"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                                "threading_layer", "filepath")}
                      for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return out


def blas_summary(info: dict) -> str:
    """One line for a report: ``openblas 0.3.27, kernel Haswell, 2 threads (OPENBLAS_CORETYPE=Haswell)``."""
    runtime = info.get("runtime")
    if isinstance(runtime, list) and runtime:
        lib = runtime[0]
        text = f"{lib['internal_api']} {lib['version']}, kernel {lib['architecture']}, {lib['num_threads']} threads"
    else:
        text = str(runtime)
    forced = [f"{k}={v}" for k, v in info["openblas_forcing_env"].items() if v is not None]
    return text + (f" (forced by {', '.join(forced)})" if forced else "")


def parser(description: str, record: str, *, threads: Optional[str] = None,
           quick: Optional[str] = None) -> argparse.ArgumentParser:
    """The options every benchmark shares, on a parser that prints ``description``
    as written: ``--save`` and ``--json PATH`` for the record ``record``; with
    ``threads`` (what they size), ``--threads N`` [2]; with ``quick`` (what the
    smoke run cuts), ``--quick``. A script with ``--threads`` calls
    :func:`apply_thread_env` before it imports NumPy."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if threads:
        ap.add_argument("--threads", type=int, default=2, help=f"{threads} [2]")
    if quick:
        ap.add_argument("--quick", action="store_true", help=quick)
    add_output_options(ap, record)
    return ap


def integers(minimum: int = 0):
    """An argparse type: ``"1,2,3"`` -> ``[1, 2, 3]``, each at least ``minimum``."""
    def parse(text: str) -> List[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected integers of at least {minimum}, got {text!r}")
        return values
    return parse


def add_output_options(parser: argparse.ArgumentParser, name: str) -> None:
    """``--save`` and ``--json PATH``: where the JSON record of benchmark ``name`` goes."""
    parser.add_argument("--save", action="store_true",
                        help=f"write the JSON record to benchmarks/results/{name}.json, the committed record "
                             f"(default: benchmarks/out/{name}.json, untracked)")
    parser.add_argument("--json", metavar="PATH", help="write the JSON record to PATH instead")


def output_path(args: argparse.Namespace, name: str) -> str:
    """The JSON path :func:`add_output_options` chose."""
    if args.json:
        return args.json
    return os.path.join(RESULTS_DIR if args.save else OUT_DIR, f"{name}.json")


# --------------------------------------------------------------------------
# CPU used by other processes
# --------------------------------------------------------------------------

class CpuMonitor:
    """Busy CPU time from ``/proc/stat`` (Linux; inert elsewhere), of the whole
    machine or of the CPUs ``cpus`` only.

    ``start()`` then ``stop(own_cpu_s)`` returns the CPU-seconds per wall
    second that *other* processes used meanwhile: machine-wide busy time
    minus ``own_cpu_s`` (the CPU time the measured process reported for
    itself), divided by the wall time. 0 on an idle machine; 1.0 means one
    core's worth of foreign work competed with the benchmark.
    """

    def __init__(self, cpus: Optional[Sequence[int]] = None):
        self.available = _read("/proc/stat") is not None
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.labels = {"cpu"} if cpus is None else {f"cpu{c}" for c in cpus}
        self._t0 = self._busy0 = None

    def _busy_s(self) -> float:
        busy = 0
        for line in _read("/proc/stat").splitlines():
            fields = line.split()
            if not fields or fields[0] not in self.labels:
                continue
            vals = [int(v) for v in fields[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)     # idle + iowait
            guest = sum(vals[8:10]) if len(vals) > 9 else 0        # already counted in user/nice
            busy += sum(vals) - idle - guest
        return busy / self.tick

    def start(self) -> None:
        if self.available:
            self._busy0, self._t0 = self._busy_s(), time.perf_counter()

    def stop(self, own_cpu_s: float) -> Optional[float]:
        if not self.available or self._t0 is None:
            return None
        wall = time.perf_counter() - self._t0
        foreign = self._busy_s() - self._busy0 - own_cpu_s
        return max(0.0, foreign) / wall if wall > 0 else None


def wait_quiet(monitor: CpuMonitor, threshold: float, max_wait: float, window: float = 0.2):
    """Sleep in ``window``-second slices until one slice sees other processes use
    at most ``threshold`` CPUs (this process counts as idle), or ``max_wait``
    seconds have passed. Sleeps at least one slice. Returns (seconds waited,
    load of the last slice or None where it cannot be measured)."""
    waited, load = 0.0, None
    while True:
        monitor.start()
        time.sleep(window)
        load = monitor.stop(0.0)
        waited += window
        if load is None or load <= threshold or waited >= max_wait:
            return waited, load


# --------------------------------------------------------------------------
# rounds and summaries
# --------------------------------------------------------------------------

def rotated(items: Sequence, round_index: int) -> list:
    """``items`` rotated left by ``round_index``: each item leads one round in turn,
    so slow drift of the machine (heat, other load) spreads over all of them."""
    items = list(items)
    if not items:
        return items
    k = round_index % len(items)
    return items[k:] + items[:k]


def summarize(values: Sequence[float]) -> dict:
    """Median, min, max and count of a list of measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# --------------------------------------------------------------------------
# the machine's GEMM speed
# --------------------------------------------------------------------------

def sgemm_peak(n: int = 2048, reps: int = 7, warmup: int = 1, monitor: Optional[CpuMonitor] = None,
               busy_threshold: float = float("inf"), retries: int = 0) -> dict:
    """GFLOP/s of ``np.matmul`` on two (n, n) float32 matrices, one number per rep.

    Uses NumPy's BLAS with whatever threads the environment set before NumPy
    was imported. One product costs ``2 n^3`` FLOP. With a ``monitor``, a
    product during which other processes used more than ``busy_threshold``
    CPUs is repeated (at most ``retries`` times per rep) and recorded under
    ``discarded``. Returns ``{"gflops": [...], "other_cpu": [...], "discarded": [...]}``.
    """
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    for _ in range(warmup):
        np.matmul(a, b, out=c)
    out = {"gflops": [], "other_cpu": [], "discarded": []}
    for _ in range(reps):
        for attempt in range(retries + 1):
            if monitor:
                monitor.start()
            c0, t0 = time.process_time(), time.perf_counter()
            np.matmul(a, b, out=c)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            other = monitor.stop(cpu) if monitor else None
            rate = 2.0 * n ** 3 / wall / 1e9
            if other is None or other <= busy_threshold or attempt == retries:
                break
            out["discarded"].append({"gflops": rate, "other_cpu": other})
            wait_quiet(monitor, busy_threshold, 3.0)
        out["gflops"].append(rate)
        out["other_cpu"].append(other)
    return out


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------

def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], align: Optional[str] = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` has one of ``l``/``r`` per column."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(rule) + " |"]
    for row in rows:
        lines.append("| " + " | ".join("" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)


def fmt_rate(x: Optional[float]) -> str:
    """Examples per second with thousands separators (``-`` when missing)."""
    return "-" if x is None else f"{x:,.0f}"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically, by the library's one
    rule for files (:mod:`scratchvae.atomic`: temporary file, fsync, rename)."""
    from scratchvae.atomic import (
        write_bytes,  # here: importing scratchvae imports NumPy
    )
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_bytes(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())