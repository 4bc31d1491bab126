"""``scratchvae train`` end to end, resumed, and diverging, on tiny data files.

The helpers shared with the other tests of the command (tests/test_cli_*.py)
are in tests/cli_helpers.py, the fixtures in tests/conftest.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from blockers import block_imports
from cli_helpers import (PICTURES, SMALL, assert_one_error, assert_png, bars, read_csv, run, run_python,
                         subparsers, subprocess_env)

import scratchvae
from scratchvae.data import datasets as ds
from scratchvae.run import Trainer, cli
from scratchvae.run import checkpoint as ckpt
from scratchvae.run.train import Objective, history_fields

pytestmark = pytest.mark.usefixtures("no_debug")
HISTORY_FIELDS = history_fields(Objective())
BLOCK_MATPLOTLIB = block_imports("matplotlib")


# ----------------------------------------------------------------------
# train end to end
# ----------------------------------------------------------------------

def test_train_writes_checkpoint_history_and_pictures(trained):
    out_dir, code, out, err = trained
    assert code == 0, err
    assert out.strip().splitlines() == [f"run directory: {out_dir}"]
    for name in ("checkpoint.npz", "history.csv", "history.json"):
        assert (out_dir / name).is_file(), name

    rows = read_csv(out_dir / "history.csv")
    assert len(rows) == 1
    assert tuple(rows[0]) == HISTORY_FIELDS
    assert int(rows[0]["epoch"]) == 1
    assert int(rows[0]["step"]) == 6                  # ceil(180 / 32) steps
    assert all(np.isfinite(float(v)) for v in rows[0].values())

    history = json.loads((out_dir / "history.json").read_text())
    assert len(history) == 1 and tuple(history[0]) == HISTORY_FIELDS
    assert history[0]["train_total"] == pytest.approx(float(rows[0]["train_total"]), rel=1e-5)
    assert history[0]["test_total"] == pytest.approx(
        history[0]["test_nll"] + history[0]["test_kl"], rel=1e-6)

    model = scratchvae.load(out_dir)
    assert (model.input_dim, model.hidden, model.latent_dim) == (64, [16], 2)
    assert "training" in err and "epoch   1/1" in err


def test_train_draws_pictures_when_matplotlib_is_there(trained):
    pytest.importorskip("matplotlib")
    out_dir, code, _, err = trained
    assert code == 0
    for name in PICTURES:             # 8x8 images and a 2-D latent space: all five apply
        assert_png(out_dir / name)
    assert "pictures: " + ", ".join(PICTURES) in err


def test_train_without_matplotlib_skips_pictures_with_a_note(tmp_path, data_file):
    script = BLOCK_MATPLOTLIB + textwrap.dedent(f"""
        from scratchvae.run.cli import main
        code = main(["train", "--dataset", {str(data_file)!r}, "--hidden", "16", "--latent", "2",
                     "--batch-size", "32", "--epochs", "1", "--out", "run", "-q"])
        print("exit", code)
        print("matplotlib imported:", any(m.split(".")[0] == "matplotlib" for m in sys.modules))
        # every other command that draws must fail cleanly, or note it, too
        print("sample png exit", main(["sample", "run", "-o", "s.png"]))
        print("sample npy exit", main(["sample", "run", "-o", "s.npy"]))
        print("plot exit", main(["plot", "run", "-o", "pics"]))
    """)
    r = run_python(script, tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "run directory: run" in lines
    assert "exit 0" in lines
    assert "matplotlib imported: False" in lines
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoint.npz").is_file() and (run_dir / "history.csv").is_file()
    assert not list(run_dir.glob("*.png"))
    err_lines = r.stderr.splitlines()
    assert err_lines[0].startswith("no pictures: ") and "pip install" in err_lines[0]
    # sample -o x.png needs Matplotlib: one clean error naming the fix
    assert "sample png exit 1" in lines
    assert any(l.startswith("scratchvae: error: ") and "pip install" in l for l in err_lines)
    assert not (tmp_path / "s.png").exists()
    assert "sample npy exit 0" in lines and (tmp_path / "s.npy").is_file()
    # plot: says how to get the pictures, draws none
    assert sum("pip install" in l for l in err_lines) == 3
    assert not list((tmp_path / "pics").glob("*.png"))


def test_quiet_prints_only_the_run_directory(tmp_path, data_file):
    """Through a real process: nothing but the run directory, not even a warning."""
    r = subprocess.run([sys.executable, "-m", "scratchvae", "train", "--dataset", str(data_file), *SMALL,
                        "--epochs", "1", "--out", "run", "--quiet"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout == "run directory: run\n"
    if (tmp_path / "run" / "latent.png").is_file():          # Matplotlib there: not even a warning
        assert r.stderr == ""
    else:                                                   # else only the note that says why
        assert r.stderr.startswith("no pictures: ") and r.stderr.count("\n") == 1


def test_train_no_plots_and_uint8_npy(capsys, tmp_path):
    x = (bars(120, seed=3) * 255).astype(np.uint8)             # (n, h, w) uint8 is accepted
    np.save(tmp_path / "pix.npy", x)
    code, out, err = run(capsys, "train", "--dataset", tmp_path / "pix.npy", *SMALL, "--epochs", "1",
                         "--out", tmp_path / "r", "--no-plots", "-q")
    assert code == 0, err
    assert err == ""
    assert not list((tmp_path / "r").glob("*.png"))
    header, _ = ckpt.read(tmp_path / "r")
    data = header["train"]["data"]
    assert (data["name"], data["image_shape"]) == ("pix.npy", [8, 8])
    assert data["fingerprint"]["train"]["shape"] == [108, 64] and data["fingerprint"]["test"]["shape"] == [12, 64]


def test_default_dataset_and_run_directory(capsys, tmp_path, monkeypatch):
    """No --dataset, no --out: the synthetic digits (made small here) into runs/synthetic-digits-*."""
    monkeypatch.setattr(ds, "SYNTHETIC_SIZES", (160, 40))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", *SMALL, "--epochs", "1", "--no-plots", "-q")
    assert code == 0, err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("synthetic-digits-")
    assert out == f"run directory: {Path('runs') / runs[0].name}\n"
    header, _ = ckpt.read(runs[0])
    assert header["train"]["config"]["dataset"] == "synthetic-digits"
    assert header["train"]["data"]["image_shape"] == [28, 28]
    code, out, err = run(capsys, "evaluate", runs[0])
    assert code == 0, err
    assert "synthetic-digits test set (40 examples)" in out


# ----------------------------------------------------------------------
# resume
# ----------------------------------------------------------------------

def test_resume_extends_the_run_exactly(capsys, run_copy, data_file, tmp_path):
    code, out, err = run(capsys, "train", "--resume", run_copy, "--epochs", "2", "--no-plots", "-q")
    assert code == 0, err
    assert out == f"run directory: {run_copy}\n"
    rows = read_csv(run_copy / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["step"]) for r in rows] == [6, 12]
    assert len(json.loads((run_copy / "history.json").read_text())) == 2

    # the same as two epochs in one go, bit for bit
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "2",
                       "--out", tmp_path / "straight", "--no-plots", "-q")
    assert code == 0, err
    resumed, straight = scratchvae.load(run_copy), scratchvae.load(tmp_path / "straight")
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k], err_msg=k)
    straight_rows = read_csv(tmp_path / "straight" / "history.csv")
    for a, b in zip(rows, straight_rows):
        for k in ("train_total", "test_total", "test_kl"):
            assert a[k] == b[k], k


def test_resume_accepts_repeated_options_that_agree(capsys, run_copy, data_file):
    code, _, err = run(capsys, "train", "--resume", run_copy / "checkpoint.npz", "--dataset", data_file,
                       *SMALL, "--lr", "0.001", "--seed", "0", "--epochs", "2", "--no-plots", "-q")
    assert code == 0, err
    assert len(read_csv(run_copy / "history.csv")) == 2


# a value differing from the shared run's, for every option that defines a run
DIFFERING = {"dataset": "other.npz", "batch_size": "7", "lr": "0.5", "hidden": "8", "latent_dim": "3",
             "activation": "tanh", "likelihood": "continuous_bernoulli", "sigma": "0.5",
             "init": "he_normal", "beta": "0.5", "warmup_epochs": "2", "binarize": "static",
             "seed": "5", "max_grad_norm": "1.5", "iw_samples": "5", "conditional": "label",
             "semi_supervised": None, "labels_per_class": "7", "alpha": "3", "labelled_batch": "9",
             "iw_gradient": "dreg", "prior": "vamp", "pseudo_inputs": "7", "flow": "planar:2"}


def test_differing_covers_every_run_option():
    assert set(DIFFERING) == set(cli.RUN_OPTIONS)


@pytest.mark.parametrize("dest", cli.RUN_OPTIONS)
def test_resume_refuses_a_differing_run_option(capsys, run_copy, dest):
    (flag,) = [a.option_strings[-1] for a in subparsers(cli.build_parser())["train"]._actions
               if a.dest == dest]
    before = (run_copy / "checkpoint.npz").read_bytes()
    value = DIFFERING[dest]                          # None for a flag without a value
    if dest == "dataset":                            # other data: the run's fingerprint refuses them (issue 21)
        value = str(run_copy.parent / value)
        np.savez(value, x=bars(200, seed=1))
    code, out, err = run(capsys, "train", "--resume", run_copy, flag, *([] if value is None else [value]),
                         "--epochs", "2", "-q")
    # one line naming the option as it is typed on the command line, and the value given
    if dest == "dataset":
        assert_one_error(code, err, "other.npz is not the data this run was trained on")
    else:
        assert_one_error(code, err, "--resume", f"{flag} ", "True" if value is None else value)
    assert code == 1 and out == ""
    assert (run_copy / "checkpoint.npz").read_bytes() == before
    assert len(read_csv(run_copy / "history.csv")) == 1


def test_resume_lists_every_clash(capsys, run_copy):
    code, _, err = run(capsys, "train", "--resume", run_copy, "--latent", "3", "--warmup", "1", "-q")
    assert_one_error(code, err, "--latent 3 differs from its 2", "--warmup 1.0 differs from its 0.0")


def test_resume_of_a_missing_or_model_only_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--resume", tmp_path / "nowhere", "-q")
    assert_one_error(code, err, "no such checkpoint")
    model_only = tmp_path / "model.npz"
    ckpt.save(model_only, scratchvae.VAE(64, [16], 2))
    code, _, err = run(capsys, "train", "--resume", model_only, "-q")
    assert_one_error(code, err, "model only")


def test_interrupted_run_saves_and_resumes_to_the_same_result(capsys, monkeypatch, data_file, tmp_path):
    """Ctrl-C (simulated after step 3) exits 130 and says how to resume; resuming ends where
    an uninterrupted run ends."""
    original_init = Trainer.__init__

    def stop_after_three(self, *args, **kwargs):
        original_init(self, *args, **kwargs)

        def on_batch(t):
            if t.run.step == 3:
                t._stop = True
        self.on_batch = on_batch

    monkeypatch.setattr(Trainer, "__init__", stop_after_three)
    code, out, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "1",
                         "--out", tmp_path / "cut", "--no-plots", "-q")
    assert code == cli.EXIT_INTERRUPTED == 130
    assert out == ""
    assert "interrupted" in err and f"--resume {tmp_path / 'cut'}" in err and "Traceback" not in err
    header, _ = ckpt.read(tmp_path / "cut")
    assert (header["train"]["epoch"], header["train"]["batch"], header["train"]["step"]) == (0, 3, 3)
    monkeypatch.setattr(Trainer, "__init__", original_init)

    code, _, err = run(capsys, "train", "--resume", tmp_path / "cut", "--no-plots", "-q")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "1",
                       "--out", tmp_path / "whole", "--no-plots", "-q")
    assert code == 0, err
    a, b = scratchvae.load(tmp_path / "cut"), scratchvae.load(tmp_path / "whole")
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)


def test_ctrl_c_outside_training_exits_130(capsys, monkeypatch, data_file, tmp_path):
    def interrupted(config):
        raise KeyboardInterrupt
    monkeypatch.setattr("scratchvae.run.run.load_data", interrupted)
    code, out, err = run(capsys, "train", "--dataset", data_file, "--out", tmp_path / "r")
    assert code == 130
    assert err == "scratchvae: interrupted\n"


# ----------------------------------------------------------------------
# divergence
# ----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy notes the overflow
def test_divergence_from_the_start_writes_nothing(capsys, data_file, tmp_path):
    code, out, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "2", "--lr", "1e6",
                         "--out", tmp_path / "r", "-q")
    line = assert_one_error(code, err, "training diverged", "epoch 1", "no checkpoint was written")
    assert code == 1 and out == ""
    assert "learning rate" in line
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy notes the overflow
def test_divergence_at_the_last_step_of_an_epoch(capsys, tmp_path):
    """18 training rows and batch 32: one step per epoch, so the blow-up shows in the
    end-of-epoch evaluation, which must report it the same way."""
    np.savez(tmp_path / "few.npz", x=bars(20))
    code, out, err = run(capsys, "train", "--dataset", tmp_path / "few.npz", *SMALL, "--epochs", "2",
                         "--lr", "1e30", "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, "training diverged", "epoch 1", "no checkpoint was written")
    assert code == 1 and out == ""
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy notes the overflow
def test_divergence_after_a_good_epoch_keeps_its_checkpoint(capsys, run_copy):
    """Poison the saved Adam moments so the first step of epoch 2 blows the weights up."""
    path = run_copy / "checkpoint.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for k in arrays:
        if k.startswith("optim/m."):
            arrays[k] = np.full_like(arrays[k], 1e30)
        elif k.startswith("optim/v."):
            arrays[k] = np.zeros_like(arrays[k])
    np.savez(path, **arrays)
    before = path.read_bytes()
    good = scratchvae.load(path)

    code, out, err = run(capsys, "train", "--resume", run_copy, "--epochs", "3", "--no-plots", "-q")
    line = assert_one_error(code, err, "training diverged", "epoch 2",
                            f"last good checkpoint (epoch 1) is {path}")
    assert code == 1 and out == ""
    assert path.read_bytes() == before
    reloaded = scratchvae.load(run_copy)
    for k, v in good.params.items():
        assert np.isfinite(reloaded.params[k]).all()
        np.testing.assert_array_equal(reloaded.params[k], v)
    assert len(read_csv(run_copy / "history.csv")) == 1
    assert "\n" not in line
