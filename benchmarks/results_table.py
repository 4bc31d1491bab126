"""The README's results table: Fashion-MNIST, reference architecture, one
row per variant, each trained with `scratchvae train` and scored with
`scratchvae evaluate --iw-samples K` (test -ELBO, importance-weighted
log-likelihood, active units, training time).

    SCRATCHVAE_DATA=../shared/data python benchmarks/results_table.py [--epochs 10] [--iw-samples 1000]
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

VARIANTS = [
    ("Bernoulli, grey levels (the reference)", []),
    ("Bernoulli, dynamic binarisation", ["--binarize", "dynamic"]),
    ("Gaussian, learned per-pixel sigma", ["--likelihood", "gaussian_pixel"]),
    ("continuous Bernoulli", ["--likelihood", "continuous_bernoulli"]),
    ("latent size 2", ["--latent", "2"]),
    ("latent size 50", ["--latent", "50"]),
    ("importance-weighted bound, k = 5", ["--iw-samples", "5"]),
]


def main(argv=None) -> int:
    parser = common.parser(__doc__, "results_table")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per variant [10]")
    parser.add_argument("--iw-samples", type=int, default=1000, help="k of the log p(x) estimate [1000]")
    parser.add_argument("--seed", type=int, default=1, help="seed of every run [1]")
    parser.add_argument("--only", type=int, nargs="*", help="indices of the variants to run [all]")
    args = parser.parse_args(argv)
    import numpy as np

    import scratchvae as sv
    from scratchvae.data import load_dataset
    from scratchvae.inference.evaluate import active_units, elbo, log_likelihood
    from scratchvae.run import Run, TrainConfig, Trainer
    from scratchvae.run.cli import RUN_OPTIONS, build_parser

    rows, records = [], []
    data = load_dataset("fashion-mnist")
    for i, (label, extra) in enumerate(VARIANTS):
        if args.only and i not in args.only:
            continue
        cli_args = ["train", "--dataset", "fashion-mnist", "--epochs", str(args.epochs), "--seed", str(args.seed),
                    *extra]
        ns = build_parser().parse_args(cli_args)
        config = TrainConfig(**{k: getattr(ns, k) for k in (*RUN_OPTIONS, "epochs") if getattr(ns, k) is not None})
        run = Run(config, data, tempfile.mkdtemp())
        trainer = Trainer(run, quiet=True)
        trainer.fit()
        seconds = sum(r["seconds"] for r in run.history)
        x_test = run.x_test
        rng = np.random.default_rng(0)
        test = elbo(run.model, x_test, rng)
        log_px = log_likelihood(run.model, x_test, args.iw_samples, rng).mean()
        units, _ = active_units(run.model, x_test)
        command = "scratchvae " + " ".join(cli_args) + f" --out runs/v{i}; scratchvae evaluate runs/v{i} " \
                  f"--iw-samples {args.iw_samples}"
        rows.append([label, f"{test['total']:.2f}", f"{test['nll']:.2f}", f"{test['kl']:.2f}", f"{log_px:.2f}",
                     f"{units}/{config.latent_dim}", f"{seconds:.0f}", f"`{command}`"])
        records.append({"variant": label, "command": command, "test": test, "log_px": log_px,
                        "active_units": units, "train_seconds": seconds, "history": run.history})
        print(" | ".join(rows[-1][:7]), flush=True)
    print()
    print(common.markdown_table(["variant", "test -ELBO", "reconstruction", "KL",
                                 f"log p(x), k={args.iw_samples}", "active units", "train s", "command"],
                                rows, "lrrrrrrl"))
    json_path = common.output_path(args, "results_table")
    common.write_json(json_path, {"benchmark": "results_table", "when": common.now_iso(),
                                  "machine": common.machine_info(), "blas": common.blas_info(), "kernels": sv.describe(),
                                  "epochs": args.epochs, "iw_samples": args.iw_samples, "rows": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
