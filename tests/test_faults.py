"""Nothing lost, no traceback: faults and bad input (issue 13), one section per item.

1. a run directory is never replaced without --overwrite;
2. every file is written atomically, and a failed write names the file (and,
   on a full disk, the bytes needed and free);
3. a save refuses weights that are not finite (the Ctrl-C save too);
4. temporaries of killed processes are removed; kill -9 never leaves a
   checkpoint that does not load;
5. a checkpoint records the data's fingerprint and refuses other data;
6. too large a model, batch or sample is refused before it is allocated; a
   header is checked against its schema;
7. the smaller messages: plain .npy as a checkpoint, empty IDX files, huge
   integers, unknown configuration keys, --resume with nothing to do,
   relative data paths;
8. failed runs leave no directory; a read-only --out is found before
   training; labels outside the classes; complex parameters.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMALL, assert_one_error, bars, run, subprocess_env

import scratchvae as sv
from scratchvae import atomic
from scratchvae.data.idx import write_idx
from scratchvae.model import memory
from scratchvae.run import Run, TrainConfig, Trainer, TrainingDiverged
from scratchvae.run import checkpoint as ckpt
from scratchvae.run.run import DataChangedError, RunExistsError

pytestmark = pytest.mark.usefixtures("no_debug")
SMALL_RUN = dict(epochs=1, batch_size=32, hidden=[16], latent_dim=2)


@pytest.fixture
def data_file(tmp_path) -> Path:
    """Each test's own data file (some rewrite it), in place of conftest's one per module."""
    path = tmp_path / "bars.npz"
    np.savez(path, x=bars(200))
    return path


def train(capsys, data_file, out, *extra):
    """One CLI training run of one epoch without pictures; (exit code, stdout, stderr)."""
    return run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "1", "--out", out, "--no-plots",
               "-q", *extra)


@pytest.fixture
def run_dir(capsys, data_file, tmp_path) -> Path:
    """A trained run (one epoch) in tmp_path/run."""
    code, _, err = train(capsys, data_file, tmp_path / "run")
    assert code == 0, err
    return tmp_path / "run"


def edit_checkpoint(path: Path, header=None, arrays=None) -> None:
    """Rewrite a checkpoint with ``header(h)`` changing its header and ``arrays(a)`` its arrays, in place."""
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    h = json.loads(a[ckpt.HEADER_KEY].tobytes())
    if header:
        header(h)
    if arrays:
        arrays(a)
    a[ckpt.HEADER_KEY] = np.frombuffer(json.dumps(h).encode(), np.uint8)
    np.savez(path, **a)


def parts(directory: Path):
    return sorted(p.name for p in Path(directory).glob(".*.part"))


# ----------------------------------------------------------------------
# 1. a run is replaced only when asked
# ----------------------------------------------------------------------

def test_train_refuses_an_out_directory_that_holds_a_run(capsys, run_dir, data_file):
    before = (run_dir / "checkpoint.npz").read_bytes()
    code, out, err = train(capsys, data_file, run_dir, "--seed", "5")
    assert_one_error(code, err, str(run_dir), "already holds a run", f"--resume {run_dir}", "--overwrite")
    assert (run_dir / "checkpoint.npz").read_bytes() == before
    (run_dir / "checkpoint.npz").unlink()                 # the history alone makes it a run's directory
    code, _, err = train(capsys, data_file, run_dir)
    assert_one_error(code, err, "already holds a run (history.csv, history.json)")


def test_a_new_run_object_refuses_a_run_directory(run_dir, tiny_data):
    with pytest.raises(RunExistsError, match="overwrite=True"):
        Run(TrainConfig(**SMALL_RUN), tiny_data, run_dir)


def test_overwrite_replaces_the_old_run_at_the_new_runs_first_checkpoint(capsys, run_dir, data_file):
    for name in ("manifold.png", "samples.png"):              # the old run's pictures
        (run_dir / name).write_bytes(b"old picture")
    (run_dir / "notes.txt").write_text("mine")
    code, _, err = train(capsys, data_file, run_dir, "--latent", "3", "--seed", "5", "--overwrite")
    assert code == 0, err
    header, _ = ckpt.read(run_dir)
    assert header["train"]["config"]["seed"] == 5 and header["model"]["latent_dim"] == 3
    assert not (run_dir / "manifold.png").exists() and not (run_dir / "samples.png").exists()
    assert (run_dir / "notes.txt").read_text() == "mine"           # not a run's file: left alone
    assert len(json.loads((run_dir / "history.json").read_text())) == 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(capsys, run_dir, data_file):
    kept = {name: (run_dir / name).read_bytes() for name in ("checkpoint.npz", "history.json", "history.csv")}
    code, _, err = train(capsys, data_file, run_dir, "--lr", "1e6", "--overwrite")   # diverges in epoch 1
    assert_one_error(code, err, "training diverged")
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept


def test_overwrite_and_resume_exclude_each_other(capsys, run_dir):
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2", "--overwrite")
    assert_one_error(code, err, "--overwrite", "--resume")


def test_help_documents_the_refusal_and_overwrite(capsys):
    code, out, _ = run(capsys, "train", "--help")
    text = " ".join(out.split())
    assert code == 0 and "holds a run is refused" in text and "--overwrite replace the run" in text


# ----------------------------------------------------------------------
# 2. one rule for every file written
# ----------------------------------------------------------------------

def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_says_so(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    class Full:
        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(atomic.WriteError) as e:
        with atomic.atomic_write(target, size=123_456) as f:
            f.write(b"half of it")
            Full().write(b"the rest")
    message = str(e.value)
    assert str(target) in message and "no space left" in message and "123,456 bytes" in message
    assert "free" in message and e.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and parts(tmp_path) == []


def test_atomic_write_refuses_before_writing_what_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_disk", lambda directory: 1000)
    with pytest.raises(atomic.WriteError, match=r"a.bin: not enough space on the device: it needs 2.0 kB "
                                                r"\(2,000 bytes\), 1.0 kB \(1,000 bytes\) free"):
        atomic.write_bytes(tmp_path / "a.bin", b"x" * 2000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, target", [
    (["sample", "-n", "5", "-o"], "s.npy"),
    (["sample", "-n", "5", "-o"], "s.png"),
    (["plot", "-o"], "."),
])
def test_arrays_and_pictures_go_through_the_atomic_rule(capsys, run_dir, tmp_path, monkeypatch, command, target):
    """With a disk too full for them, the old files stay whole and the error names the file."""
    if target != "s.npy":
        pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    out.mkdir()
    old = {name: b"the previous file" for name in ("s.npy", "s.png", "reconstructions.png")}
    for name, content in old.items():
        (out / name).write_bytes(content)
    monkeypatch.setattr(atomic, "free_disk", lambda directory: 100)
    code, _, err = run(capsys, command[0], run_dir, *command[1:], out / target)
    assert_one_error(code, err, str(out), "not enough space on the device", "100 bytes free")
    assert {name: (out / name).read_bytes() for name in old} == old
    assert sorted(p.name for p in out.iterdir()) == sorted(old)


def test_sample_npy_is_what_np_save_writes(capsys, run_dir, tmp_path):
    code, _, err = run(capsys, "sample", run_dir, "-n", "7", "-o", tmp_path / "s.npy")
    assert code == 0, err
    np.save(tmp_path / "want.npy", sv.load(run_dir).sample(7, np.random.default_rng(0)))
    assert (tmp_path / "s.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()


def test_history_goes_through_the_atomic_rule(capsys, data_file, tmp_path, monkeypatch):
    """The checkpoint fits; the history does not: the error names it."""
    real = atomic.free_disk
    monkeypatch.setattr(atomic, "free_disk", lambda d: 10 if (Path(d) / "checkpoint.npz").exists() else real(d))
    code, _, err = train(capsys, data_file, tmp_path / "run")
    assert_one_error(code, err, str(tmp_path / "run" / "history.json"), "10 bytes free")
    assert parts(tmp_path / "run") == []


def test_writing_into_a_missing_directory_names_it(capsys, run_dir, tmp_path):
    code, _, err = run(capsys, "sample", run_dir, "-o", tmp_path / "nowhere" / "s.npy")
    assert_one_error(code, err, f"there is no directory {tmp_path / 'nowhere'}")


# ----------------------------------------------------------------------
# 3. every save checks that what it saves is finite
# ----------------------------------------------------------------------

def test_a_save_refuses_weights_that_are_not_finite(tmp_path):
    model = sv.VAE(12, [8], 3)
    path = ckpt.save(tmp_path / "c.npz", model)
    before = path.read_bytes()
    model.params["dec.0.b"][1] = np.nan
    with pytest.raises(ckpt.NotFiniteError, match=r"param/dec\.0\.b holds NaN or inf"):
        ckpt.save(path, model)
    model.params["dec.0.b"][1] = 0
    with pytest.raises(ckpt.NotFiniteError, match="header"):
        ckpt.save(path, model, train_state={"history": [{"test_total": float("inf")}]})
    assert path.read_bytes() == before and parts(tmp_path) == []


def test_ctrl_c_after_a_step_that_made_the_weights_nan_keeps_the_last_good_checkpoint(run_dir, data_file):
    before = (run_dir / "checkpoint.npz").read_bytes()
    resumed = Run.open(run_dir)
    resumed.config.epochs = 2

    def blow_up_then_interrupt(trainer):
        if trainer.run.step == 8:
            trainer.run.model.params["enc.0.W"][0, 0] = np.nan
            trainer._stop = True

    with pytest.raises(TrainingDiverged, match=r"epoch 2, at the interruption: .*enc\.0\.W holds NaN.*"
                                               r"last good checkpoint \(epoch 1\)"):
        Trainer(resumed, quiet=True, on_batch=blow_up_then_interrupt).fit()
    assert (run_dir / "checkpoint.npz").read_bytes() == before
    again = Run.open(run_dir)
    again.config.epochs = 2
    assert Trainer(again, quiet=True).fit() == "done"          # --resume works on what was kept


# ----------------------------------------------------------------------
# 4. temporaries of killed processes; kill -9 during checkpoint writes
# ----------------------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_are_removed_when_the_run_directory_is_next_trained(capsys, run_dir):
    tag = f"{atomic.MARKER}-{atomic.HOST}"
    dead, live = (f".checkpoint.npz.{tag}-{_dead_pid()}-abcd1234.part",
                  f".checkpoint.npz.{tag}-{os.getpid()}-zxcv5678.part")
    # not this library's temporaries of this machine: an older scratchvae's, another machine's, the user's
    others = (f".checkpoint.npz.{_dead_pid()}-abcd1234.part", ".history.json.q1w2e3r4.part",
              f".checkpoint.npz.{atomic.MARKER}-0123abcd-{_dead_pid()}-abcd1234.part", ".notes.part",
              ".my.notes.part", ".thesis.tex.draft001.part")
    for name in (dead, live, *others):
        (run_dir / name).write_bytes(b"x" * 1000)
    code, _, err = run(capsys, "evaluate", run_dir)               # a command that reads deletes nothing
    assert code == 0, err
    assert parts(run_dir) == sorted([dead, live, *others])
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2", "--no-plots", "-q")
    assert code == 0, err
    assert parts(run_dir) == sorted([live, *others])


def test_kill_9_during_checkpoint_writes_never_leaves_a_checkpoint_that_does_not_load(tmp_path):
    """SIGKILL a training process at random moments while it writes its checkpoint
    (its temporary has appeared); after each kill the checkpoint loads, and the
    next use of the directory removes the temporaries."""
    np.savez(tmp_path / "big.npz", x=np.random.default_rng(0).random((600, 784), dtype=np.float32))
    env = subprocess_env(SCRATCHVAE_BACKEND="numpy")
    rng = np.random.default_rng(13)
    loaded, killed_mid_write = 0, 0
    for attempt in range(5):
        argv = [sys.executable, "-m", "scratchvae", "train", "--dataset", "big.npz", "--hidden", "1500",
                "--latent", "2", "--batch-size", "600", "--epochs", "50", "--out", "run", "--no-plots", "-q"]
        p = subprocess.Popen(argv + (["--overwrite"] if attempt else []), cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen, saves = set(parts(tmp_path / "run")) if (tmp_path / "run").exists() else set(), 0
        deadline = time.monotonic() + 120
        while saves < 1 + attempt % 2 and time.monotonic() < deadline and p.poll() is None:
            new = set(parts(tmp_path / "run")) - seen if (tmp_path / "run").exists() else set()
            saves, seen = saves + len(new), seen | new
            time.sleep(0.0005)
        time.sleep(rng.random() * 0.02)               # somewhere in the write, or just after it
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL, p.stderr.read().decode()
        killed_mid_write += bool(parts(tmp_path / "run"))
        if (tmp_path / "run" / "checkpoint.npz").exists():
            header, _ = ckpt.read(tmp_path / "run")             # a complete checkpoint, never half of one
            sv.load(tmp_path / "run")
            assert header["train"]["epoch"] >= 1
            loaded += 1
    assert killed_mid_write >= 3 and loaded >= 3              # the kills did land during writes
    atomic.remove_stale_temporaries(tmp_path / "run")             # what train does first
    assert parts(tmp_path / "run") == []


# ----------------------------------------------------------------------
# 5. the data's fingerprint
# ----------------------------------------------------------------------

@pytest.mark.parametrize("new_data, changed", [
    (bars(150), "shape (135, 64) now, (180, 64) when the run was trained"),
    (bars(300), "shape (270, 64) now, (180, 64) when the run was trained"),
    (bars(200, seed=9), "the shape it had, (180, 64), but other values"),
])
def test_resume_evaluate_and_complete_refuse_other_data(capsys, run_dir, data_file, new_data, changed):
    before = (run_dir / "checkpoint.npz").read_bytes()
    np.savez(data_file, x=new_data)
    for argv in (["train", "--resume", run_dir, "--epochs", "2", "--no-plots", "-q"], ["evaluate", run_dir],
                 ["complete", run_dir, "--mask", "bottom-half", "-o", run_dir / "c.png", "--steps", "3",
                  "--burn-in", "1"]):
        code, _, err = run(capsys, *argv)
        assert_one_error(code, err, "bars.npz is not the data this run was trained on", changed)
    assert (run_dir / "checkpoint.npz").read_bytes() == before


def test_the_fingerprint_covers_the_labels(tmp_path, tiny_data):
    Trainer(Run(TrainConfig(**SMALL_RUN, conditional="label"), tiny_data, tmp_path), quiet=True).fit()
    y = tiny_data.y_train.copy()
    y[0] = (y[0] + 1) % 4
    relabelled = type(tiny_data)("tiny", tiny_data.x_train, y, tiny_data.x_test, tiny_data.y_test, (6, 6))
    with pytest.raises(DataChangedError, match="training set has the shape it had"):
        Run.open(tmp_path, data=relabelled).x_train
    assert Run.open(tmp_path, data=tiny_data).x_train.shape == (600, 36)


# ----------------------------------------------------------------------
# 6. memory and the header's schema
# ----------------------------------------------------------------------

@pytest.fixture
def little_memory(monkeypatch):
    """A machine with 50 MB available."""
    monkeypatch.setattr(memory, "available_memory", lambda: 50_000_000)


def test_a_model_too_large_is_refused_before_it_is_allocated(little_memory):
    with pytest.raises(memory.NotEnoughMemoryError) as e:
        sv.VAE(784, [4000, 4000], 20)
    assert isinstance(e.value, MemoryError)
    assert "VAE(784-4000-4000-20)" in str(e.value) and "50.0 MB (50,000,000 bytes) is available" in str(e.value)
    model = sv.VAE(784, [400], 20)                    # 8 MB: fits
    with pytest.raises(memory.NotEnoughMemoryError, match="sampling 100,000 examples"):
        model.sample(100_000, np.random.default_rng(0))
    with pytest.raises(memory.NotEnoughMemoryError, match="a training step"):
        model.loss_and_grads(np.full((20_000, 784), 0.5, np.float32), rng=np.random.default_rng(0))


@pytest.mark.parametrize("argv, needle", [
    (["--hidden", "3000,3000"], "its parameters and gradients"),
    (["--latent", "100000"], "its parameters and gradients"),
    (["--iw-samples", "20000"], "x 20,000 samples"),
])
def test_the_command_line_refuses_what_does_not_fit(capsys, data_file, tmp_path, little_memory, argv, needle):
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, *argv, "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, needle, "would take about", "is available")
    assert not (tmp_path / "r").exists()


def test_sample_n_too_large_is_refused(capsys, run_dir, tmp_path, little_memory):
    code, _, err = run(capsys, "sample", run_dir, "-n", "10000000", "-o", tmp_path / "s.npy")
    assert_one_error(code, err, "sampling 10,000,000 examples", "would take about")


@pytest.mark.parametrize("n, samples", [(1, 1), (128, 1), (100, 50), (3, 7)])
def test_the_workspace_estimate_is_a_close_upper_bound(n, samples):
    for model in (sv.VAE(784, [400], 20), sv.VAE(50, [30, 20], 5, context_dim=4, dtype=np.float64)):
        ws = model.workspace(n, samples)
        arrays = [a for v in vars(ws).values() for a in (v if isinstance(v, list) else [v])
                  if isinstance(a, np.ndarray)]
        actual = sum(a.nbytes for a in arrays)
        assert actual <= memory.step_bytes(model, n, samples) <= 1.5 * actual + 1000


def test_an_unreadable_meminfo_falls_back(monkeypatch, tmp_path):
    from scratchvae import sizes
    monkeypatch.setattr(sizes, "MEMINFO", str(tmp_path / "missing"))
    assert sizes.available_memory() is None or sizes.available_memory() > 0
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    monkeypatch.setattr(sizes, "MEMINFO", str(tmp_path / "meminfo"))
    assert sizes.available_memory() == 2048 * 1024


def _drop(*keys):
    def change(h):
        for k in keys[:-1]:
            h = h[k]
        del h[keys[-1]]
    return change


def _set(value, *keys):
    def change(h):
        for k in keys[:-1]:
            h = h[k]
        h[keys[-1]] = value
    return change


@pytest.mark.parametrize("change, needle", [
    (_drop("train", "epoch"), "the checkpoint header has no field train.epoch"),
    (_drop("train", "rng"), "the checkpoint header has no field train.rng"),
    (_drop("model", "input_dim"), "the checkpoint header has no field model.input_dim"),
    (_drop("format_version"), "the checkpoint header has no field format_version"),
    (_set(True, "format_version"), "header field format_version must be an integer >= 1, got true"),
    (_set(0, "format_version"), "format_version must be an integer >= 1, got 0"),
    (_set("16", "model", "hidden"), "model.hidden must be a list of positive integers"),
    (_set(-1, "train", "epoch"), "train.epoch must be an integer >= 0, got -1"),
    (_set(7, "train", "history"), "train.history must be a list of JSON objects"),
    (_set("red", "model", "colour"), "model has fields this scratchvae does not know: colour"),
    (_set({"state": 3}, "train", "rng"), "train.rng is not a state of NumPy's PCG64 generator"),
    (_set([3, 3], "train", "data", "image_shape"), "image_shape [3, 3] does not hold the model's 64 inputs"),
    (_set("SGD", "optimizer", "type"), "optimizer in the header is not the one"),
])
def test_a_header_is_checked_against_its_schema(capsys, run_dir, change, needle):
    edit_checkpoint(run_dir / "checkpoint.npz", header=change)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2", "-q")
    assert_one_error(code, err, needle)


def test_a_header_nested_too_deep_is_corrupt(run_dir):
    with np.load(run_dir / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays[ckpt.HEADER_KEY] = np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8)
    np.savez(run_dir / "checkpoint.npz", **arrays)
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint header"):
        sv.load(run_dir)


@pytest.mark.parametrize("change, needle", [
    (lambda a: a.update({"train/perm": np.zeros(180, np.int64)}), "train/perm is not an order of the 180"),
    (lambda a: a.update({"train/perm": np.arange(50)}), "train/perm is not an order of the 180"),
    (lambda a: a.update({"optim/step": np.arange(3)}), "step must be one integer >= 0"),
    (lambda a: a.update({"optim/m.enc.0.W": a["optim/m.enc.0.W"] * np.nan}), "m.enc.0.W must hold finite"),
])
def test_loop_arrays_that_do_not_fit_are_refused(capsys, tmp_path, data_file, change, needle):
    """An interrupted run (mid-epoch, with its order saved) whose arrays are damaged."""
    resumed = Run(TrainConfig(dataset=str(data_file), **{**SMALL_RUN, "hidden": [16]}), out_dir=tmp_path / "r")
    Trainer(resumed, quiet=True, on_batch=lambda t: setattr(t, "_stop", t.run.step == 2)).fit()
    edit_checkpoint(tmp_path / "r" / "checkpoint.npz", arrays=change)
    code, _, err = run(capsys, "train", "--resume", tmp_path / "r", "-q", "--no-plots")
    assert_one_error(code, err, needle)


def test_semi_supervised_on_data_without_labels(capsys, data_file, tmp_path):
    code, _, err = run(capsys, "train", "--dataset", data_file, "--semi-supervised", "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, "semi-supervised training needs labels")


# ----------------------------------------------------------------------
# 7. the smaller messages
# ----------------------------------------------------------------------

def test_a_plain_npy_is_not_a_checkpoint(capsys, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 3)))
    with pytest.raises(ckpt.CheckpointError, match="holds one NumPy array, not a checkpoint"):
        sv.load(tmp_path / "x.npy")
    code, _, err = run(capsys, "evaluate", tmp_path / "x.npy")
    assert_one_error(code, err, "x.npy: holds one NumPy array, not a checkpoint")


def _idx_set(folder: Path, n_train=20, n_test=10, top_label=9):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        labels = (np.arange(n) % 10).astype(np.uint8)
        labels[:1] = top_label
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.mark.parametrize("files, needle", [
    (dict(n_train=0), "train-images-idx3-ubyte.gz: holds no images"),
    (dict(n_test=0), "t10k-images-idx3-ubyte.gz: holds no images"),
    (dict(top_label=250), "labels must lie in 0-9 (mnist has 10 classes), found 250"),
])
def test_idx_files_without_images_or_with_foreign_labels(capsys, tmp_path, files, needle):
    _idx_set(tmp_path / "mnist", **files)
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", tmp_path, "--out", tmp_path / "r", "-q")
    assert_one_error(code, err, needle)


@pytest.mark.parametrize("option", ["--epochs", "--seed", "--batch-size", "--latent"])
def test_integers_too_large_are_refused_by_the_parser(capsys, option):
    code, _, err = run(capsys, "train", option, "1" + "0" * 30)
    assert code == 2 and "Traceback" not in err
    assert f"argument {option}: must be an integer below 2**63" in err


def test_an_unknown_configuration_field_is_named(capsys, run_dir):
    edit_checkpoint(run_dir / "checkpoint.npz", header=_set("red", "train", "config", "colour"))
    code, _, err = run(capsys, "evaluate", run_dir)
    assert_one_error(code, err, "training configuration in the header has fields this scratchvae does not know: "
                                "colour")


@pytest.mark.parametrize("epochs, needle", [
    (["--epochs", "1"], "--epochs 1 asks for no more than the 1 epochs"),
    ([], "has trained all its 1 epochs"),
])
def test_resume_with_nothing_to_do_says_so(capsys, run_dir, epochs, needle):
    before = (run_dir / "checkpoint.npz").read_bytes()
    code, _, err = run(capsys, "train", "--resume", run_dir, *epochs, "-q")
    assert_one_error(code, err, needle, "--epochs 2 or more")
    assert (run_dir / "checkpoint.npz").read_bytes() == before


def test_a_run_finds_its_array_file_from_any_directory(capsys, tmp_path, monkeypatch):
    np.savez(tmp_path / "bars.npz", x=bars(200))
    monkeypatch.chdir(tmp_path)
    code, _, err = train(capsys, "bars.npz", "run")
    assert code == 0, err
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = run(capsys, "evaluate", "../run")
    assert code == 0, err
    assert out.startswith("bars.npz test set (20 examples)")
    code, _, err = run(capsys, "train", "--resume", "../run", "--dataset", "../bars.npz", "--epochs", "2", "-q",
                       "--no-plots")                             # the same file by another relative name
    assert code == 0, err


# ----------------------------------------------------------------------
# 8. smaller: empty directories, read-only --out, complex parameters
# ----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_failed_run_leaves_no_directory_it_made(capsys, data_file, tmp_path):
    (tmp_path / "a").mkdir()
    code, _, err = train(capsys, data_file, tmp_path / "a" / "b" / "run", "--lr", "1e6")
    assert_one_error(code, err, "training diverged", "no checkpoint was written")
    assert list((tmp_path / "a").iterdir()) == []                   # a/ was there before: kept


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write into: a read-only tmpfs as root, a 0o555 folder otherwise."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("root cannot be kept out of a directory by its mode, and mount -t tmpfs failed here")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_a_read_only_out_is_found_before_training(capsys, data_file, read_only_dir):
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "3", "--out", read_only_dir,
                       "--no-plots")
    assert err.splitlines()[0].startswith("training VAE")        # no epoch line: refused before the first
    assert_one_error(code, "\n".join(err.splitlines()[1:]), f"cannot write into {read_only_dir}")


@pytest.mark.parametrize("dtype", [np.complex64, np.int32])
def test_parameters_that_are_not_real_floats_are_refused(capsys, run_dir, dtype):
    edit_checkpoint(run_dir / "checkpoint.npz",
                    arrays=lambda a: a.update({"param/enc.0.W": a["param/enc.0.W"].astype(dtype)}))
    code, _, err = run(capsys, "evaluate", run_dir)
    assert_one_error(code, err, f"parameter enc.0.W has dtype {np.dtype(dtype)}")


# ----------------------------------------------------------------------
# a real full disk: a small tmpfs
# ----------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MB tmpfs (needs root and mount -t tmpfs)."""
    d = tmp_path / "fs"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mount -t tmpfs failed here: {r.stderr.strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def _fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` but about ``leave`` bytes."""
    free = atomic.free_disk(directory)
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_keeps_every_old_file_and_names_the_new_one(capsys, run_dir, data_file, small_tmpfs):
    shutil.copy(data_file, small_tmpfs / "bars.npz")
    code, _, err = train(capsys, small_tmpfs / "bars.npz", small_tmpfs / "run")   # checkpoint of ~30 kB
    assert code == 0, err
    np.save(small_tmpfs / "s.npy", np.arange(10.0))
    kept = {p.name: p.read_bytes() for p in [small_tmpfs / "s.npy", *(small_tmpfs / "run").iterdir()]}
    _fill(small_tmpfs, 8192)

    # a write that does not fit, known up front: the checkpoint of the next epoch, an array, a picture
    code, _, err = run(capsys, "train", "--resume", small_tmpfs / "run", "--epochs", "2", "-q", "--no-plots")
    assert_one_error(code, err, f"cannot write {small_tmpfs / 'run' / 'checkpoint.npz'}: not enough space",
                     "free")
    code, _, err = run(capsys, "sample", run_dir, "-n", "2000", "-o", small_tmpfs / "s.npy")
    assert_one_error(code, err, f"cannot write {small_tmpfs / 's.npy'}: not enough space", "it needs 512.1 kB")
    # a write of unknown size that fills the disk as it goes
    with pytest.raises(atomic.WriteError, match=r"big\.bin: no space left on the device: .* were written when it "
                                                r"filled up, .* free"):
        with atomic.atomic_write(small_tmpfs / "big.bin") as f:
            for _ in range(100):
                f.write(b"\1" * 10_000)
    now = {p.name: p.read_bytes() for p in [small_tmpfs / "s.npy", *(small_tmpfs / "run").iterdir()]}
    assert now == kept                                        # every old file whole, no temporary left
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["bars.npz", "filler", "run", "s.npy"]


# ----------------------------------------------------------------------
# issue 21, items 4, 7, 8: files not asked for, untrusted checkpoints, permissions
# ----------------------------------------------------------------------

def test_reading_a_checkpoint_deletes_nothing_beside_it(capsys, run_dir, tmp_path):
    """`sample ~/Downloads/model.npz` once deleted ~/Downloads/.thesis.tex.draft001.part."""
    downloads = tmp_path / "Downloads"
    downloads.mkdir()
    shutil.copy(run_dir / "checkpoint.npz", downloads / "model.npz")
    theirs = [".thesis.tex.draft001.part", ".notes.part", f".model.npz.{_dead_pid()}-abcd1234.part",
              f".model.npz.{atomic.MARKER}-{atomic.HOST}-{_dead_pid()}-abcd1234.part"]
    for name in theirs:
        (downloads / name).write_bytes(b"mine")
    for argv in (["sample", downloads / "model.npz", "-n", "2", "-o", tmp_path / "s.npy"],
                 ["evaluate", downloads / "model.npz"]):
        code, _, err = run(capsys, *argv)
        assert code == 0, err
    assert sorted(p.name for p in downloads.iterdir()) == sorted(["model.npz", *theirs])


def _zeros_member(path: Path, name: str, nbytes: int) -> None:
    """Add to the zip ``path`` a compressed .npy member ``name`` of ``nbytes`` zero bytes."""
    import zipfile
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.uint8))
    header["shape"] = (nbytes,)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as z, z.open(name, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        block = bytes(1 << 20)
        for _ in range(nbytes >> 20):
            f.write(block)


def test_an_unknown_array_in_a_checkpoint_is_refused_before_it_is_read(capsys, run_dir, tmp_path):
    """1 MB of compressed zeros under an unknown name made `sample` take 1.09 GB and exit 0."""
    _zeros_member(run_dir / "checkpoint.npz", "zeros.npy", 1 << 30)
    assert (run_dir / "checkpoint.npz").stat().st_size < 3 << 20
    code, _, err = run(capsys, "sample", run_dir, "-n", "2", "-o", tmp_path / "s.npy")
    assert_one_error(code, err, "unexpected array 'zeros'", "param/, optim/ and train/", "use the checkpoint")
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("member, words", [
    ("param/enc.0.W.npy", ["do not fit", "param/enc.0.W has shape (1073741824,)", "the model's is (64, 16)"]),
    ("optim/m.enc.0.W.npy", ["do not fit", "optim/m.enc.0.W has shape (1073741824,)", "the model's is (64, 16)"]),
    ("train/perm.npy", ["train/perm", "(1073741824,)", "more than the 180 of its training set"]),
])
def test_an_array_larger_than_the_model_is_refused_before_it_is_read(capsys, run_dir, tmp_path, member, words):
    with np.load(run_dir / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files if k != member[:-4]}
    np.savez(run_dir / "checkpoint.npz", **arrays)
    _zeros_member(run_dir / "checkpoint.npz", member, 1 << 30)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2", "--no-plots", "-q")
    assert_one_error(code, err, *words)


def test_a_member_that_declares_more_than_it_holds_is_refused(run_dir, monkeypatch):
    """The .npy header inside says 10^12 floats, the zip directory says a few bytes: corrupt, not read."""
    with np.load(run_dir / "checkpoint.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(run_dir / "checkpoint.npz", **{k: v for k, v in arrays.items() if k != "param/enc.0.W"})
    import zipfile
    header = np.lib.format.header_data_from_array_1_0(arrays["param/enc.0.W"])
    header["shape"] = (10 ** 6, 10 ** 6)
    with zipfile.ZipFile(run_dir / "checkpoint.npz", "a") as z, z.open("param/enc.0.W.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
    with pytest.raises(ckpt.CheckpointError, match=r"param/enc\.0\.W declares .* holds only"):
        ckpt.read(run_dir)


def test_arrays_that_do_not_fit_in_memory_are_refused_before_they_are_read(run_dir, monkeypatch):
    monkeypatch.setattr(ckpt, "available_memory", lambda: 1000)
    with pytest.raises(memory.NotEnoughMemoryError, match=r"checkpoint\.npz: its arrays need .* of memory, "
                                                          r"only .*1,000 bytes\) is available; free some memory"):
        ckpt.read(run_dir)


def test_checkpoints_written_before_keep_loading():
    data = Path(__file__).parent / "data"
    for path in sorted(data.glob("*/*checkpoint.npz")):
        header, groups = ckpt.read(path)
        assert groups["param"], path
        (ckpt.load_m2 if "m2" in header.get("train", {}) else sv.load)(path)
        Run.open(path, data=None)


@pytest.mark.parametrize("mask", [0o077, 0o022, 0o002, 0o027])
def test_files_are_created_with_the_users_umask(capsys, run_dir, tmp_path, data_file, mask):
    old = os.umask(mask)
    try:
        np.save(tmp_path / "numpy.npy", np.zeros(2))
        code, _, err = run(capsys, "sample", run_dir, "-n", "2", "-o", tmp_path / "s.npy")
        assert code == 0, err
        code, _, err = train(capsys, data_file, tmp_path / "new")
        assert code == 0, err
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    assert (tmp_path / "numpy.npy").stat().st_mode & 0o777 == want        # what NumPy itself does
    for p in [tmp_path / "s.npy", *(tmp_path / "new").iterdir()]:
        assert p.stat().st_mode & 0o777 == want, p


def test_a_replaced_file_keeps_its_mode(capsys, run_dir, tmp_path):
    (run_dir / "checkpoint.npz").chmod(0o640)
    (tmp_path / "s.npy").write_bytes(b"old")
    (tmp_path / "s.npy").chmod(0o604)
    code, _, err = run(capsys, "sample", run_dir, "-n", "2", "-o", tmp_path / "s.npy")
    assert code == 0, err
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2", "--no-plots", "-q")
    assert code == 0, err
    assert (tmp_path / "s.npy").stat().st_mode & 0o777 == 0o604
    assert (run_dir / "checkpoint.npz").stat().st_mode & 0o777 == 0o640


# ----------------------------------------------------------------------
# issue 21, items 6, 11, 12, 13: user-sized allocations, outside backends, M2 with every label, top-level backends
# ----------------------------------------------------------------------

@pytest.fixture
def labelled_run(tmp_path, monkeypatch):
    """A conditional (label) run on 300 synthetic digits, 30 of each class."""
    from scratchvae.data import datasets as ds
    monkeypatch.setattr(ds, "SYNTHETIC_SIZES", (300, 50))
    out = tmp_path / "cond"
    assert sv.run.cli.main(["train", "--conditional", "label", *SMALL, "--epochs", "1", "--out", str(out), "-q",
                            "--no-plots"]) == 0
    return out


@pytest.mark.parametrize("argv, needles", [
    (["interpolate", "RUN", "--prior", "--steps", "30000000", "--array", "OUT.npy"],
     ["interpolating with --steps 30,000,000", "lower --steps"]),
    (["sample", "RUN", "-n", "1000000", "-o", "OUT.png"], ["a picture of 1,000,000 images", "lower -n"]),
    (["sample", "RUN", "--sampler", "gmm:150", "-o", "OUT.npy"], ["--sampler gmm:150", "lower N of gmm:N"]),
])
def test_user_sizes_are_checked_before_they_are_allocated(capsys, run_dir, tmp_path, monkeypatch, argv, needles):
    monkeypatch.setattr(memory, "available_memory", lambda: 500_000)
    argv = [str(run_dir) if a == "RUN" else str(tmp_path / a) if a.startswith("OUT") else a for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_error(code, err, *needles, "would take about", "is available")
    assert not list(tmp_path.glob("OUT*"))


def test_a_picture_matplotlib_cannot_draw_is_refused_before_decoding(capsys, run_dir, tmp_path):
    code, _, err = run(capsys, "interpolate", run_dir, "--prior", "--steps", "5000", "-o", tmp_path / "i.png")
    assert_one_error(code, err, "a picture of 10,000 images in 5,000 columns", "lower --steps")


def test_a_conditional_models_samples_of_every_class_are_checked_first(capsys, labelled_run, tmp_path, little_memory):
    code, _, err = run(capsys, "sample", labelled_run, "-n", "10000000", "-o", tmp_path / "s.npy")
    assert_one_error(code, err, "sampling 100,000,000 examples (10,000,000 for each of 10 classes)", "lower -n")


def test_bench_batch_size_is_checked_first(capsys, little_memory):
    code, _, err = run(capsys, "bench", "--batch-size", "10000000", "--seconds", "0.01")
    assert_one_error(code, err, "bench --batch-size 10,000,000", "would take about", "lower --batch-size")


def test_the_api_checks_interpolation_mixtures_and_the_iw_bound_first(little_memory):
    from scratchvae.inference.evaluate import log_likelihood
    from scratchvae.inference.gmm import GaussianMixture
    from scratchvae.inference.interpolate import interpolate
    model, rng = sv.VAE(64, [16], 2), np.random.default_rng(0)
    with pytest.raises(memory.NotEnoughMemoryError, match="interpolating 10,000,000 steps per path"):
        interpolate(model, np.zeros(2), np.ones(2), 10_000_000)
    with pytest.raises(memory.NotEnoughMemoryError, match="a mixture of 5,000 components fitted to 5,000 codes"):
        GaussianMixture(5000).fit(rng.standard_normal((5000, 2)), rng)
    with pytest.raises(memory.NotEnoughMemoryError, match="the importance-weighted bound, 5,000 samples"):
        log_likelihood(model, np.full((1000, 64), 0.5, np.float32), 5000, rng, batch_size=1000, chunk=5000)
    assert interpolate(model, np.zeros(2), np.ones(2), 10).shape == (2, 10, 64)        # what fits still runs


BACKENDS = {
    "mytoplevel": "from scratchvae.kernels.numpy import *\n",
    "raises_at_import": "raise KeyError('setting missing')\n",
    "raises_in_gemm": "from scratchvae.kernels.numpy import *\n"
                      "from scratchvae.kernels import numpy as _n\nimport functools\n"
                      "@functools.wraps(_n.gemm)\ndef gemm(*args, **kwargs):\n    raise ZeroDivisionError('oops')\n",
}


@pytest.fixture
def outside_backends(tmp_path, monkeypatch):
    """Top-level modules on the path: a working backend, one whose import raises, one whose gemm raises."""
    from scratchvae import kernels
    for name, text in BACKENDS.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = kernels.get_backend()
    yield
    kernels.set_backend(before)
    for name in BACKENDS:
        kernels._registry.pop(name, None)
        sys.modules.pop(name, None)


def test_a_top_level_module_is_a_backend(outside_backends):
    from scratchvae import kernels
    kernels.set_backend("mytoplevel")
    assert kernels.get_backend() == "mytoplevel"
    with pytest.raises(ValueError, match=r"unknown kernel backend 'no_such_backend_mod': neither a registered "
                                         r"backend .* nor an importable module"):
        kernels.set_backend("no_such_backend_mod")


def test_an_outside_backend_that_raises_is_one_line_naming_it(capsys, run_dir, tmp_path, outside_backends,
                                                               monkeypatch):
    monkeypatch.setenv("SCRATCHVAE_BACKEND", "raises_at_import")
    code, _, err = run(capsys, "bench", "--backend", "raises_at_import", "--seconds", "0.01")
    assert_one_error(code, err, "kernel backend 'raises_at_import'", "KeyError", "setting missing")
    code, _, err = run(capsys, "bench", "--backend", "raises_in_gemm", "--seconds", "0.01")
    assert_one_error(code, err, "kernel backend 'raises_in_gemm'", "kernel gemm raised ZeroDivisionError: oops")


def test_a_builtin_kernels_error_is_not_renamed():
    from scratchvae import kernels
    before = kernels.get_backend()
    try:
        kernels.set_backend("numpy")
        with pytest.raises(ValueError) as e:
            kernels.ops.gemm(np.ones((2, 3)), np.ones((4, 5)))
        assert not isinstance(e.value, kernels.BackendError)
    finally:
        kernels.set_backend(before)


def test_m2_with_every_example_labelled_is_refused_with_the_reason(capsys, tmp_path, monkeypatch):
    from scratchvae.data import datasets as ds
    from scratchvae.model.m2 import split_labels
    monkeypatch.setattr(ds, "SYNTHETIC_SIZES", (300, 50))              # 30 examples of each class
    code, _, err = run(capsys, "train", "--semi-supervised", "--labels-per-class", "30", *SMALL, "--epochs", "1",
                       "--out", tmp_path / "m2", "-q", "--no-plots")
    assert_one_error(code, err, "30 labels per class label all 300 training examples", "below 30")
    assert not (tmp_path / "m2").exists()
    labelled, unlabelled = split_labels(np.repeat(np.arange(3), 5), 4, 0)       # one unlabelled of each: fine
    assert len(labelled) == 12 and len(unlabelled) == 3


# ----------------------------------------------------------------------
# issue 21, items 1, 2, 3, 5: one writer per run directory, signals, empty paths
# ----------------------------------------------------------------------

from scratchvae.run.lock import LOCK  # noqa: E402


def test_resuming_a_backup_beside_its_run_is_refused_and_says_how(capsys, run_dir):
    """`train --resume runs/A/epoch1.npz` once continued the copy over runs/A/checkpoint.npz and its history."""
    shutil.copy(run_dir / "checkpoint.npz", run_dir / "epoch1.npz")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2", "--no-plots", "-q")
    assert code == 0, err                                                  # the run goes on to epoch 2
    kept = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    code, _, err = run(capsys, "train", "--resume", run_dir / "epoch1.npz", "--epochs", "3", "--no-plots", "-q")
    assert_one_error(code, err, f"{run_dir / 'epoch1.npz'} is not the checkpoint of the run in {run_dir}",
                     "would write over that run", f"cp {run_dir / 'epoch1.npz'} ", f"--resume {run_dir}")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == kept     # epoch 2 is still there
    new = run_dir.parent / "run-from-epoch1"                              # the way out the message gives works
    new.mkdir()
    shutil.copy(run_dir / "epoch1.npz", new / "checkpoint.npz")
    code, _, err = run(capsys, "train", "--resume", new, "--epochs", "2", "--no-plots", "-q")
    assert code == 0, err


@pytest.mark.parametrize("option", ["--resume", "--out"])
def test_an_empty_path_is_refused(capsys, data_file, tmp_path, monkeypatch, option):
    """`train --resume "$RUN"` with RUN unset once started a fresh default training."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "1", "--no-plots", option, "")
    assert_one_error(code, err, f"{option} was given an empty path")
    assert not (tmp_path / "runs").exists()


def _trainer(tmp_path, *extra, epochs="100000", data="bars.npz"):
    """A training subprocess on tmp_path/bars.npz (the data_file fixture; checkpoints of a few kB)."""
    argv = [sys.executable, "-m", "scratchvae", "train", "--dataset", data, *SMALL, "--epochs", epochs,
            "--no-plots", *extra]
    return subprocess.Popen(argv, cwd=tmp_path, env=subprocess_env(SCRATCHVAE_BACKEND="numpy"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, p, seconds=60):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_training_as_ctrl_c_does(data_file, tmp_path, sig):
    """SIGTERM (timeout, docker stop, systemd, schedulers) once killed training at once: nothing saved or said."""
    p = _trainer(tmp_path, "--out", "run")
    _wait_for(tmp_path / "run" / "checkpoint.npz", p)                      # training, epoch 1 done
    time.sleep(0.05)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err
    assert err.splitlines()[-1] == (f"interrupted by {signal.Signals(sig).name}: checkpoint saved; "
                                    "continue with scratchvae train --resume run"), err
    assert "Traceback" not in err and out == ""
    header, _ = ckpt.read(tmp_path / "run")
    state = header["train"]
    assert state["epoch"] >= 1 and len(json.loads((tmp_path / "run" / "history.json").read_text())) == state["epoch"]
    assert not (tmp_path / "run" / LOCK).exists()


def test_a_second_trainer_is_told_the_directory_is_in_use_and_by_whom(data_file, tmp_path):
    first = _trainer(tmp_path, "--out", "run")
    try:
        _wait_for(tmp_path / "run" / "checkpoint.npz", first)
        for extra in (["--out", "run", "--overwrite", "--epochs", "2"], ["--resume", "run", "--epochs", "200000"]):
            second = _trainer(tmp_path, "-q", *extra)
            try:
                out, err = second.communicate(timeout=60)
            finally:
                second.kill()
            assert_one_error(second.returncode, err, "run is in use", f"process {first.pid} on ")
        assert first.poll() is None                                        # the first trains on, untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 128 + signal.SIGTERM


def test_two_trainers_started_together_one_writes_the_run(data_file, tmp_path):
    """Both once passed the "holds a run" check and exited 0, the checkpoint and history from different runs."""
    np.savez(tmp_path / "more.npz", x=bars(6000))          # a first epoch longer than a start: the two overlap
    procs = [_trainer(tmp_path, "--out", "run", "-q", "--seed", str(seed), epochs="2", data="more.npz")
             for seed in (1, 2)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    (code, err), = [r for i, r in enumerate(results) if i not in winners]
    assert_one_error(code, err)
    assert "is in use" in err or "already holds a run" in err, err
    header, _ = ckpt.read(tmp_path / "run")
    assert header["train"]["config"]["seed"] == winners[0] + 1
    assert [r["epoch"] for r in json.loads((tmp_path / "run" / "history.json").read_text())] == [1, 2]
    assert not (tmp_path / "run" / LOCK).exists()


# ----------------------------------------------------------------------
# issue 21: the small ones
# ----------------------------------------------------------------------

def _datasets_into(stdout, tmp_path):
    """``python -m scratchvae datasets`` with its standard output on ``stdout``: (exit code, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "scratchvae", "datasets"], stdout=stdout, stderr=subprocess.PIPE,
                         cwd=tmp_path, env=subprocess_env(), text=True)
    if stdout is subprocess.PIPE:
        p.stdout.close()                                   # the reader is gone, as in `| head -0`
    err = p.stderr.read()
    return p.wait(timeout=120), err


def test_a_closed_stdout_ends_quietly_like_other_tools(tmp_path):
    """`scratchvae datasets | head -0` said "error: [Errno 32] Broken pipe" and exited 1."""
    code, err = _datasets_into(subprocess.PIPE, tmp_path)
    assert (code, err) == (141, "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_stdout_is_not_reported_as_a_full_disk(tmp_path):
    """`> /dev/full` said "error: [Errno 28] No space left on device", as if a file of the command's failed."""
    with open("/dev/full", "w") as full:
        code, err = _datasets_into(full, tmp_path)
    assert_one_error(code, err, "cannot write to standard output", "redirect it elsewhere")


def test_a_tiny_sigma_is_refused_as_too_small_not_reported_as_divergence(capsys, data_file, tmp_path):
    """`--likelihood gaussian_fixed --sigma 1e-30` said "training diverged ... lower the learning rate"."""
    code, _, err = train(capsys, data_file, tmp_path / "run", "--likelihood", "gaussian_fixed", "--sigma", "1e-30")
    assert_one_error(code, err, "sigma 1e-30 is too small for float32", "use sigma >= 1e-08")
    assert "diverged" not in err.split(":")[2]
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="sigma 1e-30 is too small for float32"):
        sv.VAE(8, [4], 2, likelihood="gaussian_scalar", sigma=1e-30)
    sv.VAE(8, [4], 2, likelihood="gaussian_fixed", sigma=1e-30, dtype=np.float64)   # float64 takes it
    sv.VAE(8, [4], 2, likelihood="gaussian_fixed", sigma=1e-8)                       # the bound itself


# ----------------------------------------------------------------------
# issue 21, items 9, 10: the shape of (n, h, w) arrays; a run finds its data by fingerprint, not only by path
# ----------------------------------------------------------------------

def _images(tmp_path, shape, name="faces.npy"):
    path = tmp_path / name
    np.save(path, np.random.default_rng(0).random(shape, dtype=np.float32))
    return path


def test_an_n_h_w_array_keeps_its_shape_in_pictures_checkpoints_and_exports(capsys, tmp_path):
    """(n, 6, 4) (like Frey's 28x20 faces) once had no pictures, "not images"; (n, 4, 16) was drawn as 8x8."""
    faces = _images(tmp_path, (60, 6, 4))
    code, _, err = run(capsys, "train", "--dataset", faces, *SMALL, "--epochs", "1", "--out", tmp_path / "r", "-q")
    assert code == 0, err
    assert (tmp_path / "r" / "samples.png").exists() and (tmp_path / "r" / "reconstructions.png").exists()
    faces.unlink()                                   # the shape comes from the checkpoint, not the data
    assert tuple(Run.open(tmp_path / "r").image_shape) == (6, 4)
    code, _, err = run(capsys, "sample", tmp_path / "r", "-n", "4", "-o", tmp_path / "x.png")
    assert code == 0, err
    wide = _images(tmp_path, (60, 4, 16), "wide.npy")
    code, _, err = run(capsys, "train", "--dataset", wide, *SMALL, "--epochs", "1", "--out", tmp_path / "w", "-q",
                       "--no-plots")
    assert code == 0, err
    assert ckpt.read(tmp_path / "w")[0]["train"]["data"]["image_shape"] == [4, 16]
    code, _, err = run(capsys, "export", tmp_path / "w", "-o", tmp_path / "exp")
    assert code == 0, err
    assert json.loads((tmp_path / "exp" / "vae.json").read_text())["image_shape"] == [4, 16]


def test_completion_masks_follow_an_n_h_w_arrays_shape(tmp_path):
    wide = _images(tmp_path, (40, 4, 16), "wide.npy")
    r = Run(TrainConfig(dataset=str(wide), conditional="mask:block", **SMALL_RUN))
    assert r.data.image_shape == (4, 16)
    missing = r.c_test[:, 64:].reshape(-1, 4, 16).astype(bool)
    for m in missing:                               # a 2x8 block of the 4x16 image, not a 4x4 block of 8x8
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        assert len(rows) == 2 and len(cols) == 8 and cols[-1] - cols[0] == 7 and m.sum() == 16


@pytest.fixture
def moved(capsys, data_file, tmp_path):
    """A run trained on an array file that then moved to tmp_path/new/: (run directory, its new path)."""
    code, _, err = train(capsys, data_file, tmp_path / "run")
    assert code == 0, err
    (tmp_path / "new").mkdir()
    return tmp_path / "run", Path(shutil.move(data_file, tmp_path / "new" / data_file.name))


@pytest.mark.parametrize("argv", [["train", "--resume", "RUN", "--epochs", "E", "-q"], ["evaluate", "RUN"],
                                  ["plot", "RUN", "-o", "OUT"], ["complete", "RUN", "--mask", "block", "-o", "OUT.png"],
                                  ["interpolate", "RUN", "--from", "0", "--to", "1", "-o", "OUT.png"],
                                  ["sample", "RUN", "--sampler", "gmm:2", "-o", "OUT.npy"]])
def test_a_run_whose_data_moved_says_so_and_how_to_point_it_at_them(capsys, moved, tmp_path, argv):
    """Every command once failed with a bare "[Errno 2] No such file or directory" naming the old path."""
    run_dir, new = moved
    argv = [str(run_dir) if a == "RUN" else a.replace("OUT", str(tmp_path / "out")) for a in argv]
    code, _, err = run(capsys, *["2" if a == "E" else a for a in argv])
    assert_one_error(code, err, f"the run's data set {tmp_path / 'bars.npz'} is not there", "--dataset PATH",
                     "--data-dir DIR")
    assert "Errno" not in err
    for epochs, where in (("2", ["--dataset", new]), ("3", ["--data-dir", new.parent])):
        code, _, err = run(capsys, *[epochs if a == "E" else a for a in argv], *where)
        assert code == 0, err


def test_resume_takes_the_same_data_at_a_new_path_and_keeps_it(capsys, moved):
    """--resume RUN --dataset NEW/SAME.npz was refused as "differs from its ...", though the fingerprint agrees."""
    run_dir, new = moved
    code, _, err = run(capsys, "train", "--resume", run_dir, "--dataset", new, "--epochs", "2", "-q", "--no-plots")
    assert code == 0, err
    assert ckpt.read(run_dir)[0]["train"]["config"]["dataset"] == str(new)
    code, _, err = run(capsys, "evaluate", run_dir)            # the run finds its data where they are now
    assert code == 0, err


def test_other_data_at_a_new_path_are_refused_by_the_fingerprint(capsys, moved, tmp_path):
    run_dir, new = moved
    np.savez(tmp_path / "other.npz", x=bars(200, seed=1))
    code, _, err = run(capsys, "evaluate", run_dir, "--dataset", tmp_path / "other.npz")
    assert_one_error(code, err, "other.npz is not the data this run was trained on")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--dataset", tmp_path / "other.npz", "--epochs", "2")
    assert_one_error(code, err, "other.npz is not the data this run was trained on")


def test_a_run_without_a_fingerprint_takes_no_data_from_elsewhere(capsys, moved):
    run_dir, new = moved
    edit_checkpoint(run_dir / "checkpoint.npz", header=lambda h: h["train"]["data"].pop("fingerprint"))
    code, _, err = run(capsys, "evaluate", run_dir, "--dataset", new)
    assert_one_error(code, err, "saved without a fingerprint of its data", "put those data back")


def test_data_dir_means_where_to_look_for_an_array_file(capsys, data_file, tmp_path, monkeypatch):
    """--data-dir was silently ignored for an array file (training, and every command of a saved run)."""
    monkeypatch.chdir(tmp_path / "..")                          # data_file's name is not in this folder
    code, _, err = run(capsys, "train", "--dataset", data_file.name, "--data-dir", data_file.parent, *SMALL,
                       "--epochs", "1", "--out", tmp_path / "r", "--no-plots", "-q")
    assert code == 0, err
    code, _, err = run(capsys, "sample", tmp_path / "r", "-o", tmp_path / "x.npy", "--data-dir", tmp_path)
    assert_one_error(code, err, "--data-dir", "--sampler gmm:N", "leave it out")

