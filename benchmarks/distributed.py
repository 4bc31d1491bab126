"""Data-parallel training over MPI: ranks x threads on one machine, and what a cluster would reach.

For each layout R x T (R ranks under ``mpiexec -n R``, T threads each; R = 1 is the plain
one-process step, no MPI in it), a worker trains the reference model (784-400-20,
Bernoulli, Adam, float32) on random images, exactly as ``scratchvae train`` does (the
Trainer's loop, its data-parallel step), and times the steps after a warm-up: examples
per second of the global batch, and the seconds per step rank 0 spent in the gradient's
allreduce (waiting for the slowest rank included). The layouts alternate round by round;
the table gives medians, the speed-up over 1 x 1 and the parallel efficiency (speed-up
over the cores used).

Then the ring-allreduce cost model: each of N ranks sends and receives 2 (N - 1) / N
of the S-byte gradient per step (reduce-scatter, then all-gather), in 2 (N - 1)
messages, so one allreduce takes about

    t(N) = 2 (N - 1) / N * S / bandwidth + 2 (N - 1) * latency.

It is checked against the allreduce alone timed here (the same buffer, one machine's
shared memory as the network), and then used to say what a cluster reaches: for a
network of a given bandwidth, the global batch at which a step's compute (the rows of
one node at the measured per-core speed) equals its allreduce, above which the network
costs less than half the step.

    python benchmarks/distributed.py                     # the layouts of this machine's cores
    python benchmarks/distributed.py --layouts 1x16,2x8,4x4,16x1 --save
    python benchmarks/distributed.py --quick             # smoke run: seconds, numbers mean little

Needs the MPI extra: pip install -e '.[mpi]'.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PARAMS = 652_824                  # the reference model's parameters: its gradient is this many float32s
#: networks for the cluster projection: name, bytes per second, latency per message (s)
NETWORKS = [("1 GbE", 0.125e9, 50e-6), ("10 GbE", 1.25e9, 20e-6), ("25 GbE", 3.1e9, 10e-6),
            ("100 Gb/s InfiniBand", 12.5e9, 2e-6)]


def default_layouts() -> list:
    """1 x 1, then R x T with R T = the CPUs this process may use, R = 1, 2, 4, ..."""
    cpus = len(common.cpu_affinity() or range(os.cpu_count() or 1))
    layouts, r = [(1, 1)], 1
    while r <= cpus:
        if cpus % r == 0 and (r, cpus // r) not in layouts:
            layouts.append((r, cpus // r))
        r *= 2
    return layouts


def layouts_type(text: str) -> list:
    try:
        return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layouts like 1x2,2x1, got {text!r}") from None


def build_parser():
    ap = common.parser(__doc__, "distributed", quick="batch 128 only, 1 round, few steps: checks that it runs")
    ap.add_argument("--layouts", type=layouts_type, default=None,
                    help="comma-separated RANKSxTHREADS [1x1, then every RxT that fills this machine's CPUs]")
    ap.add_argument("--batch-sizes", type=common.integers(1), default=[128, 1024],
                    help="comma-separated global batch sizes [128,1024]")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds; medians over them [5]")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per run [60]")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first [10]")
    ap.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)   # one rank's run (internal)
    return ap


# --------------------------------------------------------------------------
# one layout's run: every rank of `mpiexec -n R` runs this
# --------------------------------------------------------------------------

def worker(spec: dict) -> None:
    common.apply_thread_env(spec["threads"])            # before NumPy loads
    import time

    import numpy as np

    from scratchvae.data.datasets import Dataset
    from scratchvae.distributed import world
    from scratchvae.run import Run, TrainConfig, Trainer

    comm, batch = world(), spec["batch"]
    steps = spec["warmup"] + spec["steps"]
    rng = np.random.default_rng(0)                      # the same images on every rank
    x = rng.random((batch * steps, 784), dtype=np.float32)
    data = Dataset("random", x, None, x[:100], None, (28, 28))
    run = Run(TrainConfig(batch_size=batch, epochs=1), data, out_dir=spec["out_dir"])
    marks, monitor = {}, common.CpuMonitor()            # other processes' CPU use in the timed steps

    def mark(trainer):
        if trainer.run.step in (spec["warmup"], steps):
            dp = trainer.data_parallel
            marks[trainer.run.step] = (time.perf_counter(), dp.allreduce_seconds if dp is not None else 0.0,
                                       time.process_time())
            if trainer.run.step == spec["warmup"]:
                monitor.start()
    trainer = Trainer(run, quiet=True, comm=comm, on_batch=mark)
    trainer.fit()
    (t0, a0, c0), (t1, a1, c1) = marks[spec["warmup"]], marks[steps]
    buffer = np.ones(PARAMS, np.float32)                # the allreduce alone, same buffer
    times = []
    for _ in range(spec["allreduce_reps"]):
        start = time.perf_counter()
        comm.allreduce_sum(buffer)
        times.append(time.perf_counter() - start)
    result = {"examples_per_s": batch * spec["steps"] / (t1 - t0),
              "allreduce_s_per_step": (a1 - a0) / spec["steps"],
              "allreduce_alone_s": float(np.median(times)) if comm.size > 1 else 0.0}
    own_cpu_s = sum(comm.allgather(c1 - c0))            # every rank's CPU time in the timed steps
    if comm.rank == 0:
        result["other_processes_cpus"] = monitor.stop(own_cpu_s)
        with open(spec["result"], "w") as f:
            json.dump(result, f)


def run_layout(ranks: int, threads: int, batch: int, args, tmp: str) -> dict:
    """One timed run of the layout ``ranks x threads`` once the machine is quiet: its worker's result."""
    spec = {"threads": threads, "batch": batch, "steps": args.steps, "warmup": args.warmup,
            "allreduce_reps": 5 if args.quick else 50, "out_dir": os.path.join(tmp, f"run-{ranks}x{threads}"),
            "result": os.path.join(tmp, "result.json")}
    shutil.rmtree(spec["out_dir"], ignore_errors=True)
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    common.wait_quiet(common.CpuMonitor(), threshold=0.3, max_wait=10)
    subprocess.run(command, check=True, env={k: v for k, v in os.environ.items() if k != "SCRATCHVAE_DEBUG"})
    with open(spec["result"]) as f:
        return json.load(f)


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if found is None:
        sys.exit("distributed.py: no mpiexec found: pip install -e '.[mpi]' (mpi4py and MPICH)")
    return found


# --------------------------------------------------------------------------
# the cost model
# --------------------------------------------------------------------------

def ring_allreduce_s(n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    """Seconds of one ring allreduce of ``nbytes`` over ``n`` ranks (see the module's docstring)."""
    return 0.0 if n <= 1 else 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def projection(per_core_examples_s: float, cores_per_node: int) -> list:
    """For each network: the allreduce of the gradient between nodes, and the global batch per node
    at which the node's compute takes as long (above it, the network is less than half the step)."""
    nbytes, node_rate = 4 * PARAMS, per_core_examples_s * cores_per_node
    rows = []
    for name, bandwidth, latency in NETWORKS:
        per_nodes = {n: ring_allreduce_s(n, nbytes, bandwidth, latency) for n in (2, 8, 64)}
        rows.append({"network": name, "bandwidth_GB_s": bandwidth / 1e9, "latency_us": latency * 1e6,
                     "allreduce_ms": {str(n): t * 1e3 for n, t in per_nodes.items()},
                     "break_even_batch_per_node": {str(n): t * node_rate for n, t in per_nodes.items()}})
    return rows


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    layouts = args.layouts or default_layouts()
    batches = [128] if args.quick else args.batch_sizes
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 5, 2
    samples = {(b, layout): [] for b in batches for layout in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for b in batches:
                for ranks, threads in common.rotated(layouts, i):
                    r = run_layout(ranks, threads, b, args, tmp)
                    samples[(b, (ranks, threads))].append(r)
                    print(f"round {i + 1}/{args.rounds}  batch {b}  {ranks}x{threads}: "
                          f"{r['examples_per_s']:,.0f} ex/s, allreduce {r['allreduce_s_per_step'] * 1e3:.2f} ms/step",
                          file=sys.stderr, flush=True)
    import numpy as np                                  # after the workers: they set their own threads

    from scratchvae import kernels
    results = []
    for b in batches:
        base = np.median([r["examples_per_s"] for r in samples[(b, (1, 1))]]) if (1, 1) in layouts else None
        for ranks, threads in layouts:
            runs = samples[(b, (ranks, threads))]
            rate = common.summarize([r["examples_per_s"] for r in runs])
            speedup = rate["median"] / base if base else None
            results.append({
                "batch": b, "ranks": ranks, "threads": threads, "examples_per_s": rate,
                "examples_per_s_by_round": [round(r["examples_per_s"]) for r in runs],
                "speedup_over_1x1": speedup,
                "efficiency": speedup / (ranks * threads) if speedup else None,
                "allreduce_ms_per_step": float(np.median([r["allreduce_s_per_step"] for r in runs])) * 1e3,
                "allreduce_alone_ms": float(np.median([r["allreduce_alone_s"] for r in runs])) * 1e3,
                "other_processes_cpus": max((r["other_processes_cpus"] or 0.0) for r in runs)})
    # the ring model's bandwidth that the allreduce alone, timed here, implies
    here = [{"ranks": r["ranks"], "threads": r["threads"], "measured_ms": r["allreduce_alone_ms"],
             "implied_GB_s": 2 * (r["ranks"] - 1) / r["ranks"] * 4 * PARAMS / (r["allreduce_alone_ms"] / 1e3) / 1e9}
            for r in results if r["ranks"] > 1 and r["batch"] == batches[0] and r["allreduce_alone_ms"] > 0]
    one_core = [row for row in results if (row["ranks"], row["threads"]) == (1, 1)]
    per_core = max(row["examples_per_s"]["median"] for row in one_core) if one_core else None
    record = {"benchmark": "distributed", "date": common.now_iso(), "machine": common.machine_info(),
              "blas": common.blas_info(), "kernels": kernels.describe(),
              "packages": common.package_versions(["numpy", "numba", "mpi4py"]),
              "config": {"layouts": [f"{r}x{t}" for r, t in layouts], "batch_sizes": batches,
                         "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "quick": args.quick,
                         "model": "784-400-20 Bernoulli, Adam, float32, random images"},
              "results": results, "allreduce_alone": here,
              "gradient_bytes": 4 * PARAMS,
              "projection": projection(per_core, 16) if per_core else None,
              "projection_assumes": "one rank per node of 16 cores at the measured 1x1 speed per core"}
    print(report(record))
    path = common.output_path(args, "distributed")
    common.write_json(path, record)
    print(f"record: {path}", file=sys.stderr)
    return 0


def report(record: dict) -> str:
    lines = [f"{record['machine']['cpu_model']}, {common.blas_summary(record['blas'])}", ""]
    for b in record["config"]["batch_sizes"]:
        rows = [r for r in record["results"] if r["batch"] == b]
        lines += [f"global batch {b}:", common.markdown_table(
            ["ranks x threads", "examples/s (median)", "speed-up over 1x1", "efficiency",
             "allreduce ms/step (rank 0)", "allreduce alone ms", "other processes' CPUs"],
            [[f"{r['ranks']}x{r['threads']}", common.fmt_rate(r["examples_per_s"]["median"]),
              "-" if r["speedup_over_1x1"] is None else f"{r['speedup_over_1x1']:.2f}x",
              "-" if r["efficiency"] is None else f"{r['efficiency']:.0%}",
              f"{r['allreduce_ms_per_step']:.2f}", f"{r['allreduce_alone_ms']:.2f}",
              f"{r['other_processes_cpus']:.2f}"] for r in rows]), ""]
    for h in record["allreduce_alone"]:
        lines.append(f"allreduce alone, {h['ranks']} ranks on this machine: {h['measured_ms']:.2f} ms, as a ring "
                     f"over a {h['implied_GB_s']:.1f} GB/s network")
    if record["projection"]:
        lines += [f"ring allreduce of the {record['gradient_bytes'] / 1e6:.2f} MB gradient between nodes "
                  f"({record['projection_assumes']}):", common.markdown_table(
                      ["network", "2 nodes ms", "8 nodes ms", "64 nodes ms",
                       "batch per node where compute = allreduce (8 nodes)"],
                      [[p["network"], *(f"{p['allreduce_ms'][n]:.2f}" for n in ("2", "8", "64")),
                        f"{p['break_even_batch_per_node']['8']:,.0f}"] for p in record["projection"]])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
