"""The pictures: what each figure holds, the PNG it writes, ``tile`` and ``normal_ppf``.

The figures are checked through their content, not just their files: every
``savefig`` is recorded, and the image or points drawn are compared with
what the model computes independently.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from blockers import block_imports

import scratchvae as sv
from scratchvae.run import plots
from scratchvae.data.datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------
# Without Matplotlib: tile and normal_ppf work, every picture says how to install it
# ----------------------------------------------------------------------

def test_tile_places_each_image_in_its_cell():
    # three 1x2 images in two columns, one pixel of padding
    images = np.array([[1, 2], [3, 4], [5, 6]], dtype=float)
    expected = np.array([[0, 0, 0, 0, 0, 0, 0],
                         [0, 1, 2, 0, 3, 4, 0],
                         [0, 0, 0, 0, 0, 0, 0],
                         [0, 5, 6, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0, 0]], dtype=float)
    np.testing.assert_array_equal(plots.tile(images, (1, 2), cols=2), expected)
    # 2x1 images (a column each), no padding: row-major reshape, side by side
    np.testing.assert_array_equal(plots.tile(images, (2, 1), cols=3, pad=0),
                                  [[1, 3, 5], [2, 4, 6]])
    np.testing.assert_array_equal(plots.tile(images, (2, 1), cols=1, pad=0),
                                  [[1], [2], [3], [4], [5], [6]])


def test_tile_general_layout():
    rng = np.random.default_rng(0)
    h, w, n, cols, pad = 3, 5, 7, 3, 2
    images = rng.random((n, h * w))
    canvas = plots.tile(images, (h, w), cols, pad)
    rows = 3
    assert canvas.shape == (rows * (h + pad) + pad, cols * (w + pad) + pad)
    mask = np.zeros(canvas.shape, bool)
    for i in range(n):
        r, c = i // cols, i % cols
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        np.testing.assert_array_equal(canvas[top:top + h, left:left + w], images[i].reshape(h, w))
        mask[top:top + h, left:left + w] = True
    assert np.all(canvas[~mask] == 0)              # padding and the two empty cells


def test_normal_ppf_known_quantiles():
    assert plots.normal_ppf(0.5) == pytest.approx(0.0, abs=1e-9)
    assert plots.normal_ppf(0.975) == pytest.approx(1.959963984540054, abs=1e-9)
    assert plots.normal_ppf(0.05) == pytest.approx(-1.6448536269514729, abs=1e-9)
    assert plots.normal_ppf(0.001) == pytest.approx(-3.090232306167813, abs=1e-9)


def test_normal_ppf_matches_the_standard_library_and_keeps_shape():
    p = np.linspace(0.01, 0.99, 99).reshape(9, 11)
    q = plots.normal_ppf(p)
    assert q.shape == (9, 11)
    ref = np.vectorize(NormalDist().inv_cdf)(p)
    np.testing.assert_allclose(q, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(q, -q[::-1, ::-1], atol=1e-12)     # symmetric about 1/2
    assert np.all(np.diff(q.ravel()) > 0)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), [0.2, 1.0]])
def test_normal_ppf_refuses_probabilities_outside_0_1(bad):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        plots.normal_ppf(bad)


def test_without_matplotlib_every_picture_asks_for_it(tmp_path):
    script = block_imports("matplotlib") + textwrap.dedent("""
        import numpy as np
        import scratchvae as sv
        from scratchvae.run import plots
        from scratchvae.data.datasets import Dataset
        rng = np.random.default_rng(0)
        x = rng.random((20, 4), dtype=np.float32)
        data = Dataset("t", x, None, x, None, (2, 2))
        model = sv.VAE(4, [3], 2)
        history = [{"epoch": 1, **{f"{s}_{p}": 1.0 for s in ("train", "test") for p in ("total", "nll", "kl")}}]
        calls = {
            "reconstructions": lambda: plots.reconstructions(model, x, (2, 2), "a.png"),
            "image_grid": lambda: plots.image_grid(x, (2, 2), "b.png"),
            "samples": lambda: plots.samples(model, rng, (2, 2), "c.png"),
            "latent_space": lambda: plots.latent_space(model, x, None, "d.png"),
            "manifold": lambda: plots.manifold(model, (2, 2), "e.png"),
            "curves": lambda: plots.curves(history, "f.png"),
            "all_pictures": lambda: plots.all_pictures(model, data, history, ".", rng),
        }
        for name, call in calls.items():
            try:
                call()
            except ImportError as e:
                print(name, "ImportError", "pip install" in str(e), "matplotlib" in str(e).lower())
            else:
                print(name, "no error")
        print("tile", plots.tile(x[:3], (2, 2), 3).shape)
        print("ppf", round(float(plots.normal_ppf(0.975)), 6))
        print("imported", any(m.split(".")[0] == "matplotlib" for m in sys.modules))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in ("reconstructions", "image_grid", "samples", "latent_space", "manifold", "curves",
                 "all_pictures"):
        assert f"{name} ImportError True True" in lines, r.stdout
    assert "tile (4, 10)" in lines
    assert "ppf 1.959964" in lines
    assert "imported False" in lines
    assert not list(tmp_path.glob("*.png"))


# ----------------------------------------------------------------------
# With Matplotlib
# ----------------------------------------------------------------------

def _train(model, x, steps=150, seed=0):
    """A few Adam steps, so the pictures show something learned."""
    rng = np.random.default_rng(seed)
    opt = sv.Adam(model.params, lr=1e-2)
    for _ in range(steps):
        batch = x[rng.integers(0, len(x), 64)]
        _, grads = model.loss_and_grads(batch, rng=rng)
        opt.step(grads)
    return model


@pytest.fixture(scope="module")
def mpl():
    return pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def models(mpl):
    """Models trained briefly on 6x6 images like conftest's tiny_data, keyed by latent size."""
    rng = np.random.default_rng(1)
    protos = np.zeros((4, 6, 6), np.float32)
    protos[0, :, 1] = protos[1, 2, :] = 1
    protos[2, :3, :3] = protos[3, 3:, 3:] = 1
    x = protos[rng.integers(0, 4, 600)].reshape(600, 36) * 0.9 + 0.05
    return {k: _train(sv.VAE(36, [16], k, seed=k), x) for k in (1, 2, 3)}


@pytest.fixture
def figures(mpl, monkeypatch):
    """Every Figure that is saved, in order (still inspectable after plt.close)."""
    from matplotlib.figure import Figure
    saved = []
    original = Figure.savefig

    def record(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", record)
    return saved


def assert_png(path):
    import matplotlib.image
    path = Path(path)
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels[..., :3].std() > 0.01, f"{path} is blank"
    return pixels


def drawn_image(fig):
    (ax,) = fig.axes
    (im,) = ax.images
    return np.asarray(im.get_array()), ax.get_title()


def test_image_grid(tmp_path, figures):
    images = np.random.default_rng(0).random((10, 6))
    out = plots.image_grid(images, (2, 3), tmp_path / "grid.png", "ten images")
    assert out == tmp_path / "grid.png"
    assert_png(out)
    canvas, title = drawn_image(figures[-1])
    assert title == "ten images"
    np.testing.assert_array_equal(canvas, plots.tile(images, (2, 3), 4))   # ceil(sqrt(10)) columns
    plots.image_grid(images, (2, 3), tmp_path / "wide.png", cols=5)
    np.testing.assert_array_equal(drawn_image(figures[-1])[0], plots.tile(images, (2, 3), 5))
    assert_png(tmp_path / "wide.png")


@pytest.mark.parametrize("n", [16, 5])
def test_reconstructions_alternate_originals_and_reconstructions(tmp_path, figures, tiny_data, models, n):
    model, x = models[2], tiny_data.x_test
    out = plots.reconstructions(model, x, (6, 6), tmp_path / "rec.png", n=n)
    assert_png(out)
    canvas, title = drawn_image(figures[-1])
    assert "originals" in title and "reconstructions" in title
    cols = min(n, 8)
    recon = model.decode(model.encode(x[:n])[0])
    expected = []
    for start in range(0, n, cols):          # a row of originals, then the same ones rebuilt
        expected += list(x[start:start + cols]) + list(recon[start:start + cols])
    np.testing.assert_array_equal(canvas, plots.tile(np.array(expected), (6, 6), cols))
    # the picture is worth drawing: a trained model rebuilds better than a mean image
    assert np.abs(recon - x[:n]).mean() < np.abs(x[:n].mean(0) - x[:n]).mean()


def test_samples_are_decoded_prior_draws(tmp_path, figures, models):
    model = models[2]
    out = plots.samples(model, np.random.default_rng(7), (6, 6), tmp_path / "s.png", n=12)
    assert_png(out)
    canvas, title = drawn_image(figures[-1])
    assert title.startswith("12 samples")
    expected = model.sample(12, np.random.default_rng(7))
    np.testing.assert_array_equal(canvas, plots.tile(expected, (6, 6), 4))


def test_samples_of_a_vampprior_model_are_drawn_from_it(tmp_path, figures):
    model = sv.VAE(36, [8], 2, seed=1, prior="vamp", pseudo_inputs=3)
    plots.samples(model, np.random.default_rng(7), (6, 6), tmp_path / "s.png", n=4)
    canvas, title = drawn_image(figures[-1])
    assert "VampPrior" in title and "N(0, I)" not in title
    np.testing.assert_array_equal(canvas, plots.tile(model.sample(4, np.random.default_rng(7)), (6, 6), 2))


def test_manifold_grid_defaults_to_the_prior_quantiles():
    grid = plots.manifold_grid(5)
    q = [NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, 5)]
    assert grid.shape == (2, 5)
    np.testing.assert_allclose(grid, [q, q], atol=1e-9)


@pytest.mark.parametrize("pad", [0.0, 0.05, 0.5])
def test_manifold_grid_spans_the_posterior_means_padded(pad):
    mu = np.random.default_rng(0).normal([3.0, -1.0], [2.0, 0.5], (300, 2)).astype(np.float32)
    lo, hi = mu.min(0).astype(float), mu.max(0).astype(float)
    grid = plots.manifold_grid(7, mu, pad)
    assert grid.shape == (2, 7)
    np.testing.assert_allclose(grid[:, 0], lo - pad * (hi - lo), rtol=1e-12)
    np.testing.assert_allclose(grid[:, -1], hi + pad * (hi - lo), rtol=1e-12)
    assert np.allclose(np.diff(grid, axis=1), (grid[:, -1:] - grid[:, :1]) / 6, rtol=1e-9)    # evenly spaced
    # far wider than the prior's central 90% the old grid showed, on z1
    assert grid[0, 0] < -1.65 and grid[0, -1] > 1.65


def _ticks(axis):
    """(positions, values) of an axis's labelled ticks."""
    return axis.get_ticklocs(), [float(t.get_text()) for t in axis.get_ticklabels()]


@pytest.mark.parametrize("spread", [None, 3.0])
def test_manifold_decodes_its_grid_and_labels_tiles_with_z(tmp_path, figures, models, spread):
    """Without means the prior's quantiles; with means (here spread over +-3) their padded range."""
    model, n = models[2], 5
    mu = None if spread is None else np.random.default_rng(0).uniform(-spread, spread, (50, 2))
    out = plots.manifold(model, (6, 6), tmp_path / "m.png", n=n, mu=mu)
    assert_png(out)
    fig = figures[-1]
    canvas, title = drawn_image(fig)
    z1, z2 = plots.manifold_grid(n, mu)
    assert "manifold" in title
    assert f"z1 in [{z1[0]:.2f}, {z1[-1]:.2f}], z2 in [{z2[0]:.2f}, {z2[-1]:.2f}]" in title
    assert ("quantiles" in title) == (mu is None)
    for i in range(n):                  # row i from the top: z2 falls; column j: z1 rises
        for j in range(n):
            z = np.array([[z1[j], z2[n - 1 - i]]], dtype=np.float32)
            cell = canvas[1 + i * 7:1 + i * 7 + 6, 1 + j * 7:1 + j * 7 + 6]
            np.testing.assert_allclose(cell, model.decode(z).reshape(6, 6), atol=1e-6)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z1", "z2")
    for axis, values in ((ax.xaxis, z1), (ax.yaxis, z2[::-1])):          # rows: z2 falls downwards
        positions, labels = _ticks(axis)
        assert len(positions) == n                     # n = 5: every tile is labelled
        tiles = (positions - 3.5) / 7                  # a 6-pixel tile's centre, then 7 pixels on
        np.testing.assert_allclose(tiles, np.arange(n))
        np.testing.assert_allclose(labels, values, rtol=0, atol=0.05 + 1e-9)     # to one decimal


def test_manifold_labels_a_few_tiles_of_a_large_grid(tmp_path, figures, models):
    plots.manifold(models[2], (6, 6), tmp_path / "m.png", n=20)
    (ax,) = figures[-1].axes
    z1, z2 = plots.manifold_grid(20)
    positions, labels = _ticks(ax.xaxis)
    tiles = np.round((positions - 3.5) / 7).astype(int)
    assert 3 <= len(tiles) <= 6 and tiles[0] == 0 and tiles[-1] == 19
    np.testing.assert_allclose(labels, z1[tiles], rtol=0, atol=0.05 + 1e-9)
    positions, labels = _ticks(ax.yaxis)
    rows = np.round((positions - 3.5) / 7).astype(int)
    assert rows[0] == 0 and rows[-1] == 19
    np.testing.assert_allclose(labels, z2[19 - rows], rtol=0, atol=0.05 + 1e-9)    # top row: largest z2


@pytest.mark.parametrize("k", [1, 3])
def test_manifold_needs_a_2d_latent_space(tmp_path, models, k):
    with pytest.raises(ValueError, match=f"2-D latent space; this model has {k}"):
        plots.manifold(models[k], (6, 6), tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


def _scatter(fig):
    ax = fig.axes[0]
    (points,) = ax.collections
    return ax, points, np.asarray(points.get_offsets())


def test_latent_space_1d_puts_the_means_on_a_line(tmp_path, figures, tiny_data, models):
    model, x = models[1], tiny_data.x_test
    assert_png(plots.latent_space(model, x, tiny_data.y_test, tmp_path / "l1.png"))
    ax, _, offsets = _scatter(figures[-1])
    mu = model.encode(x)[0]
    np.testing.assert_allclose(offsets[:, 0], mu[:, 0], rtol=1e-6)
    assert np.all(offsets[:, 1] == 0)
    assert ax.get_title() == "latent space (1-D posterior means)"


def test_latent_space_2d_shows_the_means_coloured_by_label(tmp_path, figures, tiny_data, models):
    model, x = models[2], tiny_data.x_test
    assert_png(plots.latent_space(model, x, tiny_data.y_test, tmp_path / "l2.png"))
    fig = figures[-1]
    ax, points, offsets = _scatter(fig)
    np.testing.assert_allclose(offsets, model.encode(x)[0], rtol=1e-6)
    np.testing.assert_array_equal(points.get_array(), tiny_data.y_test)
    assert len(fig.axes) == 2                        # the colour bar
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z1 (mean)", "z2 (mean)")


def test_latent_space_above_2d_shows_the_top_principal_components(tmp_path, figures, tiny_data, models):
    model, x = models[3], tiny_data.x_test
    assert_png(plots.latent_space(model, x, tiny_data.y_test, tmp_path / "l3.png"))
    ax, _, offsets = _scatter(figures[-1])
    assert offsets.shape == (len(x), 2)
    assert ax.get_title() == "latent space (3-D posterior means)"
    assert ax.get_xlabel().startswith("PC 1")
    mu = model.encode(x)[0].astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(np.cov(mu.T))[::-1]
    cov = np.cov(offsets.T)
    np.testing.assert_allclose(np.diag(cov), eigenvalues[:2], rtol=1e-5)   # the two largest
    assert abs(cov[0, 1]) < 1e-6 * cov[0, 0]                                # uncorrelated
    np.testing.assert_allclose(offsets.mean(0), 0, atol=1e-9)


def test_latent_space_without_labels_is_black_and_quiet(tmp_path, figures, tiny_data, models):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no Matplotlib complaints either
        assert_png(plots.latent_space(models[2], tiny_data.x_test, None, tmp_path / "l.png"))
    fig = figures[-1]
    assert len(fig.axes) == 1                          # no colour bar
    _, points, _ = _scatter(fig)
    assert points.get_array() is None
    np.testing.assert_allclose(points.get_facecolor()[0][:3], (0, 0, 0))


def test_latent_space_outlines_a_box(tmp_path, figures, tiny_data, models):
    box = ((-1.5, 2.0), (-0.5, 3.0))
    assert_png(plots.latent_space(models[2], tiny_data.x_test, tiny_data.y_test, tmp_path / "l.png", box=box))
    ax = figures[-1].axes[0]
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [-1.5, 2.0, 2.0, -1.5, -1.5])
    np.testing.assert_array_equal(line.get_ydata(), [-0.5, -0.5, 3.0, 3.0, -0.5])
    assert "manifold" in ax.get_title()


@pytest.mark.parametrize("k", [1, 3])
def test_latent_space_box_needs_a_2d_latent_space(tmp_path, tiny_data, models, k):
    with pytest.raises(ValueError, match=f"box needs a 2-D latent space; this model has {k}"):
        plots.latent_space(models[k], tiny_data.x_test, None, tmp_path / "l.png", box=((0, 1), (0, 1)))
    assert not (tmp_path / "l.png").exists()


def test_all_pictures_manifold_covers_the_latent_map(tmp_path, figures, tiny_data, models):
    """The manifold's grid spans every posterior mean the latent map plots, and the map outlines it."""
    model = copy.deepcopy(models[2])
    model.params["enc.mu.W"][...] *= 4                 # means well beyond the prior's central 90%
    model.params["enc.mu.b"][...] *= 4
    plots.all_pictures(model, tiny_data, [], tmp_path, np.random.default_rng(0))
    manifold_fig, latent_fig = figures[2], figures[3]
    _, _, points = _scatter(latent_fig)
    lo, hi = points.min(0), points.max(0)
    assert np.any(np.abs(points) > 1.65)               # the old grid, +-1.64, missed these
    _, title = drawn_image(manifold_fig)
    z1, z2 = plots.manifold_grid(20, model.encode(tiny_data.x_test)[0])
    assert f"z1 in [{z1[0]:.2f}, {z1[-1]:.2f}], z2 in [{z2[0]:.2f}, {z2[-1]:.2f}]" in title
    assert np.all([z1[0], z2[0]] < lo) and np.all([z1[-1], z2[-1]] > hi)
    (ax,) = manifold_fig.axes
    for axis, values in ((ax.xaxis, z1), (ax.yaxis, z2)):
        _, labels = _ticks(axis)
        np.testing.assert_allclose([min(labels), max(labels)], values[[0, -1]], rtol=0, atol=0.05 + 1e-9)
    (line,) = latent_fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata()[[0, 1]], z1[[0, -1]])
    np.testing.assert_allclose(line.get_ydata()[[1, 2]], z2[[0, -1]])


def _history(n):
    return [{"epoch": e, "train_total": 100 - e, "train_nll": 90 - e, "train_kl": 10.0 + e,
             "test_total": 101 - e, "test_nll": 92 - e, "test_kl": 9.0 + e} for e in range(1, n + 1)]


def test_curves_plot_train_and_test_parts_by_epoch(tmp_path, figures):
    history = _history(4)
    assert_png(plots.curves(history, tmp_path / "c.png"))
    fig = figures[-1]
    assert [ax.get_title() for ax in fig.axes] == ["-ELBO (total)", "reconstruction (nll)", "KL"]
    for ax, part in zip(fig.axes, ("total", "nll", "kl")):
        train, test = ax.get_lines()
        assert (train.get_label(), test.get_label()) == ("train", "test")
        np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(train.get_ydata(), [r[f"train_{part}"] for r in history])
        np.testing.assert_array_equal(test.get_ydata(), [r[f"test_{part}"] for r in history])


@pytest.mark.parametrize("k, shape, history, expected", [
    (2, (6, 6), 3, ["reconstructions", "samples", "manifold", "latent", "curves"]),
    (3, (6, 6), 1, ["reconstructions", "samples", "latent", "curves"]),
    (2, None, 2, ["latent", "curves"]),
    (1, (6, 6), 0, ["reconstructions", "samples", "latent"]),
])
def test_all_pictures_draws_what_applies(tmp_path, figures, tiny_data, models, k, shape, history, expected):
    data = Dataset("tiny", tiny_data.x_train, tiny_data.y_train, tiny_data.x_test, tiny_data.y_test, shape)
    written = plots.all_pictures(models[k], data, _history(history), tmp_path, np.random.default_rng(0))
    assert written == [tmp_path / f"{name}.png" for name in expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{name}.png" for name in expected)
    for path in written:
        assert_png(path)
    assert len(figures) == len(expected)


def test_all_pictures_caps_the_latent_scatter_at_5000_points(tmp_path, figures):
    rng = np.random.default_rng(0)
    x = rng.random((5003, 4), dtype=np.float32)
    data = Dataset("wide", x[:10], None, x, None, None)
    plots.all_pictures(sv.VAE(4, [3], 2), data, [], tmp_path, rng)
    _, _, offsets = _scatter(figures[-1])
    assert len(offsets) == 5000


def test_pictures_of_a_freshly_initialised_model(tmp_path, tiny_data):
    """No training at all: every picture is still drawn (nothing assumes a trained model)."""
    pytest.importorskip("matplotlib")
    written = plots.all_pictures(sv.VAE(36, [8], 2, seed=1), tiny_data, _history(1), tmp_path,
                                 np.random.default_rng(0))
    assert len(written) == 5
    for path in written:
        assert_png(path)
