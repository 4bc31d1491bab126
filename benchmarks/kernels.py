"""Fused kernels: time of each kernel of the numba backend against the numpy
backend (tuned, in-place NumPy), on the reference model's shapes (batch 128
and 1024, float32), median of --repeats blocks, alternating the two.

GEMM speed is measured by benchmarks/gemm.py.

    python benchmarks/kernels.py [--repeats 9] [--save]
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def cases(np, batch):
    """(name, callable(kernels module)) for every kernel of a training step."""
    from scratchvae.kernels import Scratch
    rng = np.random.default_rng(0)
    scratch = Scratch()
    f = np.float32

    def arr(*shape):
        return rng.standard_normal(shape).astype(f)

    a, b, d400, db = arr(batch, 400), arr(400), arr(batch, 400), np.empty(400, f)
    out400, a_own, d_own = np.empty_like(a), arr(batch, 400), arr(batch, 400)
    logits, x = arr(batch, 784), rng.random((batch, 784)).astype(f)
    d784, nll = np.empty_like(logits), np.empty(batch, f)
    mu, logvar, eps = arr(batch, 20), arr(batch, 20), arr(batch, 20)
    z, kl, dmu, dlv = np.empty_like(mu), np.empty(batch, f), np.empty_like(mu), np.empty_like(mu)
    kl_sample, w = np.empty(batch, f), np.full(batch, 1.0 / batch, f)
    n_params = 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
    p, g, m, v = arr(n_params), arr(n_params), np.zeros(n_params, f), np.zeros(n_params, f)
    return [
        ("bias + relu (B, 400)", lambda K: K.bias_activation(a, b, "relu", 0.0, out400)),
        ("relu backward + bias grad (B, 400)", lambda K: K.activation_backward(a, d400, "relu", 0.0, out400, db)),
        # in place, as the training step calls them (one array read and written)
        ("bias + relu in place (B, 400)", lambda K: K.bias_activation(a_own, b, "relu", 0.0, a_own)),
        ("relu backward in place (B, 400)", lambda K: K.activation_backward(a, d_own, "relu", 0.0, d_own, db)),
        ("bernoulli loss + grad (B, 784)", lambda K: K.bernoulli_nll(logits, x, nll, d784, True, scratch)),
        ("reparameterization + KL (B, 20)", lambda K: K.gaussian_latent(mu, logvar, eps, z, kl, kl_sample)),
        ("latent backward (B, 20)", lambda K: K.gaussian_latent_backward(mu, logvar, eps, z, mu, w, None, dmu, dlv)),
        (f"Adam, flat ({n_params:,} params)",
         lambda K: K.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 10, 0.0, 1.0, scratch)),
    ]


def time_block(fn, K, seconds=0.05):
    fn(K)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(K)
        n += 1
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    parser = common.parser(__doc__, "kernels", threads="BLAS/Numba threads")
    parser.add_argument("--repeats", type=int, default=9, help="alternating blocks per kernel [9]")
    args = parser.parse_args(argv)
    common.apply_thread_env(args.threads)
    import numpy as np

    from scratchvae.kernels import numba as numba_backend
    from scratchvae.kernels import numpy as numpy_backend
    numba_backend.warmup((np.float32,))
    systems = {"numpy": numpy_backend, "numba": numba_backend}
    rows, results = [], {}
    for batch in (128, 1024):
        for name, fn in cases(np, batch):
            times = {s: [] for s in systems}
            for r in range(args.repeats):
                for s in common.rotated(list(systems), r):
                    times[s].append(time_block(fn, systems[s]))
            med = {s: common.summarize(t)["median"] for s, t in times.items()}
            results[f"{name} B={batch}"] = {s: common.summarize(t) for s, t in times.items()}
            rows.append([name.replace("B", str(batch), 1) if "(B" in name else name, f"{1e6 * med['numpy']:.1f}",
                         f"{1e6 * med['numba']:.1f}", f"{med['numpy'] / med['numba']:.1f}x"])
    print(common.markdown_table(["kernel", "NumPy us", "Numba us", "speed-up"], rows, "lrrr"))
    json_path = common.output_path(args, "kernels")
    common.write_json(json_path, {"benchmark": "kernels", "when": common.now_iso(),
                                  "machine": common.machine_info(), "blas": common.blas_info(), "threads": common.thread_env(args.threads),
                                  "versions": common.package_versions(["numpy", "numba"]), "results": results})
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
