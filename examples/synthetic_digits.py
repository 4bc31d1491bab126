"""Write a PNG grid of the built-in synthetic-digits data set, one row per class.

    python examples/synthetic_digits.py --out synthetic_digits.png

Each image is drawn by ``scratchvae.data.synthetic_digits`` from pen strokes
with random slant, rotation, scale, thickness and jitter. Needs Matplotlib
(``pip install 'scratchvae[plot]'``) for the PNG.
"""
import argparse
import time

import numpy as np

from scratchvae.run import plots
from scratchvae.data import synthetic_digits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="synthetic_digits.png", help="PNG file to write")
    parser.add_argument("--cols", type=int, default=16, help="examples per class (row)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawing")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    images, labels = synthetic_digits(20 * args.cols, seed=args.seed, size=args.size)
    print(f"drew {len(images)} images in {time.perf_counter() - start:.3f} s")
    rows = [images[np.flatnonzero(labels == c)[:args.cols]] for c in range(10)]
    flat = np.concatenate(rows).reshape(-1, args.size * args.size)
    plots.image_grid(flat, (args.size, args.size), args.out,
                     f"synthetic-digits, seed {args.seed}, one row per class", cols=args.cols)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
