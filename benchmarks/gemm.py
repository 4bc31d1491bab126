"""GEMM: the hand-written Numba GEMM against NumPy's BLAS on the model's shapes.

Times ``scratchvae.kernels.gemm_numba`` (serial and parallel) against
``np.matmul`` (OpenBLAS, or whatever BLAS NumPy was built with) on every
matrix product of one training step of the reference VAE (784-400-20,
float32), for each batch size:

* forward, ``x @ W`` (NN): enc.0 (B,784)@(784,400); enc.mu and enc.logvar
  (B,400)@(400,20); dec.0 (B,20)@(20,400); dec.1 (B,400)@(400,784);
* input gradients, ``d_y @ W.T`` (NT): dec.1 (B,784)@(400,784).T;
  dec.0 (B,400)@(20,400).T; enc.mu and enc.logvar (B,20)@(400,20).T
  (enc.0 needs none: its input is the data);
* weight gradients, ``x.T @ d_y`` (TN): enc.0 (784,B)@(B,400);
  enc.mu/logvar (400,B)@(B,20); dec.0 (20,B)@(B,400); dec.1 (400,B)@(B,784).

Two comparisons per shape, each at equal threads:

1. one thread: OpenBLAS set to 1 thread (at run time, through its
   ``openblas_set_num_threads``) against ``gemm_serial``; the two alternate
   call by call, the order rotating every round;
2. ``--threads`` threads: OpenBLAS at ``--threads`` against ``gemm_parallel``
   on as many Numba threads. These alternate in blocks of ``--block`` calls,
   each after a ``--settle`` pause and ``--block-warmup`` seconds of untimed
   calls: the
   idle threads of each pool keep spinning after a call (OpenBLAS's for about
   0.1 s, a whole core; Numba's OpenMP pool for about 0.01 s) and would take
   a core from the other library's threads, a cost of mixing two thread
   pools in one process that neither library alone has (per-call
   alternation slows both by up to 2x and more here).

For each: the median and min-max time of ``--reps`` calls after
``--warmup``, GFLOP/s (``2 m n k`` / median time) and the speed ratio
``BLAS time / our time`` (above 1: ours is faster). The last rows add up one
training step (every product with its multiplicity). Also reported: the
sgemm peak of a large square product (``--peak-size``) at 1 and
``--threads`` threads, the CPU time other processes took during each
measurement (a busy machine says so), and machine, versions, BLAS and
thread settings in the JSON. Prints two Markdown tables (1 thread,
``--threads`` threads) and writes a JSON record.

    python benchmarks/gemm.py [--batches 128,1024] [--reps 50] [--threads 2] [--quick] [--save]
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402 (imports no array library)


def model_products(batch):
    """``(name, layout, m, k, n, count per step)`` of every product of one
    training step with batch size ``batch``."""
    B = batch
    return [
        ("enc.0 forward", "NN", B, 784, 400, 1),
        ("enc.mu/logvar forward", "NN", B, 400, 20, 2),
        ("dec.0 forward", "NN", B, 20, 400, 1),
        ("dec.1 forward", "NN", B, 400, 784, 1),
        ("dec.1 input grad", "NT", B, 784, 400, 1),
        ("dec.0 input grad", "NT", B, 400, 20, 1),
        ("enc.mu/logvar input grad", "NT", B, 20, 400, 2),
        ("enc.0 weight grad", "TN", 784, B, 400, 1),
        ("enc.mu/logvar weight grad", "TN", 400, B, 20, 2),
        ("dec.0 weight grad", "TN", 20, B, 400, 1),
        ("dec.1 weight grad", "TN", 400, B, 784, 1),
    ]


# --------------------------------------------------------------------------
# OpenBLAS threads at run time
# --------------------------------------------------------------------------

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")


def blas_thread_control():
    """``(set_threads, get_threads, library path)`` for the OpenBLAS NumPy
    loaded, found among the shared objects this process has mapped; None
    when there is none (another BLAS, or not Linux)."""
    import numpy as np  # noqa: F401  (loads the BLAS)
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "blas" in os.path.basename(path).lower() and ".so" in path:
                    paths.add(path)
    except OSError:
        libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        paths.update(glob.glob(os.path.join(libs, "*blas*")))
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, s) for s in _SETTERS if hasattr(lib, s)), None)
        getter = next((getattr(lib, g) for g in _GETTERS if hasattr(lib, g)), None)
        if setter is not None and getter is not None:
            setter.argtypes = [ctypes.c_int]
            getter.restype = ctypes.c_int
            return (lambda n, f=setter: f(int(n))), (lambda f=getter: int(f())), path
    return None


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------

def time_calls(fn, count):
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def warm_for(fn, seconds):
    """Call ``fn`` untimed until ``seconds`` have passed (at least once)."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def alternate(fns, reps, warmup, block=1, settle=0.0, block_warmup=0.0):
    """Time each of ``fns`` ``reps`` times, in rounds of ``block`` calls per
    function, the order rotating each round. With ``block > 1`` each block
    starts with ``settle`` seconds of sleep and ``block_warmup`` seconds of
    untimed calls."""
    for fn in fns:
        time_calls(fn, warmup)
    times = [[] for _ in fns]
    rounds = -(-reps // block)
    for r in range(rounds):
        for i in common.rotated(range(len(fns)), r):
            n = min(block, reps - len(times[i]))
            if n <= 0:
                continue
            if block > 1:
                if settle:
                    time.sleep(settle)
                if block_warmup:
                    warm_for(fns[i], block_warmup)
            times[i].extend(time_calls(fns[i], n))
    return times


def fmt_time(summary):
    return f"{summary['median'] * 1e6:,.0f} ({summary['min'] * 1e6:,.0f}-{summary['max'] * 1e6:,.0f})"


def build_parser():
    parser = common.parser(
        __doc__, "gemm",
        threads="threads of the multi-threaded comparison, for OpenBLAS and Numba alike; set "
                "through OMP/OPENBLAS/NUMBA_NUM_THREADS before NumPy loads",
        quick="a smoke run: batch 128, 5 reps, 1 warm-up, no settle pauses, no peak")
    parser.add_argument("--batches", default="128,1024",
                        help="comma-separated batch sizes B; each gives the 11 products of one step [128,1024]")
    parser.add_argument("--reps", type=int, default=50, help="timed calls per implementation and shape [50]")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing [5]")
    parser.add_argument("--block", type=int, default=10,
                        help="calls per block in the multi-threaded comparison [10]")
    parser.add_argument("--settle", type=float, default=0.15,
                        help="seconds of pause before each block of the multi-threaded comparison, so "
                             "that the other library's idle threads have stopped spinning (OpenBLAS: "
                             "about 0.1 s after a call, Numba's OpenMP pool: about 0.01 s) [0.15]")
    parser.add_argument("--block-warmup", type=float, default=0.02,
                        help="seconds of untimed calls at the start of each block, after the pause: the "
                             "thread pool wakes up and the cores leave their idle state [0.02]")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="element type; the model trains in float32 [float32]")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="n of the n x n x n sgemm that measures the BLAS peak; 0 skips it [2048]")
    parser.add_argument("--cold", action="store_true",
                        help="compile from scratch (an empty NUMBA_CACHE_DIR) and report that compile time; "
                             "by default Numba's on-disk cache is used as it is")
    return parser


def first_calls(G, dtype, rng):
    """Seconds of the first call of each variant: its compilation, or its load from the cache."""
    a = rng.standard_normal((64, 64)).astype(dtype)
    out = {}
    for name, fn in (("serial", G.gemm_serial), ("parallel", lambda x, y: G.gemm_parallel(x, y, threads=2))):
        t0 = time.perf_counter()
        fn(a, a)
        out[name] = time.perf_counter() - t0
    return out


def measure_product(args, G, batch, product, dtype, rng, set_blas, monitor):
    """The record of one of :func:`model_products`: BLAS against ours at 1 and at --threads threads."""
    import numpy as np
    name, layout, m, k, n, count = product
    trans_a, trans_b = layout[0] == "T", layout[1] == "T"
    x = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    out_blas, out_ours = np.empty((m, n), dtype), np.empty((m, n), dtype)
    flop = 2.0 * m * n * k
    blas = functools.partial(np.matmul, x.T if trans_a else x, w.T if trans_b else w, out=out_blas)
    serial = functools.partial(G.gemm_serial, x, w, out_ours, trans_a, trans_b)
    parallel = functools.partial(G.gemm_parallel, x, w, out_ours, trans_a, trans_b, threads=args.threads)
    rec = {"batch": batch, "product": name, "layout": layout, "m": m, "k": k, "n": n,
           "count_per_step": count, "flop": flop,
           "gemm_uses": "parallel" if flop >= G.PARALLEL_MIN_FLOP and args.threads > 1 else "serial"}
    for label, threads, fns, block, settle in (
            ("1 thread", 1, (blas, serial), 1, 0.0),
            (f"{args.threads} threads", args.threads, (blas, parallel), args.block, args.settle)):
        set_blas(threads)
        monitor.start()
        cpu0 = time.process_time()
        t_blas, t_ours = alternate(fns, args.reps, args.warmup, block, settle, args.block_warmup)
        foreign = monitor.stop(time.process_time() - cpu0)
        err = float(np.max(np.abs(out_ours - out_blas)) / max(float(np.max(np.abs(out_blas))), 1e-30))
        sb, so = common.summarize(t_blas), common.summarize(t_ours)
        rec[label] = {"blas_s": sb, "ours_s": so,
                      "blas_gflops": flop / sb["median"] / 1e9, "ours_gflops": flop / so["median"] / 1e9,
                      "speed_ratio": sb["median"] / so["median"], "max_rel_diff": err,
                      "other_processes_cpu": foreign}
    print(f"  B={batch:<5} {layout} {m}x{k}x{n:<5} "
          + "  ".join(f"{lbl}: {rec[lbl]['speed_ratio']:.2f}x" for lbl in ("1 thread", f"{args.threads} threads")),
          file=sys.stderr, flush=True)
    return rec


def sgemm_peaks(args, set_blas):
    """The sgemm peak at 1 and at --threads threads (none with --peak-size 0)."""
    peaks = {}
    for threads in sorted({1, args.threads}) if args.peak_size else ():
        set_blas(threads)
        rates = common.sgemm_peak(args.peak_size, reps=5)["gflops"]
        peaks[f"{threads} thread{'s' if threads > 1 else ''}"] = common.summarize(rates)
    return peaks


def product_table(records, batches, label):
    """One comparison's Markdown table: every product, then one step's sum (each product times its count)."""
    rows = []
    for batch in batches:
        total_b = total_o = 0.0
        for rec in (r for r in records if r["batch"] == batch):
            d = rec[label]
            total_b += rec["count_per_step"] * d["blas_s"]["median"]
            total_o += rec["count_per_step"] * d["ours_s"]["median"]
            load = d["other_processes_cpu"]
            rows.append([batch, rec["product"], rec["layout"], f"{rec['m']}x{rec['k']}x{rec['n']}",
                         fmt_time(d["blas_s"]), f"{d['blas_gflops']:.1f}",
                         fmt_time(d["ours_s"]), f"{d['ours_gflops']:.1f}",
                         f"{d['speed_ratio']:.2f}", "-" if load is None else f"{load:.2f}"])
        rows.append([batch, "**one step** (x count)", "", "", f"{total_b * 1e6:,.0f}", "",
                     f"{total_o * 1e6:,.0f}", "", f"{total_b / total_o:.2f}", ""])
    return common.markdown_table(
        ["B", "product", "layout", "m x k x n", "BLAS us", "BLAS GFLOP/s", "ours us", "ours GFLOP/s",
         "speed vs BLAS", "other CPU"], rows, "llllrrrrrr")


def report(args, records, batches, dtype, peaks, first_call):
    """The two tables, the peak and the first calls, on stdout."""
    for label in ("1 thread", f"{args.threads} threads"):
        ours = "gemm_serial" if label == "1 thread" else "gemm_parallel"
        print(f"\n### {label}: np.matmul (BLAS) vs {ours}, {dtype.name}, time in us: median (min-max) of "
              f"{args.reps}\n")
        print(product_table(records, batches, label))
    if peaks:
        print("\nsgemm peak, np.matmul " + f"{args.peak_size}^3: "
              + ", ".join(f"{k}: {v['median']:.1f} GFLOP/s" for k, v in peaks.items()))
    print("first call (compile or cache load): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in first_call.items())
          + (" (cold: empty NUMBA_CACHE_DIR)" if args.cold else " (Numba cache as found)"))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.batches, args.reps, args.warmup, args.settle, args.peak_size = "128", 5, 1, 0.0, 0
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    thread_env = common.apply_thread_env(args.threads)
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="scratchvae-gemm-cold-")
    import numba
    import numpy as np

    from scratchvae.kernels import gemm_numba as G

    dtype = np.dtype(args.dtype)
    control = blas_thread_control()
    set_blas = control[0] if control else (lambda n: None)
    rng, monitor = np.random.default_rng(0), common.CpuMonitor()
    first_call = first_calls(G, dtype, rng)
    records = [measure_product(args, G, batch, product, dtype, rng, set_blas, monitor)
               for batch in batches for product in model_products(batch)]
    peaks = sgemm_peaks(args, set_blas)
    set_blas(args.threads)
    report(args, records, batches, dtype, peaks, first_call)
    json_path = common.output_path(args, "gemm")
    common.write_json(json_path, {
        "benchmark": "gemm", "when": common.now_iso(), "argv": sys.argv[1:], "args": vars(args),
        "machine": common.machine_info(),
        "versions": common.package_versions(["numpy", "numba", "llvmlite", "scratchvae"]),
        "blas": common.blas_info(),
        "blas_thread_control": control[2] if control else None,
        "threads": {"requested": args.threads, "env_set": thread_env,
                    "env": {k: os.environ.get(k) for k in common.THREAD_ENV_VARS},
                    "numba_threading_layer_config": numba.config.THREADING_LAYER,
                    "numba_threading_layer": numba.threading_layer(), "numba_num_threads": numba.get_num_threads()},
        "gemm_numba": {"tiling": G.tiling(dtype), "parallel_min_flop": G.PARALLEL_MIN_FLOP,
                       "pack_a_min_n": G.PACK_A_MIN_N, "pack_b_min_m": G.PACK_B_MIN_M,
                       "first_call_s": first_call, "cold_compile": args.cold},
        "sgemm_peak_gflops": peaks, "results": records,
    })
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
