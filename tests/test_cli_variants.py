"""The command beyond the plain VAE: the importance-weighted bound, the VampPrior, planar flows,
DReG and the mixture sampler."""
from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import SMALL, assert_one_error, assert_png, read_csv, run

import scratchvae
from scratchvae.run import TrainConfig
from scratchvae.run import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("no_debug")


def test_train_on_the_importance_weighted_bound(capsys, data_file, tmp_path):
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "2", "--iw-samples", "5",
                       "--out", tmp_path / "iw", "--no-plots", "-q")
    assert code == 0, err
    rows = read_csv(tmp_path / "iw" / "history.csv")
    assert len(rows) == 2 and float(rows[1]["test_total"]) < float(rows[0]["test_total"])
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--iw-samples", "5", "--beta", "0.5",
                       "--out", tmp_path / "bad", "-q")
    assert_one_error(code, err, "beta 1")


@pytest.mark.parametrize("options", [["--prior", "vamp", "--pseudo-inputs", "7"], ["--flow", "planar:2"],
                                     ["--iw-samples", "3", "--iw-gradient", "dreg"]])
def test_train_a_variant_evaluate_sample_and_resume(capsys, data_file, tmp_path, options):
    out = tmp_path / "v"
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "2", *options, "--out", out,
                       "--no-plots", "-q")
    assert code == 0, err
    rows = read_csv(out / "history.csv")
    assert len(rows) == 2 and float(rows[1]["test_total"]) < float(rows[0]["test_total"])
    header, _ = ckpt.read(out)
    stored = header["train"]["config"]
    assert {k: stored[k] for k in ("prior", "pseudo_inputs", "flow", "iw_gradient", "iw_samples")} == {
        **{"prior": "standard", "pseudo_inputs": 500, "flow": "none", "iw_gradient": "iwae", "iw_samples": 1},
        **{o[2:].replace("-", "_"): (int(v) if v.isdigit() else v) for o, v in zip(options[::2], options[1::2])}}
    model = scratchvae.load(out)
    assert model.prior == ("vamp" if "vamp" in options else "standard")
    assert model.flow == ("planar:2" if "--flow" in options else "none")
    code, text, err = run(capsys, "evaluate", out, "--iw-samples", "10")
    assert code == 0 and "log p(x) >=" in text, err
    assert ("estimated at the drawn z" in text) == ("--iw-gradient" not in options)     # no closed-form KL
    code, _, err = run(capsys, "sample", out, "-n", "5", "-o", tmp_path / "s.npy")
    assert code == 0 and np.load(tmp_path / "s.npy").shape == (5, 64), err
    code, _, err = run(capsys, "train", "--resume", out, "--epochs", "3", "--no-plots", "-q")
    assert code == 0 and len(read_csv(out / "history.csv")) == 3, err


def test_vampprior_starts_at_training_images(data_file):
    from scratchvae.run import Run
    run_ = Run(TrainConfig(dataset=str(data_file), hidden=[16], latent_dim=2, prior="vamp", pseudo_inputs=5))
    u = run_.model.params["prior.u"]
    assert all(np.any(np.all(run_.x_train == row, axis=1)) for row in u)


def test_sample_from_a_mixture_fitted_to_the_training_codes(capsys, trained, tmp_path):
    code, _, err = run(capsys, "sample", trained[0], "-n", "6", "--sampler", "gmm:3", "-o", tmp_path / "g.npy")
    assert code == 0, err
    gmm_samples = np.load(tmp_path / "g.npy")
    run(capsys, "sample", trained[0], "-n", "6", "-o", tmp_path / "p.npy")
    assert gmm_samples.shape == (6, 64) and not np.allclose(gmm_samples, np.load(tmp_path / "p.npy"))
    code, _, err = run(capsys, "sample", trained[0], "-n", "6", "--sampler", "gmm:3", "-o", tmp_path / "g2.npy")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "g2.npy"), gmm_samples)      # seeded: the same again
    code, _, err = run(capsys, "sample", trained[0], "--sampler", "gmm:3", "-o", tmp_path / "g.png")
    assert code == 0, err
    assert_png(tmp_path / "g.png")


@pytest.mark.parametrize("options,needles", [
    (["--iw-gradient", "dreg"], ["DReG", "--iw-samples K"]),
    (["--pseudo-inputs", "7"], ["--prior vamp"]),
    (["--prior", "vamp", "--flow", "planar:2"], ["VampPrior", "flow"]),
    (["--flow", "planar:2", "--iw-samples", "3", "--iw-gradient", "dreg"], ["DReG", "flow"]),
    (["--prior", "vamp", "--conditional", "label"], ["VampPrior", "conditional"]),
    (["--semi-supervised", "--flow", "planar:2"], ["semi-supervised", "flow"]),
])
def test_bad_variant_combinations_give_one_line(capsys, data_file, tmp_path, options, needles):
    code, out, err = run(capsys, "train", "--dataset", data_file, *SMALL, *options, "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, *needles)
    assert out == "" and not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,needle", [
    (["train", "--flow", "planar:x"], "planar:L with L >= 1"),
    (["train", "--prior", "laplace"], "invalid choice"),
    (["train", "--iw-gradient", "stl"], "invalid choice"),
    (["train", "--pseudo-inputs", "0"], "must be an integer > 0"),
    (["sample", "RUN", "-o", "x.npy", "--sampler", "gmm:0"], "prior or gmm:N"),
])
def test_bad_variant_values_are_refused_by_the_parser(capsys, argv, needle):
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err


def test_mixture_sampler_needs_the_run_s_data(capsys, tmp_path):
    model_only = tmp_path / "model.npz"
    ckpt.save(model_only, scratchvae.VAE(64, [16], 2))
    code, _, err = run(capsys, "sample", model_only, "--sampler", "gmm:2", "-o", tmp_path / "x.npy")
    assert_one_error(code, err, "no training configuration")
    assert not (tmp_path / "x.npy").exists()
