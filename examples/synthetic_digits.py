"""Write a PNG grid of the built-in synthetic-digits data set.

One row per class (0 at the top), ``--cols`` examples per row, drawn with
``scratchvae.data.synthetic.synthetic_digits``. Needs Matplotlib
(``pip install matplotlib``) only for writing the PNG.

    python examples/synthetic_digits.py --out synthetic_digits.png

(with scratchvae installed, ``pip install -e .``, or ``PYTHONPATH=.``).
"""

import argparse
import time

import numpy as np

from scratchvae.data.synthetic import synthetic_digits


def grid(images, labels, cols):
    """Tile ``cols`` images of each class into one (10*h, cols*w) array."""
    h, w = images.shape[1:]
    out = np.ones((10 * (h + 1) + 1, cols * (w + 1) + 1), dtype=np.float32)
    for c in range(10):
        picks = np.flatnonzero(labels == c)[:cols]
        for j, i in enumerate(picks):
            r0, c0 = 1 + c * (h + 1), 1 + j * (w + 1)
            out[r0:r0 + h, c0:c0 + w] = images[i]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="synthetic_digits.png")
    parser.add_argument("--cols", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    images, labels = synthetic_digits(20 * args.cols, seed=args.seed, size=args.size)
    print(f"drew {len(images)} images in {time.perf_counter() - start:.3f} s")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles = grid(images, labels, args.cols)
    fig, ax = plt.subplots(figsize=(args.cols * 0.75, 10 * 0.75 + 0.4), dpi=100)
    # MNIST convention: 1 is ink; show ink white on black
    ax.imshow(tiles, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"synthetic-digits, seed {args.seed}, one row per class")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
