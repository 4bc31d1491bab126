"""Semi-supervised Fashion-MNIST: test accuracy of M2's classifier q(y|x)
against the same classifier network trained on the labelled examples alone.

100 labels per class (1,000 in all, chosen by the seed), the other 59,000
training images unlabelled. Both get the same number of Adam steps. Mean and
spread over seeds.

    SCRATCHVAE_DATA=../shared/data python benchmarks/semisupervised.py [--seeds 1,2,3] [--epochs 10]
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main(argv=None) -> int:
    parser = common.parser(__doc__, "semisupervised")
    parser.add_argument("--seeds", type=common.integers(), default="1,2,3", help="comma-separated seeds [1,2,3]")
    parser.add_argument("--epochs", type=int, default=10, help="M2 epochs over the unlabelled set [10]")
    parser.add_argument("--labels-per-class", type=int, default=100, help="labels per class [100]")
    parser.add_argument("--alpha", type=float, default=10.0, help="weight of the labelled cross-entropy [10]")
    args = parser.parse_args(argv)
    import numpy as np

    import scratchvae as sv
    from scratchvae.data import load_dataset
    from scratchvae.inference.quality import train_supervised_only
    from scratchvae.run import Run, TrainConfig, Trainer

    data = load_dataset("fashion-mnist")
    runs = []
    for seed in args.seeds:
        start = time.perf_counter()
        config = TrainConfig(dataset="fashion-mnist", semi_supervised=True, labels_per_class=args.labels_per_class,
                             epochs=args.epochs, seed=seed, alpha=args.alpha)
        run = Run(config, data, tempfile.mkdtemp())
        Trainer(run).fit()
        history = run.history
        m2_seconds = time.perf_counter() - start
        steps = args.epochs * -(-(len(data.x_train) - 10 * args.labels_per_class) // 128)
        start = time.perf_counter()
        baseline = train_supervised_only(data, args.labels_per_class, steps=steps, seed=seed)
        print(f"seed {seed}: M2 {history[-1]['test_accuracy']:.4f} ({m2_seconds:.0f} s), supervised only "
              f"{baseline:.4f} ({time.perf_counter() - start:.0f} s, {steps} steps)", flush=True)
        runs.append({"seed": seed, "m2": history[-1]["test_accuracy"], "supervised_only": baseline,
                     "m2_seconds": m2_seconds, "history": history})
    rows = []
    for key, label in (("m2", "M2 (labelled + unlabelled)"), ("supervised_only", "classifier on the labels alone")):
        values = [r[key] for r in runs]
        rows.append([label, f"{np.mean(values):.4f}", f"{min(values):.4f}-{max(values):.4f}",
                     ", ".join(f"{v:.4f}" for v in values)])
    print()
    seeds = ",".join(map(str, args.seeds))
    print(common.markdown_table(["model", "mean test accuracy", "min-max", f"seeds {seeds}"], rows, "lrrl"))
    json_path = common.output_path(args, "semisupervised")
    common.write_json(json_path, {"benchmark": "semisupervised", "when": common.now_iso(),
                                  "machine": common.machine_info(), "blas": common.blas_info(), "kernels": sv.describe(),
                                  "epochs": args.epochs, "labels_per_class": args.labels_per_class,
                                  "alpha": args.alpha, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
