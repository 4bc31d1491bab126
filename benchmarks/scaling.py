"""Scaling: training throughput of every system over a list of thread counts.

Runs ``benchmarks/train_throughput.py`` once per thread count (each run in
its own process, since BLAS and the thread pools read their sizes when they
load), with the same systems, batch sizes and rounds, and puts the results
side by side: per batch size a table of examples per second by thread count,
the speed-up over the smallest thread count, the parallel efficiency
(speed-up / threads ratio), the fraction of the GEMM limit at that thread
count (train_throughput's sgemm peak at the same threads), and the ratios to
JAX and PyTorch; and one picture, examples/s against threads on log-2 axes.
Within each thread count the systems alternate round by round (see
train_throughput.py); across thread counts the runs follow each other.

    python benchmarks/scaling.py                      # 1, 2, ..., the CPUs this process may use
    python benchmarks/scaling.py --threads 1,2,4,8,16 --save
    python benchmarks/scaling.py --quick              # smoke run: 1 and 2 threads, seconds
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from scratchvae.atomic import write_bytes  # noqa: E402  (after common puts this checkout first)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SYSTEMS = "scratchvae-numpy,scratchvae-numba,scratchvae-onepool,torch-eager,jax-jit"
PEERS = ("jax-jit", "torch-eager")


def default_threads() -> list:
    """1, 2, 4, ... up to the CPUs this process may use, and that count itself."""
    cpus = len(common.cpu_affinity() or range(os.cpu_count() or 1))
    counts = [1]
    while counts[-1] * 2 < cpus:
        counts.append(counts[-1] * 2)
    return counts + ([cpus] if cpus > 1 else [])


def build_parser():
    ap = common.parser(__doc__, "scaling", quick="1 and 2 threads, each a --quick run of train_throughput.py: "
                                                 "checks that everything runs, the numbers mean little")
    ap.add_argument("--threads", type=common.integers(1), default=None,
                    help="comma-separated thread counts [1, 2, 4, ... up to the CPUs this process may use]")
    ap.add_argument("--systems", default=DEFAULT_SYSTEMS,
                    help=f"comma-separated systems of benchmarks/systems.py [{DEFAULT_SYSTEMS}]")
    ap.add_argument("--batch-sizes", type=common.integers(1), default=[128, 1024],
                    help="comma-separated batch sizes [128,1024]")
    ap.add_argument("--plot", metavar="PATH",
                    help="write the picture there [beside the JSON record, scaling.png]")
    ap.add_argument("--pass", dest="passthrough", default="", metavar="OPTIONS",
                    help="more options for train_throughput.py, one string (e.g. \"--rounds 9\") [none]")
    return ap


def measure(threads: int, args, workdir: str) -> dict:
    """train_throughput.py's record at ``threads`` threads (its tables go to stderr as progress)."""
    path = os.path.join(workdir, f"threads-{threads}.json")
    command = [sys.executable, os.path.join(HERE, "train_throughput.py"), "--threads", str(threads),
               "--systems", args.systems, "--batch-sizes", ",".join(map(str, args.batch_sizes)), "--json", path]
    command += ["--quick"] if args.quick else []
    command += args.passthrough.split()
    print(f"[scaling] {threads} thread(s): {' '.join(command[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=sys.stderr)
    if not os.path.exists(path):
        raise SystemExit(f"train_throughput.py at {threads} threads wrote no record (exit {done.returncode})")
    with open(path) as f:
        return json.load(f)


def medians(records: dict) -> dict:
    """``{(system, batch): {threads: (examples/s median, % of the GEMM limit)}}`` over the runs."""
    table = {}
    for threads, record in records.items():
        for r in record["results"]:
            if r["status"] == "ok":
                table.setdefault((r["system"], r["batch_size"]), {})[threads] = (
                    r["examples_per_s"]["median"], r.get("percent_of_gemm_limit"))
    return table


def scaling_rows(table: dict, batch: int, counts: list) -> list:
    """One row per system and thread count: rate, speed-up, efficiency, % GEMM limit, ratios to the peers."""
    rows = []
    systems = sorted({s for s, b in table if b == batch}, key=lambda s: (s not in PEERS, s))
    for system in systems:
        by_threads = table[(system, batch)]
        base_threads = min(by_threads)
        for threads in counts:
            if threads not in by_threads:
                continue
            rate, limit = by_threads[threads]
            speedup = rate / by_threads[base_threads][0]
            peers = [table.get((peer, batch), {}).get(threads) for peer in PEERS]
            rows.append({"system": system, "threads": threads, "examples_per_s": rate,
                         "speedup": speedup, "efficiency": speedup / (threads / base_threads),
                         "percent_of_gemm_limit": limit,
                         **{f"ratio_to_{p.replace('-', '_')}": rate / v[0] if v else None
                            for p, v in zip(PEERS, peers)}})
    return rows


def markdown(rows: list) -> str:
    def ratio(v):
        return "-" if v is None else f"{v:.2f}x"
    body = [[r["system"], r["threads"], common.fmt_rate(r["examples_per_s"]), f"{r['speedup']:.2f}x",
             f"{100 * r['efficiency']:.0f}%",
             "-" if r["percent_of_gemm_limit"] is None else f"{r['percent_of_gemm_limit']:.0f}%",
             ratio(r["ratio_to_jax_jit"]), ratio(r["ratio_to_torch_eager"])] for r in rows]
    return common.markdown_table(["system", "threads", "examples/s", "speed-up", "efficiency", "% GEMM limit",
                                  "vs jax-jit", "vs torch-eager"], body, "lrrrrrrr")


def plot(tables: dict, path: str, cpu: str) -> bool:
    """examples/s against threads, one panel per batch size, log-2 axes; False without Matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4.2), squeeze=False)
    for ax, (batch, rows) in zip(axes[0], sorted(tables.items())):
        for system in dict.fromkeys(r["system"] for r in rows):
            mine = [r for r in rows if r["system"] == system]
            ax.plot([r["threads"] for r in mine], [r["examples_per_s"] for r in mine], "o-", label=system)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("threads")
        ax.set_ylabel("examples per second")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Training throughput by thread count: {cpu}", fontsize=10)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_bytes(os.path.abspath(path), png.getvalue())        # atomically, as every file here
    return True


def main(argv=None):
    args = build_parser().parse_args(argv)
    counts = args.threads or ([1, 2] if args.quick else default_threads())
    with tempfile.TemporaryDirectory(prefix="scaling-") as workdir:
        records = {threads: measure(threads, args, workdir) for threads in counts}
    table = medians(records)
    tables = {batch: scaling_rows(table, batch, counts) for batch in sorted({b for _, b in table})}
    first = records[counts[0]]
    cpu = first["machine"]["cpu_model"]
    print(f"\n## Scaling: 784-400-20 VAE, float32, Adam; {cpu}, {first['machine']['logical_cpus']} CPUs\n")
    for batch, rows in sorted(tables.items()):
        print(f"### batch {batch}\n\n{markdown(rows)}\n")
    json_path = common.output_path(args, "scaling")
    record = {"benchmark": "scaling", "schema": 1, "created": common.now_iso(),
              "command": [os.path.basename(sys.executable)] + sys.argv, "machine": first["machine"],
              "threads": counts, "systems": args.systems.split(","), "batch_sizes": sorted(tables),
              "tables": {str(batch): rows for batch, rows in tables.items()},
              "runs": {str(threads): record for threads, record in records.items()}}
    common.write_json(json_path, record)
    print(f"JSON record: {os.path.relpath(json_path)}")
    picture = args.plot or os.path.join(os.path.dirname(json_path) or ".", "scaling.png")
    if plot(tables, picture, cpu):
        print(f"picture: {os.path.relpath(picture)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
