"""The ``scratchvae`` command, end to end, on tiny data files.

Every run here trains a 64-16-2 model on a few hundred 8x8 images for one
or two epochs, so each takes well under a second; only the subprocess tests
pay for a fresh interpreter.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from blockers import block_imports

import scratchvae
from scratchvae.run import checkpoint as ckpt
from scratchvae.run import cli
from scratchvae.data import datasets as ds
from scratchvae.run import TrainConfig, Trainer
from scratchvae.run.train import Objective, history_fields

HISTORY_FIELDS = history_fields(Objective())

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PICTURES = ("reconstructions.png", "samples.png", "manifold.png", "latent.png", "curves.png")
SMALL = ["--hidden", "16", "--latent", "2", "--batch-size", "32"]

BLOCK_MATPLOTLIB = block_imports("matplotlib")


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------

def bars(n: int, seed: int = 0) -> np.ndarray:
    """n 8x8 grey images, each a horizontal or vertical bar plus a little noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 8, 8), np.float32)
    pos = rng.integers(0, 8, n)
    vertical = rng.random(n) < 0.5
    for i in range(n):
        if vertical[i]:
            x[i, :, pos[i]] = 1
        else:
            x[i, pos[i], :] = 1
    x = 0.9 * x + 0.1 * rng.random(x.shape, dtype=np.float32)
    return np.clip(x, 0, 1)


def run(capsys, *argv):
    """``scratchvae argv`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:          # argparse: --help, --version, bad options
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code, err, *needles):
    """A non-zero exit and exactly one stderr line, ``scratchvae: error: ...``, holding ``needles``."""
    assert code not in (0, None), f"expected a failure, got exit code {code}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("scratchvae: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 200


def read_csv(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env(**extra):
    env = dict(os.environ)
    env.pop("SCRATCHVAE_DEBUG", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_python(code: str, cwd, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=subprocess_env(**env))


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """SCRATCHVAE_DEBUG would turn every clean error into a traceback."""
    monkeypatch.delenv("SCRATCHVAE_DEBUG", raising=False)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """200 images of 8x8 (180 train, 20 held out by the CLI) in an .npz under key x."""
    path = tmp_path_factory.mktemp("data") / "bars.npz"
    np.savez(path, x=bars(200))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_file):
    """One CLI training run (one epoch, with pictures), shared read-only by many tests.

    Returns (run directory, exit code, stdout, stderr).
    """
    import contextlib
    import io

    out_dir = tmp_path_factory.mktemp("trained") / "run"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["train", "--dataset", str(data_file), *SMALL, "--epochs", "1",
                         "--out", str(out_dir)])
    return out_dir, code, out.getvalue(), err.getvalue()


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A private copy of the shared run, for tests that change it."""
    dst = tmp_path / "run"
    shutil.copytree(trained[0], dst)
    return dst


# ----------------------------------------------------------------------
# 1. train end to end
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
# 2. resume
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
    (flag,) = [a.option_strings[-1] for a in _subparsers(cli.build_parser())["train"]._actions
               if a.dest == dest]
    before = (run_copy / "checkpoint.npz").read_bytes()
    value = DIFFERING[dest]                          # None for a flag without a value
    code, out, err = run(capsys, "train", "--resume", run_copy, flag, *([] if value is None else [value]),
                         "--epochs", "2", "-q")
    # one line naming the option as it is typed on the command line, and the value given
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
# 3. evaluate, sample, plot
# ----------------------------------------------------------------------

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


# ----------------------------------------------------------------------
# 4. errors a user can cause
# ----------------------------------------------------------------------

def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _header_bytes(header: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def bad_checkpoints(tmp_path: Path, real: Path):
    """(label, path, words the error must contain) for checkpoints that cannot be used."""
    raw = real.read_bytes()
    cases = [("missing", tmp_path / "missing.npz", ["no such checkpoint"]),
             ("empty directory", tmp_path / "emptydir", ["no such checkpoint"])]
    (tmp_path / "emptydir").mkdir()
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(3000))
    cases.append(("random bytes", junk, ["not a readable checkpoint"]))
    for cut in (len(raw) // 2, len(raw) - 5):
        p = tmp_path / f"cut{cut}.npz"
        p.write_bytes(raw[:cut])
        cases.append((f"truncated to {cut}", p, ["not a readable checkpoint"]))
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF              # inside a stored array: the CRC catches it
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    cases.append(("flipped byte", tmp_path / "flipped.npz", ["truncated or corrupt"]))
    cases.append(("foreign npz", _write_npz(tmp_path / "foreign.npz", weights=np.zeros(3)),
                  ["not a scratchvae checkpoint"]))
    cases.append(("other format", _write_npz(tmp_path / "other.npz",
                                             **{ckpt.HEADER_KEY: _header_bytes({"format": "x"})}),
                  ["not a scratchvae checkpoint"]))
    cases.append(("header not JSON", _write_npz(tmp_path / "hdr.npz",
                                                **{ckpt.HEADER_KEY: np.frombuffer(b"{oops", np.uint8)}),
                  ["corrupt checkpoint header"]))
    with np.load(real) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays[ckpt.HEADER_KEY].tobytes())
    newer = dict(arrays, **{ckpt.HEADER_KEY: _header_bytes(dict(header, format_version=99))})
    cases.append(("newer format", _write_npz(tmp_path / "newer.npz", **newer), ["upgrade scratchvae"]))
    wrong = dict(arrays)
    wrong["param/dec.1.W"] = np.zeros((16, 3), np.float32)
    cases.append(("wrong shapes", _write_npz(tmp_path / "wrong.npz", **wrong),
                  ["do not fit", "dec.1.W"]))
    return cases


@pytest.mark.parametrize("command", ["evaluate", "sample", "plot"])
def test_unusable_checkpoints_give_one_line(capsys, tmp_path, trained, command):
    for label, path, needles in bad_checkpoints(tmp_path, trained[0] / "checkpoint.npz"):
        extra = ["-o", str(tmp_path / "s.npy")] if command == "sample" else ["-o", str(tmp_path / "p")] \
            if command == "plot" else []
        code, out, err = run(capsys, command, path, *extra)
        try:
            assert_one_error(code, err, *needles)
        except AssertionError as e:
            raise AssertionError(f"{label}: {e}") from None
        assert code == 1 and out == "", label
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # NumPy notes the overflow
def test_checkpoint_with_non_finite_weights(capsys, run_copy):
    path = run_copy / "checkpoint.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["param/enc.logvar.b"] = np.full_like(arrays["param/enc.logvar.b"], np.inf)
    np.savez(path, **arrays)
    code, out, err = run(capsys, "evaluate", run_copy)
    assert_one_error(code, err, "not finite")
    assert out == ""


def test_missing_named_data_set(capsys, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("SCRATCHVAE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ds, "SYSTEM_DIR", tmp_path / "no-system-datasets")
    code, out, err = run(capsys, "train", "--dataset", "mnist", "--out", tmp_path / "r", "-q")
    line = assert_one_error(code, err, "'mnist' not found", str(tmp_path / "data" / "mnist"),
                            "scratchvae download mnist")
    assert code == 1 and out == ""
    assert "\n" not in line
    assert not (tmp_path / "r").exists()
    code, _, err = run(capsys, "train", "--dataset", "no-such-set", "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, "unknown data set 'no-such-set'", "synthetic-digits")


def _cut(path, save, keep, flip=False):
    """A valid array file, then truncated to ``keep`` of its bytes or with one byte flipped."""
    save(path, bars(40).reshape(40, 64))
    raw = bytearray(path.read_bytes())
    if flip:
        raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw[:int(len(raw) * keep)]))


def _pickled(path):
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return path


@pytest.mark.parametrize("name, make, needles", [
    ("nan.npz", lambda p: _write_npz(p, x=np.full((40, 16), np.nan, np.float32)), ["NaN"]),
    ("inf.npy", lambda p: np.save(p, np.full((40, 16), np.inf)), ["NaN or infinite"]),
    ("range.npz", lambda p: _write_npz(p, x=np.linspace(0, 2, 640).reshape(40, 16)), ["[0, 1]", "2.0"]),
    ("negative.npy", lambda p: np.save(p, -np.ones((40, 16), np.float32)), ["[0, 1]"]),
    ("ints.npy", lambda p: np.save(p, np.ones((40, 16), np.int64)), ["int64", "uint8"]),
    ("two.npz", lambda p: _write_npz(p, a=np.zeros((4, 4)), b=np.zeros((4, 4))), ["one array"]),
    ("onerow.npy", lambda p: np.save(p, np.zeros((1, 16), np.float32)), ["at least 2"]),
    ("flat.npy", lambda p: np.save(p, np.zeros(16, np.float32)), ["(n, d)"]),
    ("pickled.npy", _pickled, ["pickle"]),
    ("garbage.npz", lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"), ["garbage.npz", "corrupt"]),
    ("empty.npy", lambda p: p.write_bytes(b""), ["empty.npy", "corrupt"]),
    ("cut.npz", lambda p: _cut(p, np.savez, 0.5), ["cut.npz", "corrupt"]),
    ("cut.npy", lambda p: _cut(p, np.save, 0.8), ["cut.npy", "not a readable NumPy file"]),
    ("flipped.npz", lambda p: _cut(p, np.savez, 1.0, flip=True), ["flipped.npz", "corrupt"]),
    ("absent.npz", lambda p: None, ["absent.npz"]),
])
def test_unusable_data_files_give_one_line(capsys, tmp_path, name, make, needles):
    path = tmp_path / name
    make(path)
    code, out, err = run(capsys, "train", "--dataset", path, "--hidden", "4", "--latent", "2",
                         "--epochs", "1", "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, *needles)
    assert code == 1 and out == ""
    assert not (tmp_path / "r").exists()


def test_out_that_is_a_file(capsys, tmp_path, data_file):
    (tmp_path / "taken").write_text("not a folder")
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "1",
                       "--out", tmp_path / "taken", "-q")
    assert_one_error(code, err, "taken")
    assert (tmp_path / "taken").read_text() == "not a folder"


@pytest.mark.parametrize("argv, problem", [
    (["train", "--lr", "-1"], "argument --lr: must be a finite number > 0"),
    (["train", "--lr", "nan"], "argument --lr"),
    (["train", "--lr", "fast"], "argument --lr: expected a finite number"),
    (["train", "--hidden", "0"], "argument --hidden: layer widths must be positive"),
    (["train", "--hidden", "16,-4"], "argument --hidden"),
    (["train", "--hidden", "abc"], "argument --hidden: expected comma-separated integers"),
    (["train", "--likelihood", "poisson"], "argument --likelihood: invalid choice: 'poisson'"),
    (["train", "--activation", "gelu"], "argument --activation: invalid choice"),
    (["train", "--init", "zeros"], "argument --init: invalid choice"),
    (["train", "--binarize", "always"], "argument --binarize: invalid choice"),
    (["train", "--epochs", "0"], "argument --epochs: must be an integer > 0"),
    (["train", "--epochs", "1.5"], "argument --epochs: expected an integer"),
    (["train", "--batch-size", "-3"], "argument --batch-size"),
    (["train", "--latent", "0"], "argument --latent: must be an integer > 0"),
    (["train", "--sigma", "0"], "argument --sigma"),
    (["train", "--beta", "-1"], "argument --beta: must be a finite number >= 0"),
    (["train", "--warmup", "inf"], "argument --warmup"),
    (["train", "--max-grad-norm", "0"], "argument --max-grad-norm"),
    (["train", "--seed", "x"], "argument --seed: expected an integer"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["evaluate"], "required: checkpoint"),
    (["evaluate", "run", "--samples", "0"], "argument --samples"),
    (["sample", "run"], "required: -o/--output"),
    (["sample", "run", "-n", "0", "-o", "x.npy"], "argument -n"),
    (["bogus-command"], "invalid choice: 'bogus-command'"),
])
def test_bad_options_exit_2_with_usage(capsys, argv, problem):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.startswith("usage: scratchvae")
    assert err.strip().splitlines()[-1].startswith("scratchvae")
    assert problem in err


@pytest.mark.parametrize("argv,needle", [
    (["train", "--lr", "inf"], "argument --lr: must be a finite number > 0"),
    (["train", "--sigma", "inf"], "argument --sigma: must be a finite number > 0"),
    (["train", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["train", "--hidden", ","], "argument --hidden: give at least one width"),
])
def test_values_outside_the_domain_are_refused_by_the_parser(capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_out_with_resume_is_refused(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--resume", tmp_path / "run", "--out", tmp_path / "other")
    assert_one_error(code, err, "--out cannot be combined with --resume")


def test_binarize_needs_bernoulli(capsys, data_file, tmp_path):
    code, _, err = run(capsys, "train", "--dataset", data_file, "--binarize", "dynamic",
                       "--likelihood", "gaussian_fixed", "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, "binarization", "gaussian_fixed")


def test_debug_variable_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCHVAE_DEBUG", "1")
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        cli.main(["evaluate", str(tmp_path / "missing.npz")])


def test_no_traceback_reaches_the_user_of_python_m(tmp_path):
    """A real process: a missing checkpoint and a bad option, each one line, no traceback."""
    r = subprocess.run([sys.executable, "-m", "scratchvae", "sample", "missing.npz", "-o", "x.npy"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == "scratchvae: error: missing.npz: no such checkpoint file\n"
    r = subprocess.run([sys.executable, "-m", "scratchvae", "train", "--hidden", "abc"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("usage: scratchvae train")
    assert r.stderr.splitlines()[-1].startswith("scratchvae train: error: argument --hidden")


def test_divergence_through_python_m_ends_with_one_error_line(tmp_path, data_file):
    r = subprocess.run([sys.executable, "-m", "scratchvae", "train", "--dataset", str(data_file), *SMALL,
                        "--epochs", "1", "--lr", "1e6", "--out", "run", "-q"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 1
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("scratchvae: error: ")]
    assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0]
    assert errors[0].startswith("scratchvae: error: training diverged at epoch 1")


# ----------------------------------------------------------------------
# 5. datasets, help
# ----------------------------------------------------------------------

def test_datasets_lists_every_name(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHVAE_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ds, "SYSTEM_DIR", tmp_path / "no-system-datasets")
    kmnist = tmp_path / "kmnist"
    kmnist.mkdir()
    for name, _, _ in ds.IDX_FILES:               # lookup only checks the files are there
        (kmnist / name).write_bytes(b"")
    code, out, err = run(capsys, "datasets")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == set(ds.DATASET_NAMES)
    assert lines["kmnist"].endswith(str(kmnist))
    assert "not found" in lines["mnist"] and "scratchvae download mnist" in lines["mnist"]
    assert "built in" in lines["synthetic-digits"]


def _subparsers(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_top_level_help_mentions_every_option_and_command(capsys):
    parser = cli.build_parser()
    code, out, err = run(capsys, "--help")
    assert code == 0 and err == ""
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in out, opt
    commands = _subparsers(parser)
    assert set(commands) == set(cli.COMMANDS)
    for name in commands:
        assert name in out, name


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_command_help_mentions_every_option(capsys, command):
    sub = _subparsers(cli.build_parser())[command]
    code, out, err = run(capsys, command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: scratchvae {command}")
    seen = 0
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in out, opt
            seen += 1
        if not action.option_strings:                      # positional
            assert (action.metavar or action.dest) in out
        if action.help and action.help is not argparse.SUPPRESS and action.dest != "help":
            assert action.help.split()[0] in out
    assert seen >= 2


def test_train_help_covers_every_run_option():
    """Every TrainConfig field the CLI stores is reachable from the command line."""
    sub = _subparsers(cli.build_parser())["train"]
    dests = {a.dest for a in sub._actions}
    assert set(cli.RUN_OPTIONS) <= dests
    fields = set(TrainConfig.__dataclass_fields__) - {"epochs", "data_dir"}
    assert set(cli.RUN_OPTIONS) == fields


def test_no_command_prints_help_and_exits_0(capsys):
    code, out, err = run(capsys)
    assert code == 0 and err == ""
    assert out.startswith("usage: scratchvae")
    for name in cli.COMMANDS:
        assert name in out


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip() == f"scratchvae {scratchvae.__version__}"


# ----------------------------------------------------------------------
# 6. divergence
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


def test_train_on_the_importance_weighted_bound(capsys, data_file, tmp_path):
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "2", "--iw-samples", "5",
                       "--out", tmp_path / "iw", "--no-plots", "-q")
    assert code == 0, err
    rows = read_csv(tmp_path / "iw" / "history.csv")
    assert len(rows) == 2 and float(rows[1]["test_total"]) < float(rows[0]["test_total"])
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--iw-samples", "5", "--beta", "0.5",
                       "--out", tmp_path / "bad", "-q")
    assert_one_error(code, err, "beta 1")


# ----------------------------------------------------------------------
# 7. beyond the standard normal: VampPrior, planar flows, DReG, the mixture sampler
# ----------------------------------------------------------------------

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
