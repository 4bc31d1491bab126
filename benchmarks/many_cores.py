"""Every measurement issue 20 asks of a many-core machine, as one command.

A machine with many cores is lent for minutes at a time, so the whole visit
is this script, tried here first with ``--quick``. It runs, most important
first, each as a child process under what is left of ``--budget`` seconds:

1. ``machine``: the CPU, its caches and flags, NumPy's BLAS and its kernel,
   package versions, ``lscpu`` (``machine.json``);
2. ``scaling``: ``scaling.py`` over 1, 2, 4, ... up to the CPU count, the
   default and one-pool scratchvae against JAX and PyTorch, batches 128 and
   1024 (``scaling.json``, ``scaling.png``);
3. ``bench``: ``scratchvae bench`` at the CPU count for each GEMM (the
   default ``numba``, products from BLAS; ``numba_pool``, our own), batches
   128 and 1024: where a step's time goes (``bench-*.log``);
4. ``overhead``: ``parallel_overhead.py`` at the CPU count, under Numba's
   ``omp`` threading layer (its threads spinning between regions, and with
   ``OMP_WAIT_POLICY=passive``, sleeping), ``tbb`` and ``workqueue``: what
   entering a parallel region costs there (``parallel_overhead-*.json``; a
   layer the machine lacks fails alone);
5. ``startup``: first training step from process start, warm and with an
   empty Numba cache (``startup.json``).

Each step's output goes to ``OUT/NAME.log`` and its records to ``OUT``
(``--out``, or see ``--save``); ``OUT/summary.json`` lists every step's command, exit status and seconds,
and is rewritten after each step, so a visit cut short keeps what it did. A
step that would start with less time left than it needs is skipped and
marked so. Copy the records into ``benchmarks/results/`` with the CPU in
their names.

    python benchmarks/many_cores.py --out DIR      # the visit; --save: into results/
    python benchmarks/many_cores.py --quick        # smoke run here, about a minute

How long: on this project's 2-CPU machine the whole visit (``--cpus 2``,
the benchmark venv) took 195 s, of which scaling 125 s (about a minute per
thread count), bench 26 s and startup 43 s, and the overhead step adds 6 s;
over 1, 2, 4, 8 and 16 threads that is about 6-7 minutes, inside the
default budget of 8.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEMS = "scratchvae-numba,scratchvae-onepool,jax-jit,torch-eager"
#: what each step needs at least, in seconds, on the full run and on the smoke run
NEEDS = {"machine": (5, 5), "scaling": (240, 30), "bench": (60, 20), "overhead": (30, 10), "startup": (45, 15)}


def powers_of_two_to(n: int) -> list:
    """1, 2, 4, ... below ``n``, then ``n``."""
    counts = [1]
    while counts[-1] * 2 < n:
        counts.append(counts[-1] * 2)
    return counts + ([n] if n > 1 else [])


def plan(args) -> list:
    """``(name, [(log name, command, extra environment), ...])`` in the order they run."""
    py, cpus = sys.executable, args.cpus
    counts = [1, 2] if args.quick else powers_of_two_to(cpus)
    scaling = [py, os.path.join(HERE, "scaling.py"), "--threads", ",".join(map(str, counts)),
               "--systems", SYSTEMS, "--json", os.path.join(args.out, "scaling.json")]
    scaling += ["--quick"] if args.quick else ["--pass", f"--rounds {args.rounds}"]
    bench = []
    for backend in ("numba", "numba_pool"):
        for batch in ((128,) if args.quick else (128, 1024)):
            bench.append((f"bench-{backend}-b{batch}",
                          [py, "-m", "scratchvae", "bench", "--backend", backend, "--batch-size", str(batch),
                           "--seconds", "1" if args.quick else "4"], common.thread_env(cpus)))
    layers = {"omp": {"NUMBA_THREADING_LAYER": "omp"},
              "omp-passive": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "passive"},
              "tbb": {"NUMBA_THREADING_LAYER": "tbb"}, "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"}}
    overhead = [(f"parallel_overhead-{name}",
                 [py, os.path.join(HERE, "parallel_overhead.py"), "--threads", str(cpus),
                  "--json", os.path.join(args.out, f"parallel_overhead-{name}.json")] + (["--quick"] if args.quick else []),
                 env) for name, env in layers.items()]
    startup = [py, os.path.join(HERE, "startup.py"), "--repeats", "1" if args.quick else "3",
               "--threads", str(cpus), "--json", os.path.join(args.out, "startup.json")]
    return [("machine", []), ("scaling", [("scaling", scaling, {})]), ("bench", bench),
            ("overhead", overhead), ("startup", [("startup", startup, {})])]


def machine_record(path: str) -> None:
    lscpu = shutil.which("lscpu")
    common.write_json(path, {"when": common.now_iso(), "machine": common.machine_info(), "blas": common.blas_info(),
                             "versions": common.package_versions(["numpy", "numba", "torch", "jax", "scratchvae"]),
                             "lscpu": subprocess.run([lscpu], capture_output=True, text=True).stdout if lscpu else None})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--save", action="store_true",
                       help="write into benchmarks/results/many_cores/, the committed records "
                            "(default: benchmarks/out/many_cores/, untracked)")
    where.add_argument("--out", help="write into this folder instead (created; files in it are replaced)")
    ap.add_argument("--budget", type=float, default=480.0,
                    help="seconds for the whole visit; each step gets what is left [480]")
    ap.add_argument("--cpus", type=int, default=len(common.cpu_affinity() or range(os.cpu_count() or 1)),
                    help="the largest thread count, used by bench and startup [the CPUs this process may use]")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds per thread count in scaling [5]")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 and 2 threads, short runs, batch 128 in bench; the numbers mean little")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(HERE, "results" if args.save else "out", "many_cores")
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(HERE), os.environ.get("PYTHONPATH")])))
    summary = {"when": common.now_iso(), "budget_s": args.budget, "quick": args.quick, "steps": []}

    def record(entry):
        summary["steps"].append(entry)
        common.write_json(os.path.join(args.out, "summary.json"), summary)
        print(f"[many_cores] {entry['name']}: {entry['status']} ({entry['seconds']:.0f} s)", flush=True)

    for step, runs in plan(args):
        left = args.budget - (time.perf_counter() - start)
        need = NEEDS[step][1 if args.quick else 0]
        if left < need:
            record({"name": step, "status": f"skipped: {left:.0f} s left, needs {need} s", "seconds": 0.0})
            continue
        if step == "machine":
            t = time.perf_counter()
            machine_record(os.path.join(args.out, "machine.json"))
            record({"name": step, "status": "ok", "seconds": time.perf_counter() - t})
        for name, command, extra in runs:
            left = args.budget - (time.perf_counter() - start)
            t = time.perf_counter()
            print(f"[many_cores] {name}: {' '.join(command[1:])} ({left:.0f} s left)", flush=True)
            with open(os.path.join(args.out, f"{name}.log"), "w") as log:
                try:
                    rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=dict(env, **extra),
                                        timeout=max(1.0, left - 2.0)).returncode
                    status = "ok" if rc == 0 else f"failed: exit {rc}, see {name}.log"
                except subprocess.TimeoutExpired:
                    status = "cut: the budget ran out"
            record({"name": name, "command": command[1:], "status": status, "seconds": time.perf_counter() - t})
    print(f"[many_cores] done in {time.perf_counter() - start:.0f} s; records in {args.out}")
    return 0 if all(s["status"] == "ok" for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
