"""The small models the chapters' scripts train, made in one place (seeded, on the built-in digits)."""
import argparse

import numpy as np

import scratchvae as sv
from scratchvae.data import load_dataset
from scratchvae.run import plots


def train(latent: int, n: int = 20_000, epochs: int = 5, step=None, seed: int = 0, **model_options):
    """(model, data): 784-400-latent trained by Adam on the first n training digits, batch 128.

    ``step(model, batch, rng) -> (losses, grads)`` sets the objective (default: the ELBO);
    ``model_options`` go to :class:`scratchvae.VAE` (e.g. ``likelihood``, ``sigma``).
    """
    data = load_dataset("synthetic-digits")
    x = data.x_train[:n]
    model = sv.VAE(784, [400], latent, seed=seed, **model_options)
    opt = sv.Adam(model.params, lr=1e-3)
    rng = np.random.default_rng(seed)
    step = step or (lambda m, b, r: m.loss_and_grads(b, rng=r))
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 128):
            opt.step(step(model, x[idx], rng)[1])
    return model, data


def sweep_options(doc: str, out: str, argv=None) -> argparse.Namespace:
    """The options of a sweep script (``doc`` its docstring): ``--out``, its PNG, and ``--epochs``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=out, help="PNG file to write")
    parser.add_argument("--epochs", type=int, default=4, help="epochs over 10,000 images [4]")
    return parser.parse_args(argv)


def reconstructions_and_samples(model, x, n: int = 8) -> list:
    """Two rows of a sweep's picture: the decoded means of the first n images' codes, and of n prior draws."""
    prior = np.random.default_rng(2).standard_normal((n, model.latent_dim), model.dtype)
    return [model.decode(model.encode(x[:n])[0]), model.decode(prior)]


def sweep_picture(rows, image_shape, path, name: str, values):
    """The picture of a sweep over ``name``: per value, reconstructions above samples from the prior."""
    title = f"per {name} (" + ", ".join(f"{v:g}" for v in values) + "): reconstructions, then samples from the prior"
    return plots.image_grid(np.clip(np.concatenate(rows), 0, 1), image_shape, path, title, cols=8)
