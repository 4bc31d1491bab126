"""``scratchvae evaluate``, ``sample`` and ``plot`` on a run trained by the command."""
from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import PICTURES, assert_one_error, assert_png, run

import scratchvae
from scratchvae.run import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("no_debug")


def test_evaluate(capsys, trained):
    out_dir = trained[0]
    code, out, err = run(capsys, "evaluate", out_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "bars.npz test set (20 examples), nats per example:"
    parts = lines[1].split()
    assert parts[0] == "-ELBO" and parts[2] == "reconstruction" and parts[4] == "KL"
    total, nll, kl = float(parts[1]), float(parts[3]), float(parts[5])
    assert np.isfinite(total) and kl >= 0
    assert total == pytest.approx(nll + kl, abs=2e-3)
    # same seed, same numbers; the checkpoint file works like its directory
    assert run(capsys, "evaluate", out_dir / "checkpoint.npz")[1] == out
    code, out4, _ = run(capsys, "evaluate", out_dir, "--samples", "4", "--seed", "1")
    assert code == 0 and out4 != out
    assert lines[2].startswith("  active units ") and lines[2].split()[3] == "of"
    code, out_iw, err = run(capsys, "evaluate", out_dir, "--iw-samples", "50")
    assert code == 0, err
    bound = float(out_iw.splitlines()[-1].split()[3])
    assert out_iw.splitlines()[-1].startswith("  log p(x) >= ")
    assert bound > -total - 5          # IW with k = 50 sits at or above the ELBO, up to noise


def test_sample_npy(capsys, trained, tmp_path):
    out_dir = trained[0]
    target = tmp_path / "x.npy"
    code, out, err = run(capsys, "sample", out_dir, "-n", "5", "-o", target)
    assert code == 0, err
    assert out == f"{target}\n"
    x = np.load(target)
    assert x.shape == (5, 64)
    assert np.all((x >= 0) & (x <= 1)) and np.isfinite(x).all()
    # the decoder's mean for z ~ N(0, I) with the given seed
    model = scratchvae.load(out_dir)
    np.testing.assert_array_equal(x, model.sample(5, np.random.default_rng(0)))
    # --draw: x ~ p(x|z), 0/1 pixels for a Bernoulli decoder
    code, _, err = run(capsys, "sample", out_dir, "-n", "7", "--draw", "--seed", "3", "-o", target)
    assert code == 0, err
    drawn = np.load(target)
    assert drawn.shape == (7, 64) and set(np.unique(drawn)) <= {0.0, 1.0}


def test_sample_png(capsys, trained, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "x.png"
    code, out, err = run(capsys, "sample", trained[0], "-n", "9", "-o", target)
    assert code == 0, err
    assert out == f"{target}\n"
    assert_png(target)


def test_sample_refuses_other_suffixes(capsys, trained, tmp_path):
    code, out, err = run(capsys, "sample", trained[0], "-o", tmp_path / "x.txt")
    assert_one_error(code, err, ".png or .npy", "x.txt")
    assert code == 1 and out == ""
    assert not (tmp_path / "x.txt").exists()


def test_sample_png_of_non_image_data_fails_cleanly(capsys, tmp_path):
    np.save(tmp_path / "vec.npy", np.random.default_rng(0).random((50, 10)).astype(np.float32))
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "vec.npy", "--hidden", "4", "--latent", "2",
                       "--epochs", "1", "--out", tmp_path / "r", "--no-plots", "-q")
    assert code == 0, err
    code, _, err = run(capsys, "sample", tmp_path / "r", "-o", tmp_path / "v.png")
    assert_one_error(code, err, "not images", ".npy")
    assert not (tmp_path / "v.png").exists()
    code, _, err = run(capsys, "sample", tmp_path / "r", "-n", "3", "-o", tmp_path / "v.npy")
    assert code == 0 and np.load(tmp_path / "v.npy").shape == (3, 10)


def test_plot(capsys, trained, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "pics"
    code, out, err = run(capsys, "plot", trained[0], "-o", target)
    assert code == 0, err
    assert out == f"{target}\n"
    assert sorted(p.name for p in target.iterdir()) == sorted(PICTURES)
    for name in PICTURES:
        assert_png(target / name)


def test_plot_defaults_to_the_checkpoint_folder(capsys, run_copy):
    pytest.importorskip("matplotlib")
    for name in PICTURES:
        (run_copy / name).unlink()
    code, out, err = run(capsys, "plot", run_copy / "checkpoint.npz")
    assert code == 0, err
    assert out == f"{run_copy}\n"
    for name in PICTURES:
        assert_png(run_copy / name)


@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_evaluate_and_plot_need_a_training_checkpoint(capsys, tmp_path, command):
    ckpt.save(tmp_path / "model.npz", scratchvae.VAE(64, [16], 2))
    code, _, err = run(capsys, command, tmp_path / "model.npz")
    assert_one_error(code, err, "no training configuration")


def test_model_only_checkpoint_samples_npy_but_not_png(capsys, tmp_path):
    ckpt.save(tmp_path / "model.npz", scratchvae.VAE(64, [16], 2))
    code, _, err = run(capsys, "sample", tmp_path / "model.npz", "-n", "2", "-o", tmp_path / "m.npy")
    assert code == 0, err
    assert np.load(tmp_path / "m.npy").shape == (2, 64)
    code, _, err = run(capsys, "sample", tmp_path / "model.npz", "-o", tmp_path / "m.png")
    assert_one_error(code, err, "not images")
