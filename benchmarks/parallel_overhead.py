"""What one Numba parallel region costs on this machine, against the same loop serial.

One elementwise loop body (x = sqrt(x + 1), float32, in place) run over the
whole array three ways, alternated in rounds:

* serial: the compiled body called once, on the calling thread;
* prange, 1 chunk: a ``parallel=True`` function whose ``prange`` has one
  iteration, calling the same body; the difference from serial is the price
  of entering and leaving a parallel region;
* prange, 2 chunks (or ``--threads``): the body on each half, one per thread;
  faster than serial only if a second core pays for the region.

Sizes default to a small layer's activations (4,096), a large one's (65,536)
and the reference model's parameters (652,824: what Adam sweeps). The step's
kernels in the one-pool mode (``set_backend("numba", gemm="numba")``) are such
regions, so where prange over 2 chunks is slower than serial at these sizes,
the pool cannot beat serial kernels beside a BLAS. Prints a Markdown table of
medians (microseconds per call) and writes JSON.

    python benchmarks/parallel_overhead.py [--sizes 4096,65536,652824] [--threads 2] [--quick] [--save]
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402 (imports no array library)


def _kernels(fastmath):
    """The body and its three callers, compiled with the library's fastmath flags."""
    import math

    import numba

    @numba.njit(fastmath=fastmath)
    def body(x, lo, hi):
        for i in range(lo, hi):
            x[i] = math.sqrt(x[i] + 1.0)

    @numba.njit(fastmath=fastmath)
    def serial(x, chunks):                # chunks unused: the three ways share one call signature
        body(x, 0, x.shape[0])

    @numba.njit(parallel=True, fastmath=fastmath)
    def chunked(x, chunks):
        n = x.shape[0]
        for t in numba.prange(chunks):
            body(x, t * n // chunks, (t + 1) * n // chunks)

    return serial, chunked


def main(argv=None) -> int:
    parser = common.parser(__doc__, "parallel_overhead", threads="Numba threads, and chunks of the parallel case",
                           quick="smoke run: one size (4096), 2 rounds of 3 calls")
    parser.add_argument("--sizes", default="4096,65536,652824", help="comma-separated array lengths [4096,65536,652824]")
    parser.add_argument("--rounds", type=int, default=9, help="alternated rounds; each times every way once [9]")
    parser.add_argument("--calls", type=int, default=50, help="calls per timed block [50]")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.calls = "4096", 2, 3
    sizes = [int(s) for s in args.sizes.split(",")]
    common.apply_thread_env(args.threads)
    try:
        import numba
    except ImportError:
        print("parallel_overhead: needs Numba (pip install numba)", file=sys.stderr)
        return 1
    import numpy as np

    from scratchvae.kernels import FASTMATH

    serial, chunked = _kernels(set(FASTMATH))
    ways = {"serial": (serial, 1), "prange, 1 chunk": (chunked, 1),
            f"prange, {args.threads} chunks": (chunked, args.threads)}
    results = {}
    for n in sizes:
        x = np.zeros(n, np.float32)
        for fn, chunks in ways.values():
            fn(x, chunks)                                   # compile outside the clock
        times = {name: [] for name in ways}
        for r in range(args.rounds):
            for name in common.rotated(list(ways), r):
                fn, chunks = ways[name]
                start = time.perf_counter()
                for _ in range(args.calls):
                    fn(x, chunks)
                times[name].append(1e6 * (time.perf_counter() - start) / args.calls)
        results[str(n)] = {name: common.summarize(t) for name, t in times.items()}
        print(f"size {n:,}: " + ", ".join(f"{name} {s['median']:.1f} us" for name, s in results[str(n)].items()),
              file=sys.stderr, flush=True)

    rows = [[f"{int(n):,}"] + [f"{s['median']:,.1f} ({s['min']:,.1f}-{s['max']:,.1f})" for s in by_way.values()]
            for n, by_way in results.items()]
    print(common.markdown_table(["elements"] + [f"{name}, us" for name in ways], rows, "l" + "r" * len(ways)))
    json_path = common.output_path(args, "parallel_overhead")
    common.write_json(json_path, {
        "benchmark": "parallel_overhead", "when": common.now_iso(), "argv": sys.argv[1:], "args": vars(args),
        "machine": common.machine_info(), "threads": common.thread_env(args.threads),
        "numba_threading_layer": numba.threading_layer(), "numba_num_threads": numba.get_num_threads(),
        "versions": common.package_versions(["numpy", "numba", "scratchvae"]), "results_us": results})
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
