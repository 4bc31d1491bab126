"""Latent interpolation: the two paths, the decoded images, the command."""
import numpy as np
import pytest
from cli_helpers import SMALL, assert_one_error, assert_png, bars, run

import scratchvae as sv
from scratchvae.data import datasets as ds
from scratchvae.inference.interpolate import interpolate, lerp, slerp


def test_both_paths_start_and_end_at_the_codes():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal((2, 5))
    t = np.linspace(0, 1, 7)
    for path in (lerp(z0, z1, t), slerp(z0, z1, t)):
        assert path.shape == (7, 5)
        np.testing.assert_allclose(path[0], z0, atol=1e-14)
        np.testing.assert_allclose(path[-1], z1, atol=1e-14)
    np.testing.assert_allclose(lerp(z0, z1, t)[3], (z0 + z1) / 2)


def test_slerp_follows_the_great_circle_at_a_constant_rate():
    rng = np.random.default_rng(1)
    z0, z1 = rng.standard_normal((2, 4))
    z0, z1 = 3 * z0 / np.linalg.norm(z0), 3 * z1 / np.linalg.norm(z1)     # on the sphere of radius 3
    path = slerp(z0, z1, np.linspace(0, 1, 9))
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 3, rtol=1e-13)
    steps = [np.arccos(a @ b / 9) for a, b in zip(path[:-1], path[1:])]
    np.testing.assert_allclose(steps, np.arccos(z0 @ z1 / 9) / 8, rtol=1e-10)
    # the straight line cuts inside the sphere: its midpoint is shorter
    assert np.linalg.norm(lerp(z0, z1, [0.5])[0]) < 3


def test_slerp_of_parallel_codes_is_the_line_and_of_opposite_codes_is_refused():
    z = np.array([1.0, -2.0, 0.5])
    t = np.linspace(0, 1, 5)
    np.testing.assert_allclose(slerp(z, 3 * z, t), lerp(z, 3 * z, t))
    np.testing.assert_allclose(slerp(np.zeros(3), z, t), lerp(np.zeros(3), z, t))
    with pytest.raises(ValueError, match="opposite directions"):
        slerp(z, -2 * z, t)


def test_interpolate_decodes_each_path_and_holds_the_context_fixed():
    model = sv.VAE(10, [6], 3, context_dim=2, seed=0, dtype=np.float64)
    z0, z1 = np.random.default_rng(2).standard_normal((2, 3))
    c = np.array([0.0, 1.0])
    images = interpolate(model, z0, z1, steps=6, c=c)
    assert images.shape == (2, 6, 10) and images.dtype == np.float64
    t = np.linspace(0, 1, 6)
    for row, path in zip(images, (lerp(z0, z1, t), slerp(z0, z1, t))):
        np.testing.assert_allclose(row, model.decode(path, np.tile(c, (6, 1))), rtol=1e-14)
    other = interpolate(model, z0, z1, steps=6, c=np.array([1.0, 0.0]))
    assert not np.allclose(other, images)                  # the context does act on the decoder
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        interpolate(model, z0, z1, steps=1, c=c)
    with pytest.raises(ValueError, match="must each have 3 values"):
        interpolate(model, z0[:2], z1, c=c)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    import contextlib
    import io
    from scratchvae.run import cli
    folder = tmp_path_factory.mktemp("interp")
    np.savez(folder / "bars.npz", x=bars(200))
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--dataset", str(folder / "bars.npz"), *SMALL, "--epochs", "1", "--no-plots",
                         "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_interpolate_command_between_test_images(capsys, plain_run, tmp_path):
    from scratchvae.run.run import Run
    png, npy = tmp_path / "i.png", tmp_path / "i.npy"
    code, out, err = run(capsys, "interpolate", plain_run, "--from", "2", "--to", "5", "--steps", "7",
                         "-o", png, "--array", npy)
    assert code == 0, err
    assert out.split() == [str(npy), str(png)]
    assert_png(png)
    images = np.load(npy)
    r = Run.open(plain_run)
    mu, _ = r.vae.encode(r.x_test[[2, 5]])
    np.testing.assert_allclose(images, interpolate(r.vae, mu[0], mu[1], 7))
    np.testing.assert_allclose(images[:, 0], np.repeat(r.vae.decode(mu[:1]), 2, 0), rtol=1e-6)
    assert not list(tmp_path.glob(".*.part"))


def test_interpolate_command_between_prior_draws(capsys, plain_run, tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for path in (a, b):
        code, _, err = run(capsys, "interpolate", plain_run, "--prior", "--seed", "4", "--array", path)
        assert code == 0, err
    np.testing.assert_array_equal(np.load(a), np.load(b))
    assert np.load(a).shape == (2, 10, 64)


@pytest.mark.parametrize("argv, needle", [
    (["--from", "0", "--to", "1"], "give -o FILE.png"),
    (["--from", "0", "--to", "1", "-o", "x.jpg"], "-o must end in .png"),
    (["--from", "0", "--to", "1", "--array", "x.png"], "--array must end in .npy"),
    (["--from", "0", "--to", "1", "--steps", "1", "--array", "x.npy"], "--steps must be at least 2"),
    (["--prior", "--from", "0", "--array", "x.npy"], "either --from I --to J"),
    (["--array", "x.npy"], "either --from I --to J"),
    (["--from", "0", "--array", "x.npy"], "give both --from I and --to J"),
    (["--from", "0", "--to", "20", "--array", "x.npy"], "--to must lie in [0, 19]"),
    (["--prior", "--label", "1", "--array", "x.npy"], "--label needs a model trained with --conditional label"),
])
def test_interpolate_command_refuses_unclear_requests(capsys, plain_run, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "interpolate", plain_run, *argv)
    assert_one_error(code, err, needle)
    assert not list(tmp_path.iterdir())


def test_a_label_model_interpolates_with_its_label_held(capsys, tmp_path, monkeypatch):
    from scratchvae.run import cli
    from scratchvae.run.run import Run
    monkeypatch.setattr(ds, "SYNTHETIC_SIZES", (300, 50))
    out = tmp_path / "run"
    assert cli.main(["train", "--conditional", "label", "--hidden", "16", "--latent", "2", "--epochs", "1",
                     "--batch-size", "50", "--out", str(out), "-q", "--no-plots"]) == 0
    capsys.readouterr()
    code, _, err = run(capsys, "interpolate", out, "--prior", "--array", tmp_path / "p.npy")
    assert_one_error(code, err, "give --label")
    assert run(capsys, "interpolate", out, "--prior", "--label", "3", "--array", tmp_path / "p.npy")[0] == 0
    assert run(capsys, "interpolate", out, "--from", "0", "--to", "1", "--array", tmp_path / "i.npy")[0] == 0
    r = Run.open(out)
    mu, _ = r.vae.encode(r.x_test[[0, 1]], r.c_test[[0, 1]])      # each image with its own label
    np.testing.assert_allclose(np.load(tmp_path / "i.npy"), interpolate(r.vae, mu[0], mu[1], 10, r.c_test[0]))
    z = r.vae.prior_sample(2, np.random.default_rng(0))
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), interpolate(r.vae, z[0], z[1], 10, np.eye(10)[3]))


@pytest.mark.parametrize("variant", [["--prior", "vamp", "--pseudo-inputs", "4"], ["--flow", "planar:2"]])
def test_the_paths_start_from_the_models_own_codes(capsys, tmp_path, variant):
    """A VampPrior's draws come from the VampPrior; a flow's image codes are the posterior
    means carried through the flow (``embed``)."""
    from scratchvae.run.run import Run
    np.savez(tmp_path / "bars.npz", x=bars(200))
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "bars.npz", *SMALL, "--epochs", "1", "--no-plots",
                       *variant, "--out", tmp_path / "run")
    assert code == 0, err
    r = Run.open(tmp_path / "run")
    for argv, (z0, z1) in ((["--prior", "--seed", "5"], r.vae.prior_sample(2, np.random.default_rng(5))),
                           (["--from", "3", "--to", "4"], r.vae.embed(r.x_test[[3, 4]]))):
        code, _, err = run(capsys, "interpolate", tmp_path / "run", *argv, "--array", tmp_path / "i.npy")
        assert code == 0, err
        np.testing.assert_allclose(np.load(tmp_path / "i.npy"), interpolate(r.vae, z0, z1, 10), rtol=1e-6)
    if r.vae.flow_layers:
        assert not np.allclose(r.vae.embed(r.x_test[[3]]), r.vae.encode(r.x_test[[3]])[0])
