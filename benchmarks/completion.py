"""Data completion on Fashion-MNIST: error on the missing pixels of test
images for each mask and method, against two baselines.

Trains (reference architecture, 10 epochs, seed 1) one plain VAE, completed
by pseudo-Gibbs and Metropolis-within-Gibbs, and one conditional VAE per
mask with the observed part as context (`--conditional mask:KIND`); scores
them and the baselines (training mean image, nearest training image on the
observed pixels) on the first N test images, each with a seeded mask.

    SCRATCHVAE_DATA=../shared/data python benchmarks/completion.py [--epochs 10] [--n 1000]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MASKS = ("bottom-half", "block", "random:0.5")


def main(argv=None) -> int:
    parser = common.parser(__doc__, "completion")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per model [10]")
    parser.add_argument("--n", type=int, default=1000, help="test images scored per mask [1000]")
    parser.add_argument("--steps", type=int, default=200, help="Gibbs iterations [200]")
    parser.add_argument("--seed", type=int, default=1, help="seed of training, masks and chains [1]")
    args = parser.parse_args(argv)
    import numpy as np

    import scratchvae as sv
    from scratchvae.data import load_dataset
    from scratchvae.inference.complete import Mask, compare
    from scratchvae.run import Run, TrainConfig, Trainer

    data = load_dataset("fashion-mnist")

    def train(conditional):
        config = TrainConfig(dataset="fashion-mnist", epochs=args.epochs, seed=args.seed, conditional=conditional)
        start = time.perf_counter()
        trainer = Trainer(Run(config, data, tempfile.mkdtemp()), quiet=True)
        trainer.fit()
        print(f"trained {conditional}: test -ELBO {trainer.run.history[-1]['test_total']:.2f} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        return trainer.run.model

    plain = train("none")
    x = data.x_test[:args.n]
    rows, records = [], []
    for kind in MASKS:
        cvae = train(f"mask:{kind}")
        missing = Mask.parse(kind).sample(np.random.default_rng(args.seed), len(x), data.image_shape)
        results = compare(plain, data.x_train, x, missing, np.random.default_rng(args.seed), args.steps)
        results.update({k: v for k, v in compare(cvae, data.x_train, x, missing, np.random.default_rng(args.seed))
                        .items() if k == "conditional VAE"})
        for method, (_, err, note) in results.items():
            rows.append([kind, method, f"{err['bce']:.4f}", f"{err['mse']:.4f}", note])
            records.append({"mask": kind, "method": method, **err, "note": note})
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(common.markdown_table(["mask", "method", "BCE (nats/pixel)", "MSE", ""], rows, "llrrl"))
    json_path = common.output_path(args, "completion")
    common.write_json(json_path, {"benchmark": "completion", "when": common.now_iso(),
                                  "machine": common.machine_info(), "blas": common.blas_info(), "kernels": sv.describe(),
                                  "epochs": args.epochs, "n": args.n, "steps": args.steps, "seed": args.seed,
                                  "rows": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
