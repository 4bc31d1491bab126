"""Startup: how long until `import scratchvae` returns, and until the first
training step is done, counted from process start.

Each measurement is a fresh Python process. "warm" uses Numba's on-disk cache
as it is (run once before to fill it); "cold" points NUMBA_CACHE_DIR at an
empty directory, so every kernel the step needs is compiled. Reports medians
and min-max over --repeats processes; prints a Markdown table and writes JSON.

    python benchmarks/startup.py [--repeats 5] [--save]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CHILD = r"""
import sys, time
t0 = float(sys.argv[1])
import numpy as np
import scratchvae as sv
t_import = time.time()
if sys.argv[2] != "import":
    sv.set_backend(sys.argv[2])
    model = sv.VAE(784, [400], 20, seed=0)
    opt = sv.Adam(model.params)
    rng = np.random.default_rng(0)
    x = rng.random((128, 784), dtype=np.float32)
    losses, grads = model.loss_and_grads(x, rng=rng)
    opt.step(grads)
print(t_import - t0, time.time() - t0)
"""


def measure(mode: str, backend: str, env: dict) -> float:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, repr(t0), backend if mode != "import" else "import"],
                         capture_output=True, text=True, env=env, check=True)
    t_import, t_step = map(float, out.stdout.split())
    return t_import if mode == "import" else t_step


def main(argv=None) -> int:
    parser = common.parser(__doc__, "startup", threads="BLAS/Numba threads")
    parser.add_argument("--repeats", type=int, default=5, help="processes per configuration [5]")
    args = parser.parse_args(argv)

    env = dict(os.environ, **common.thread_env(args.threads))
    env.pop("NUMBA_CACHE_DIR", None)
    configs = [("import scratchvae", "import", "numpy", "")]
    for backend in ("numpy", "numba", "numba_pool"):
        configs.append((f"first step, {backend}", "step", backend, "" if backend == "numpy" else "warm"))
    for backend in ("numba", "numba_pool"):         # the default, and the one pool (not the default: this)
        configs.append((f"first step, {backend}", "step", backend, "cold"))

    # fill the warm cache once
    for backend in ("numba", "numba_pool"):
        measure("step", backend, env)
    results = {}
    for label, mode, backend, cache in configs:
        times = []
        for _ in range(args.repeats):
            run_env = dict(env)
            if cache == "cold":
                run_env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="scratchvae-cold-")
            times.append(measure(mode, backend, run_env))
        results[f"{label} {cache}".strip()] = common.summarize(times)

    rows = [[k, f"{v['median']:.2f}", f"{v['min']:.2f}-{v['max']:.2f}"] for k, v in results.items()]
    print(common.markdown_table(["from process start until", "median s", "min-max s"], rows, "lrr"))
    json_path = common.output_path(args, "startup")
    common.write_json(json_path, {"benchmark": "startup", "when": common.now_iso(),
                                  "machine": common.machine_info(), "blas": common.blas_info(), "threads": common.thread_env(args.threads),
                                  "versions": common.package_versions(["numpy", "numba", "scratchvae"]),
                                  "results": results})
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
