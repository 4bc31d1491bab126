"""One full training epoch of Fashion-MNIST: 60,000 shuffled examples in
batches of 128, with the data pipeline (shuffle, gather into the batch
buffer) and the optimizer, for each kernel backend; evaluation excluded.

Needs the data (``$SCRATCHVAE_DATA/fashion-mnist`` or another place
``scratchvae datasets`` finds). Alternates backends over --rounds, reports
median and min-max wall seconds per epoch, prints Markdown, writes JSON.

    python benchmarks/epoch.py [--rounds 3] [--save]
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main(argv=None) -> int:
    parser = common.parser(__doc__, "epoch", threads="BLAS/Numba threads")
    parser.add_argument("--dataset", default="fashion-mnist",
                        help="a named data set, as `scratchvae datasets` lists them [fashion-mnist]")
    parser.add_argument("--rounds", type=int, default=3, help="epochs per backend, alternating [3]")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per step [128]")
    parser.add_argument("--backends", default="numpy,numba", help="comma-separated [numpy,numba]")
    args = parser.parse_args(argv)
    common.apply_thread_env(args.threads)

    import scratchvae as sv
    from scratchvae.data import load_dataset
    from scratchvae.run import Run, TrainConfig, Trainer

    data = load_dataset(args.dataset)
    config = TrainConfig(dataset=args.dataset, epochs=1, batch_size=args.batch_size)
    backends = args.backends.split(",")
    seconds = {b: [] for b in backends}
    for r in range(args.rounds):
        for b in common.rotated(backends, r):
            sv.set_backend(b)
            sv.warmup()
            trainer = Trainer(Run(config, data, tempfile.mkdtemp()), quiet=True)
            trainer.train_epoch()
            seconds[b].append(trainer.run.sums["seconds"])
    results = {b: common.summarize(v) for b, v in seconds.items()}
    rows = [[b, f"{s['median']:.2f}", f"{s['min']:.2f}-{s['max']:.2f}",
             common.fmt_rate(len(data.x_train) / s["median"])] for b, s in results.items()]
    print(common.markdown_table(["backend", "epoch s (median)", "min-max", "examples/s"], rows, "lrrr"))
    json_path = common.output_path(args, "epoch")
    common.write_json(json_path, {"benchmark": "epoch", "when": common.now_iso(), "dataset": args.dataset,
                                  "batch_size": args.batch_size, "machine": common.machine_info(), "blas": common.blas_info(),
                                  "threads": common.thread_env(args.threads), "kernels": sv.describe(),
                                  "seconds": seconds, "results": results})
    print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
