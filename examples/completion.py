"""Fill in missing pixels with a VAE: pseudo-Gibbs against Metropolis-within-Gibbs.

    python examples/completion.py --out completion.png

Trains a plain VAE on the built-in synthetic digits, hides the bottom half
of test digits and fills it in with both samplers of ``scratchvae.complete``
and the two baselines; prints the error on the missing pixels and draws
originals, masked inputs and completions. ``scratchvae complete RUN --mask
bottom-half -o FILE.png`` does the same for a trained run.
"""
import argparse

import numpy as np

import scratchvae as sv
from scratchvae.run import plots
from scratchvae.inference.complete import Mask, compare
from scratchvae.data import load_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="completion.png", help="PNG file to write")
    parser.add_argument("--epochs", type=int, default=3, help="epochs over the data [3]")
    parser.add_argument("--n", type=int, default=10000, help="training images used [10000]")
    parser.add_argument("--mask", default="bottom-half", help="bottom-half, block or random:P [bottom-half]")
    args = parser.parse_args(argv)

    data = load_dataset("synthetic-digits")
    x = data.x_train[:args.n]
    model = sv.VAE(784, [400], 8, seed=0)
    opt = sv.Adam(model.params, lr=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(args.epochs):
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 128):
            opt.step(model.loss_and_grads(x[idx], rng=rng)[1])
    test = data.x_test[:100]
    missing = Mask.parse(args.mask).sample(rng, len(test), (28, 28))
    results = compare(model, x, test, missing, rng, steps=100, burn_in=40)
    print(f"error on the missing pixels of {len(test)} test digits, mask {args.mask}:")
    for name, (_, err, note) in results.items():
        print(f"  {name:26s} BCE {err['bce']:.4f} nats/pixel   MSE {err['mse']:.4f}  {note}")
    rows = [test[:10], np.where(missing[:10], 0.5, test[:10])] + [done[:10] for done, _, _ in results.values()]
    path = plots.image_grid(np.concatenate(rows), (28, 28), args.out,
                            "rows: original, masked, " + ", ".join(results), cols=10)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
