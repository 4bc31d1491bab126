"""The training loop: resume bit for bit, Ctrl-C, divergence, warm-up, history, real data."""
import json
import os
import signal

import numpy as np
import pytest

import scratchvae as sv
from scratchvae.run import checkpoint as ckpt
from scratchvae.run import Run, TrainConfig, Trainer, TrainingDiverged
from scratchvae.run.run import load_data

SMALL = dict(dataset="tiny", epochs=3, batch_size=64, hidden=[16], latent_dim=2, lr=3e-3)


def new(config, data, out_dir, **kwargs):
    """A trainer of a new run."""
    return Trainer(Run(config, data, out_dir), **kwargs)


def resumed(path, data, epochs=None, **kwargs):
    """A trainer that continues the run saved in ``path`` (up to ``epochs`` in all)."""
    run = Run.open(path, data=data)
    if epochs is not None:
        run.config.epochs = epochs
    return Trainer(run, **kwargs)


def _final_state(trainer):
    run = trainer.run
    last = "test_accuracy" if run.config.semi_supervised else "test_total"
    return ({k: v.copy() for k, v in run.model.params.items()},
            run.optimizer.state_dict(), [r[last] for r in run.history])


def _assert_same(a, b):
    for x, y in zip(a[:2], b[:2]):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert a[2] == b[2]


@pytest.mark.parametrize("extra", [{}, {"binarize": "dynamic", "warmup_epochs": 2.0}])
def test_resume_at_an_epoch_boundary_is_bit_for_bit(tiny_data, tmp_path, extra):
    config = TrainConfig(**SMALL, **extra)
    whole = new(config, tiny_data, tmp_path / "whole", quiet=True)
    assert whole.fit() == "done"

    first = new(TrainConfig(**{**SMALL, **extra, "epochs": 1}), tiny_data, tmp_path / "split", quiet=True)
    first.fit()
    rest = resumed(tmp_path / "split", tiny_data, epochs=3, quiet=True)
    assert rest.run.epoch == 1 and rest.fit() == "done"
    _assert_same(_final_state(whole), _final_state(rest))


def test_ctrl_c_mid_epoch_saves_and_resume_is_bit_for_bit(tiny_data, tmp_path):
    config = TrainConfig(**SMALL)
    whole = new(config, tiny_data, tmp_path / "whole", quiet=True)
    whole.fit()

    def interrupt(trainer):
        if trainer.run.epoch == 1 and trainer.run.batch == 4:
            os.kill(os.getpid(), signal.SIGINT)      # a real Ctrl-C, delivered to the handler

    stopped = new(config, tiny_data, tmp_path / "cut", quiet=True, on_batch=interrupt)
    assert stopped.fit() == "interrupted"
    header, groups = ckpt.read(tmp_path / "cut")
    assert (header["train"]["epoch"], header["train"]["batch"]) == (1, 4)
    assert "perm" in groups["train"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # handler restored

    rest = resumed(tmp_path / "cut", tiny_data, quiet=True)
    assert rest.fit() == "done"
    _assert_same(_final_state(whole), _final_state(rest))
    assert len(rest.run.history) == 3


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    saved = {}

    def poison(trainer):
        if trainer.run.epoch == 1 and trainer.run.batch == 1:
            saved["bytes"] = (tmp_path / "checkpoint.npz").read_bytes()   # written after epoch 1
        if trainer.run.epoch == 1 and trainer.run.batch == 2:
            trainer.run.model.params["enc.logvar.b"][:] = 1e4               # exp overflows next step

    trainer = new(TrainConfig(**SMALL), tiny_data, tmp_path, quiet=True, on_batch=poison)
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 3.*last good checkpoint \(epoch 1\)"):
            trainer.fit()
    assert (tmp_path / "checkpoint.npz").read_bytes() == saved["bytes"]
    header, _ = ckpt.read(tmp_path)
    assert header["train"]["epoch"] == 1
    assert np.all(np.isfinite(sv.load(tmp_path).params["enc.logvar.b"]))


def test_kl_warmup_is_linear_in_steps_then_constant(tiny_data, tmp_path):
    trainer = new(TrainConfig(**{**SMALL, "beta": 2.0, "warmup_epochs": 0.5}), tiny_data, tmp_path)
    per_epoch = trainer.batches_per_epoch           # 600 / 64 -> 10
    assert per_epoch == 10
    assert [trainer.beta_at(s) for s in range(6)] == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0, 2.0])
    no_warmup = new(TrainConfig(**SMALL), tiny_data, tmp_path / "b")
    assert no_warmup.beta_at(0) == 1.0


def test_history_files_and_learning(tiny_data, tmp_path):
    trainer = new(TrainConfig(**{**SMALL, "epochs": 4}), tiny_data, tmp_path, quiet=True)
    trainer.fit()
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["epoch", "step", "beta", "train_total"] and len(lines) == 5
    for r in history:
        assert r["test_total"] == pytest.approx(r["test_nll"] + r["test_kl"])
        assert r["test_kl"] > 0
    assert history[-1]["test_total"] < history[0]["test_total"] - 1.0
    assert history[-1]["step"] == 4 * trainer.batches_per_epoch


def test_progress_and_summary_lines_unless_quiet(tiny_data, tmp_path):
    import io
    out = io.StringIO()
    new(TrainConfig(**{**SMALL, "epochs": 2}), tiny_data, tmp_path, file=out).fit()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch   1/2") and "ex/s" in lines[0]
    quiet = io.StringIO()
    new(TrainConfig(**{**SMALL, "epochs": 1}), tiny_data, tmp_path / "q", file=quiet, quiet=True).fit()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("backend,compiled", [("numba", True), ("numpy", False)])
def test_on_a_terminal_the_first_step_says_it_loads_or_compiles_the_kernels(tiny_data, tmp_path, backend, compiled):
    """The first step of a compiled backend waits for its kernels (seconds on a fresh install):
    the progress line says so before it; a NumPy run has nothing to compile and says nothing."""
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    if compiled:
        pytest.importorskip("numba")
    before = sv.get_backend()
    sv.set_backend(backend)
    try:
        out = Terminal()
        new(TrainConfig(**{**SMALL, "epochs": 1}), tiny_data, tmp_path, file=out).fit()
    finally:
        sv.set_backend(before)
    assert ("first step: loading the compiled kernels" in out.getvalue()) is compiled
    assert "epoch 1/1 [" in out.getvalue()


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(lr=-1.0), "lr must be a positive number"),
    (dict(beta=float("nan")), "beta must be a number >= 0"),
    (dict(binarize="sometimes"), "binarize must be one of"),
    (dict(binarize="static", likelihood="gaussian_pixel"), "bernoulli"),
])
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_a_model_only_checkpoint_opens_without_a_configuration(tiny_data, tmp_path):
    ckpt.save(tmp_path / "m.npz", sv.VAE(36, [16], 2))
    run = Run.open(tmp_path / "m.npz")
    assert run.config is None and not run.resumable
    assert run.vae.sample(2, np.random.default_rng(0)).shape == (2, 36)
    with pytest.raises(ValueError, match="model only"):
        run.data


M2_SMALL = dict(SMALL, semi_supervised=True, labels_per_class=5, labelled_batch=10, alpha=5.0, epochs=2)


def test_m2_trains_in_the_one_loop_with_checkpoints_ctrl_c_and_bit_for_bit_resume(tiny_data, tmp_path):
    whole = new(TrainConfig(**M2_SMALL), tiny_data, tmp_path / "whole", quiet=True)
    assert whole.fit() == "done"
    history = whole.run.history
    assert [r["epoch"] for r in history] == [1, 2]
    assert set(history[0]) >= {"train_total", "train_labelled", "train_unlabelled", "train_ce", "test_accuracy"}
    # an epoch is one pass over the unlabelled examples: 600 - 4 classes x 5 labels = 580, batches of 64
    assert history[0]["step"] == 10

    def interrupt(trainer):
        if trainer.run.epoch == 1 and trainer.run.batch == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cut = new(TrainConfig(**M2_SMALL), tiny_data, tmp_path / "cut", quiet=True, on_batch=interrupt)
    assert cut.fit() == "interrupted"
    header, _ = ckpt.read(tmp_path / "cut")
    assert (header["train"]["epoch"], header["train"]["batch"]) == (1, 3) and "m2" in header["train"]
    rest = resumed(tmp_path / "cut", tiny_data, quiet=True)
    assert rest.fit() == "done"
    _assert_same(_final_state(whole), _final_state(rest))
    # the checkpoint holds the whole model: the VAE for sv.load, the classifier beside it
    m2 = ckpt.load_m2(tmp_path / "cut")
    assert m2.predict(tiny_data.x_test).shape == (200,)
    np.testing.assert_array_equal(sv.load(tmp_path / "cut").params["dec.0.W"], m2.vae.params["dec.0.W"])


def test_m2_needs_labels(tiny_data, tmp_path):
    unlabelled = type(tiny_data)("unlabelled", tiny_data.x_train, None, tiny_data.x_test, None, (6, 6))
    with pytest.raises(ValueError, match="needs labels"):
        new(TrainConfig(**M2_SMALL), unlabelled, tmp_path)


def test_plain_array_files_get_a_held_out_test_split(tmp_path):
    x = np.random.default_rng(0).random((50, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    data = load_data(TrainConfig(dataset=str(tmp_path / "x.npy")))
    assert data.x_train.shape == (45, 16) and data.x_test.shape == (5, 16) and data.image_shape == (4, 4)
    rows = {tuple(r) for r in x.reshape(50, 16)}
    assert {tuple(r) for r in data.x_train} | {tuple(r) for r in data.x_test} == rows


def test_trains_on_real_fashion_mnist():
    root = os.environ.get("SCRATCHVAE_DATA")
    if not root or not os.path.isdir(os.path.join(root, "fashion-mnist")):
        pytest.skip("SCRATCHVAE_DATA does not point at a folder with fashion-mnist/ (CI sets it)")
    data = load_data(TrainConfig(dataset="fashion-mnist"))
    assert data.x_train.shape == (60000, 784)
    model = sv.VAE(784, [400], 20, seed=0)
    opt = sv.Adam(model.params, lr=1e-3)
    rng = np.random.default_rng(0)
    x_eval = data.x_test[:1000]
    before = model.loss(x_eval, rng=np.random.default_rng(1))["total"]
    for _ in range(300):
        _, grads = model.loss_and_grads(data.x_train[rng.integers(0, 60000, 128)], rng=rng)
        opt.step(grads)
    after = model.loss(x_eval, rng=np.random.default_rng(1))
    # an untrained model costs about 784 log 2 = 543 nats; the reference VAE reaches ~262 after one epoch
    assert before > 500 and after["total"] < 300, (before, after)
    assert after["kl"] > 5


@pytest.mark.parametrize("options", [{}, {"iw_samples": 3}, {"conditional": "label"}, {"semi_supervised": True,
                                                                                     "labels_per_class": 5}])
def test_the_loop_does_not_rescan_its_batches(tiny_data, tmp_path, monkeypatch, options):
    """The training batches are rows of data checked when loaded: no step reads their values
    again (issue 20); the test set's evaluation still checks what it is given."""
    from scratchvae.kernels import ops
    trainer = new(TrainConfig(**{**SMALL, "epochs": 1, **options}), tiny_data, tmp_path / "r", quiet=True)
    batch_rows = {SMALL["batch_size"], len(tiny_data.x_train) % SMALL["batch_size"]}
    scanned = []
    real = ops.min_max
    monkeypatch.setattr(ops, "min_max", lambda a: scanned.append(len(a)) or real(a))
    trainer.fit()
    assert not batch_rows & set(scanned)


# ----------------------------------------------------------------------
# one writer per run directory (issue 21): the lock, and what changed under it
# ----------------------------------------------------------------------

from scratchvae.run import lock as run_lock  # noqa: E402
from scratchvae.run.lock import LOCK, RunInUseError  # noqa: E402
from scratchvae.run.run import RunChangedError, RunExistsError  # noqa: E402

ONE = dict(SMALL, epochs=1)


def _dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_fit_holds_the_lock_and_releases_it_on_every_way_out(tiny_data, tmp_path):
    seen = []
    trainer = new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True,
                  on_batch=lambda t: seen.append(json.loads((tmp_path / "r" / LOCK).read_text())["pid"]))
    assert trainer.fit() == "done"
    assert set(seen) == {os.getpid()} and not (tmp_path / "r" / LOCK).exists()

    def interrupt(t):
        os.kill(os.getpid(), signal.SIGINT)
    assert new(TrainConfig(**ONE), tiny_data, tmp_path / "c", quiet=True, on_batch=interrupt).fit() == "interrupted"
    assert not (tmp_path / "c" / LOCK).exists()

    def poison(t):
        t.run.model.params["enc.logvar.b"][:] = 1e4
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(TrainingDiverged):
        new(TrainConfig(**ONE), tiny_data, tmp_path / "d", quiet=True, on_batch=poison).fit()
    assert not (tmp_path / "d").exists()                  # made by the failed fit, lock and all: removed


def test_a_second_trainer_of_the_directory_is_refused_while_the_first_trains(tiny_data, tmp_path):
    refused = []

    def second(trainer):
        if trainer.run.batch == 2 and not refused:
            other = Run(TrainConfig(**ONE), tiny_data, tmp_path / "r", overwrite=True)
            with pytest.raises(RunInUseError, match=rf"{tmp_path / 'r'} is in use: this process \({os.getpid()}\)"):
                Trainer(other, quiet=True).fit()
            refused.append(True)
    assert new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True, on_batch=second).fit() == "done"
    assert refused and Run.open(tmp_path / "r").epoch == 1


def test_two_new_runs_made_together_cannot_both_write(tiny_data, tmp_path):
    """Both pass the "holds a run" check when made; the second is refused under the lock."""
    a, b = (new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True) for _ in range(2))
    assert a.fit() == "done"
    kept = (tmp_path / "r" / "checkpoint.npz").read_bytes()
    with pytest.raises(RunExistsError, match="already holds a run"):
        b.fit()
    assert (tmp_path / "r" / "checkpoint.npz").read_bytes() == kept


def test_two_resumes_opened_together_cannot_both_write(tiny_data, tmp_path):
    new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True).fit()
    a, b = (resumed(tmp_path / "r", tiny_data, epochs=2, quiet=True) for _ in range(2))
    assert a.fit() == "done"
    with pytest.raises(RunChangedError, match=r"has changed since this run was opened.*--resume"):
        b.fit()
    assert Run.open(tmp_path / "r").epoch == 2 and len(json.loads((tmp_path / "r" / "history.json").read_text())) == 2


def test_a_run_trains_on_after_its_own_saves(tiny_data, tmp_path):
    trainer = new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True)
    trainer.fit()
    trainer.run.config.epochs = 2                     # the same object, further: its own checkpoint is no stranger
    assert trainer.fit() == "done" and Run.open(tmp_path / "r").epoch == 2


@pytest.mark.parametrize("flock", [True, False])
def test_a_stale_lock_of_a_dead_process_does_not_block(tiny_data, tmp_path, monkeypatch, flock):
    import socket
    if not flock:
        monkeypatch.setattr(run_lock, "fcntl", None)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    assert new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True).fit() == "done"
    assert not (tmp_path / "r" / LOCK).exists()


@pytest.mark.parametrize("holder,needle", [({"pid": 1, "host": None}, "process 1 on"),
                                           ({"pid": 12345, "host": "elsewhere"}, "process 12345 on elsewhere")])
def test_without_flock_a_live_or_foreign_lock_blocks_and_says_which_file_to_remove(
        tiny_data, tmp_path, monkeypatch, holder, needle):
    import socket
    monkeypatch.setattr(run_lock, "fcntl", None)
    (tmp_path / "r").mkdir()
    holder = {**holder, "host": holder["host"] or socket.gethostname()}
    (tmp_path / "r" / LOCK).write_text(json.dumps(holder))
    with pytest.raises(RunInUseError, match=needle) as e:
        new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True).fit()
    assert f"remove {tmp_path / 'r' / LOCK}" in str(e.value)
    assert json.loads((tmp_path / "r" / LOCK).read_text()) == holder        # not taken over


def test_a_backup_beside_a_run_is_not_continued_over_that_run(tiny_data, tmp_path):
    new(TrainConfig(**ONE), tiny_data, tmp_path / "A", quiet=True).fit()
    (tmp_path / "A" / "epoch1.npz").write_bytes((tmp_path / "A" / "checkpoint.npz").read_bytes())
    kept = {p.name: p.read_bytes() for p in (tmp_path / "A").iterdir()}
    with pytest.raises(RunExistsError, match=r"epoch1.npz is not the checkpoint of the run in .*--resume "):
        resumed(tmp_path / "A" / "epoch1.npz", tiny_data, epochs=2, quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "A").iterdir()} == kept
    # a copy alone in its folder continues there (it is that folder's run from then on)
    (tmp_path / "B").mkdir()
    (tmp_path / "B" / "model.npz").write_bytes(kept["epoch1.npz"])
    again = resumed(tmp_path / "B" / "model.npz", tiny_data, epochs=2, quiet=True)
    assert again.fit() == "done" and Run.open(tmp_path / "B").epoch == 2


def test_a_resume_whose_run_another_trainer_holds_and_saves_is_told_it_is_in_use(tiny_data, tmp_path):
    """The race test_faults met under load: the second trainer opened the run, the first saved an
    epoch, and the second's early (unlocked) check said "has changed" while the first held the run
    and trained on. Its holder is the news: "in use", by whom."""
    from scratchvae.run.lock import RunInUseError
    new(TrainConfig(**ONE), tiny_data, tmp_path / "r", quiet=True).fit()
    opened = Run.open(tmp_path / "r")
    first = resumed(tmp_path / "r", tiny_data, epochs=2, quiet=True)
    with first.run.writing():                      # the first trainer holds the run ...
        first.fit()                                # ... and saves epoch 2 meanwhile
        with pytest.raises(RunInUseError, match="is in use"):
            Trainer(opened)
    with pytest.raises(RunChangedError, match="has changed since this run was opened"):
        Trainer(opened)                            # released: the change is the news
