"""Errors a user of ``scratchvae`` can cause: each ends in one line ``scratchvae: error: ...`` (or
argparse's usage and exit code 2), with no traceback and nothing half-written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMALL, assert_one_error, bars, run, subprocess_env

from scratchvae.data import datasets as ds
from scratchvae.run import checkpoint as ckpt
from scratchvae.run import cli

pytestmark = pytest.mark.usefixtures("no_debug")


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


@pytest.mark.parametrize("likelihood", [[], ["--likelihood", "continuous_bernoulli"]])
def test_sigma_needs_a_gaussian(capsys, data_file, tmp_path, likelihood):
    """--sigma with a Bernoulli likelihood was silently ignored, while --binarize with a Gaussian is refused."""
    code, _, err = run(capsys, "train", "--dataset", data_file, "--sigma", "0.5", *likelihood,
                       "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, "--sigma sets a Gaussian likelihood's sigma", "leave --sigma out")
    assert not (tmp_path / "r").exists()


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
