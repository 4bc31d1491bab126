"""The classic VAE pictures, as PNG files (Matplotlib, imported only here).

Each function takes a model (and data) and a path, draws one figure and
returns the path. Images are shown with 0 = white, 1 = black ink. A figure
is rendered in memory and then written atomically (:mod:`scratchvae.atomic`):
a full disk leaves the previous picture, never an empty or cut one.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..atomic import write_bytes

#: the pictures of a run directory, ``<kind>.png`` (:func:`all_pictures` draws those that apply)
KINDS = ("reconstructions", "samples", "manifold", "latent", "curves")
PICTURES = tuple(f"{kind}.png" for kind in KINDS)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only), or an ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need Matplotlib: pip install 'scratchvae[plot]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def tile(images: np.ndarray, image_shape, cols: int, pad: int = 1) -> np.ndarray:
    """Arrange (n, h*w) images into one (rows*(h+pad), cols*(w+pad)) array."""
    h, w = image_shape
    n = len(images)
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
               pad + c * (w + pad):pad + c * (w + pad) + w] = img.reshape(h, w)
    return canvas


def save(fig, path, dpi: int = 100) -> Path:
    """Lay out, write (atomically, in the format the suffix names) and close a
    Matplotlib figure; returns the path."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    finally:
        pyplot().close(fig)
    return write_bytes(path, buffer.getvalue())


def _grid_figure(canvas, title):
    """A figure sized to a (height, width) canvas of pixels in [0, 1], shown 0 = white; (fig, ax)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 40 + 0.5, canvas.shape[0] / 40 + 0.8))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    return fig, ax


def _save_grid(canvas, path, title):
    fig, ax = _grid_figure(canvas, title)
    ax.axis("off")
    return save(fig, path)


def reconstructions(model, x: np.ndarray, image_shape, path, n: int = 16, c=None):
    """Originals (odd rows) above their reconstructions E[x | z = mu(x)] (even rows);
    ``c``: the contexts of x for a conditional model."""
    x, c = x[:n], None if c is None else c[:n]
    mu, _ = model.encode(x, c)
    recon = model.decode(mu, c)
    cols = min(n, 8)
    pairs = []
    for start in range(0, len(x), cols):
        pairs += list(x[start:start + cols]) + list(recon[start:start + cols])
    return _save_grid(tile(np.array(pairs), image_shape, cols), path,
                      "originals (odd rows) and reconstructions (even rows)")


def image_grid(images: np.ndarray, image_shape, path, title: str = "", cols: Optional[int] = None):
    """(n, h*w) images in a grid of ``cols`` columns (near-square by default)."""
    cols = cols or int(math.ceil(math.sqrt(len(images))))
    return _save_grid(tile(images, image_shape, cols), path, title)


def samples(model, rng, image_shape, path, n: int = 64):
    """A grid of E[x | z] for z drawn from the prior (N(0, I), or the VampPrior)."""
    prior = "N(0, I)" if model.prior == "standard" else "the VampPrior"
    return image_grid(model.sample(n, rng), image_shape, path, f"{n} samples: z ~ {prior}, decoded mean")


def class_samples(model, rng, image_shape, path, per_class: int = 10):
    """A conditional model's samples, one row per class: z ~ N(0, I), c = one-hot(row)."""
    from ..model.layers import one_hot
    n_classes = model.context_dim
    labels = np.repeat(np.arange(n_classes), per_class)
    x = model.sample(len(labels), rng, c=one_hot(labels, n_classes, model.dtype))
    return image_grid(x, image_shape, path, f"samples given the label, one row per class 0-{n_classes - 1}",
                      cols=per_class)


def latent_space(model, x: np.ndarray, labels: Optional[np.ndarray], path, c=None, box=None):
    """The posterior means of ``x`` (n, d), coloured by the (n,) ``labels``; a PCA projection when k > 2.

    ``box``: ((z1_min, z1_max), (z2_min, z2_max)), in latent units, drawn as a dashed
    rectangle: the region the manifold picture shows (2-D latent only).
    """
    if box is not None and model.latent_dim != 2:
        raise ValueError(f"a box needs a 2-D latent space; this model has {model.latent_dim}")
    plt = pyplot()
    mu, _ = model.encode(x, c)
    mu = mu.astype(np.float64)
    if mu.shape[1] > 2:
        centred = mu - mu.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points, axes = centred @ vt[:2].T, ("PC 1 of mu", "PC 2 of mu")
    elif mu.shape[1] == 2:
        points, axes = mu, ("z1 (mean)", "z2 (mean)")
    else:
        points, axes = np.column_stack([mu[:, 0], np.zeros(len(mu))]), ("z (mean)", "")
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(points[:, 0], points[:, 1], c=labels if labels is not None else "k",
                    cmap="tab10" if labels is not None else None, s=3, alpha=0.7)
    if labels is not None:
        fig.colorbar(sc, ax=ax, ticks=np.unique(labels), label="label")
    if box is not None:
        (x0, x1), (y0, y1) = box
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "--", color="0.3", lw=1)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(f"latent space ({model.latent_dim}-D posterior means)"
                 + ("\ndashed: the grid of the manifold picture" if box is not None else ""))
    return save(fig, path)


def normal_ppf(p: np.ndarray) -> np.ndarray:
    """Inverse CDF of N(0, 1) by bisection on erf (exact to 1e-12; for plotting grids)."""
    p = np.asarray(p, dtype=np.float64)
    if not np.all((p > 0) & (p < 1)):
        raise ValueError("probabilities must lie strictly between 0 and 1")
    erf = np.vectorize(math.erf)
    lo, hi = np.full(p.shape, -40.0), np.full(p.shape, 40.0)
    for _ in range(80):
        mid = (lo + hi) / 2
        below = 0.5 * (1 + erf(mid / math.sqrt(2))) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def manifold_grid(n: int = 20, mu: Optional[np.ndarray] = None, pad: float = 0.05) -> np.ndarray:
    """The (2, n) latent values of the manifold picture, in latent units: row 0 the
    z1 of its columns, row 1 the z2 of its rows, each ascending and evenly spaced.

    Without ``mu``: the prior quantiles ``Phi^-1(linspace(0.05, 0.95, n))`` on both
    axes (z in about [-1.64, 1.64]). With the (m, 2) posterior means ``mu``: each axis
    spans the means' range, widened by ``pad`` times that range on either side, so
    the grid covers every point of the latent map.
    """
    if mu is None:
        return np.tile(normal_ppf(np.linspace(0.05, 0.95, n)), (2, 1))
    lo, hi = np.min(mu, axis=0).astype(np.float64), np.max(mu, axis=0).astype(np.float64)
    lo, hi = lo - pad * (hi - lo), hi + pad * (hi - lo)
    return np.linspace(lo, hi, n, axis=1)


def manifold(model, image_shape, path, n: int = 20, mu: Optional[np.ndarray] = None):
    """Decoded means on an n x n grid of a 2-D latent space (Kingma and Welling 2014,
    fig. 4): z1 rises to the right, z2 upwards, at :func:`manifold_grid`'s values: the
    prior's central 90% by default, the range of the (m, 2) posterior means ``mu`` if given.
    A few tiles are labelled on the axes with their z1 and z2."""
    if model.latent_dim != 2:
        raise ValueError(f"the manifold picture needs a 2-D latent space; this model has {model.latent_dim}")
    z1, z2 = manifold_grid(n, mu)
    z = np.array([[z1[j], z2[n - 1 - i]] for i in range(n) for j in range(n)], dtype=model.dtype)
    where = "the posterior means' range, padded" if mu is not None else "the prior's 5%-95% quantiles"
    fig, ax = _grid_figure(tile(model.decode(z), image_shape, n),
                           f"learned manifold: decoded means on a {n} x {n} grid\n"
                           f"z1 in [{z1[0]:.2f}, {z1[-1]:.2f}], z2 in [{z2[0]:.2f}, {z2[-1]:.2f}] ({where})")
    h, w = image_shape
    ticks = np.unique(np.linspace(0, n - 1, min(n, 5)).round().astype(int))    # first, last, three between
    # tile k of a row or column covers pixels 1 + k * (side + 1) ... k * (side + 1) + side (see tile)
    ax.set_xticks(1 + ticks * (w + 1) + (w - 1) / 2, [f"{z1[j]:.1f}" for j in ticks])
    ax.set_yticks(1 + ticks * (h + 1) + (h - 1) / 2, [f"{z2[n - 1 - i]:.1f}" for i in ticks])
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
    return save(fig, path)


def curves(history: Sequence[dict], path):
    """Training and test losses (nats per example) by epoch: -ELBO, reconstruction
    and KL for a VAE; the loss and the test accuracy of q(y|x) for M2."""
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    if "train_nll" in history[0]:
        panels = [(part, title) for part, title in (("total", "-ELBO (total)"), ("nll", "reconstruction (nll)"),
                                                    ("kl", "KL"))]
    else:
        panels = [("total", "M2 loss"), ("accuracy", "accuracy of q(y|x)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (part, title) in zip(axes, panels):
        for split, marker in (("train", "o-"), ("test", "s-")):
            if f"{split}_{part}" in history[0]:
                ax.plot(epochs, [r[f"{split}_{part}"] for r in history], marker, label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("fraction of the test set" if part == "accuracy" else "nats per example")
        ax.legend()
    return save(fig, path)


def all_pictures(model, data, history, out_dir, rng, c_test=None, context: str = "none") -> list:
    """Every picture that applies to this model, written into ``out_dir``.

    A conditional model needs the test set's contexts ``c_test`` and what it
    is conditioned on (``context``, a run's ``config.context``): with labels
    its samples are drawn one row per class; a completion model
    (``mask:KIND``) has no samples picture (``scratchvae complete`` draws its
    completions). The latent map shows the posterior means of up to 5,000 test
    examples; the manifold (2-D latent) spans their range, outlined on the map.
    """
    path = {kind: Path(out_dir) / f"{kind}.png" for kind in KINDS}
    shape = data.image_shape
    n = min(5000, len(data.x_test))
    x, c = data.x_test[:n], None if c_test is None else c_test[:n]
    written, box = [], None
    if shape is not None:
        written.append(reconstructions(model, data.x_test, shape, path["reconstructions"], c=c_test))
        if context == "label":
            written.append(class_samples(model, rng, shape, path["samples"]))
        elif not model.context_dim:
            written.append(samples(model, rng, shape, path["samples"]))
            if model.latent_dim == 2:                 # the manifold spans the latent map's points
                mu = model.encode(x)[0]
                written.append(manifold(model, shape, path["manifold"], mu=mu))
                box = manifold_grid(mu=mu)[:, [0, -1]]
    written.append(latent_space(model, x, None if data.y_test is None else data.y_test[:n],
                                path["latent"], c, box=box))
    if history:
        written.append(curves(history, path["curves"]))
    return written


def posterior(grid: dict, image, image_shape, path, title: str = ""):
    """The true posterior p(z|x) beside the encoder's q(z|x) of one example, from
    :func:`scratchvae.inference.exact.posterior_grid`, with the image itself.

    2-D latent: contours at the density's maximum times exp(-r^2 / 2), r = 1, 2, 3 (the
    1-, 2-, 3-standard-deviation ellipses for a Gaussian), q's mean marked in both
    panels; 1-D latent: both densities as curves.
    """
    plt = pyplot()
    axes = grid["axes"]
    panels = 1 + (len(axes) == 2) + (image_shape is not None)
    fig, ax = plt.subplots(1, panels, figsize=(4 * panels, 3.8), squeeze=False)
    ax = list(ax[0])
    if image_shape is not None:
        ax[0].imshow(np.reshape(image, image_shape), cmap="gray_r", vmin=0, vmax=1)
        ax[0].set_title("x")
        ax[0].axis("off")
        ax = ax[1:]
    if len(axes) == 1:
        ax[0].plot(axes[0], np.exp(grid["log_posterior"]), label="p(z|x), by quadrature")
        ax[0].plot(axes[0], np.exp(grid["log_q"]), "--", label="q(z|x), the encoder's")
        ax[0].set_xlabel("z")
        ax[0].set_ylabel("density")
        ax[0].legend(fontsize=8)
    else:
        for a, key, name in zip(ax, ("log_posterior", "log_q"), ("true posterior p(z|x)", "encoder's q(z|x)")):
            log_density = grid[key].T                     # contour wants (y, x)
            top = log_density.max()
            a.contour(axes[0], axes[1], log_density, levels=[top - 4.5, top - 2, top - 0.5],
                      colors=["#9ecae1", "#4292c6", "#08306b"])
            a.plot(*grid["mu"], "+", color="crimson", label="mean of q")
            a.set_title(name)
            a.set_xlabel("z1")
            a.set_ylabel("z2")
            a.legend(fontsize=8, loc="lower right")
        ax[1].set_xlim(ax[0].get_xlim())
        ax[1].set_ylim(ax[0].get_ylim())
    if len(axes) == 2:
        title += "\ncontours at exp(-r^2/2) of each density's peak, r = 1, 2, 3"
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
