"""Checkpoints: round trip, NumPy-only loading, atomic writes, refusal of bad files."""
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

import scratchvae as sv
from scratchvae.run import checkpoint as ckpt


def _model(**kw):
    args = dict(input_dim=12, hidden=[8], latent_dim=3, likelihood="gaussian_pixel", seed=4)
    args.update(kw)
    model = sv.VAE(**args)
    for v in model.params.values():          # not the initial weights: prove they are stored
        v += 0.01
    return model


def test_round_trip_restores_architecture_parameters_and_optimizer(tmp_path):
    model = _model()
    opt = sv.Adam(model.params, lr=0.01)
    _, grads = model.loss_and_grads(np.full((2, 12), 0.3, np.float32), rng=np.random.default_rng(0))
    opt.step(grads)
    path = ckpt.save(tmp_path / "checkpoint.npz", model, opt, {"note": "hello"}, {"perm": np.arange(5)})
    loaded = sv.load(path)
    assert loaded.config() == model.config()
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])
    header, groups = ckpt.read(tmp_path)                 # a run directory works too
    assert header["train"] == {"note": "hello"} and header["optimizer"]["type"] == "Adam"
    np.testing.assert_array_equal(groups["train"]["perm"], np.arange(5))
    assert groups["optim"]["step"] == 1
    # plain NumPy can read it without pickle
    with np.load(path, allow_pickle=False) as npz:
        h = json.loads(npz[ckpt.HEADER_KEY].tobytes())
    assert h["format"] == ckpt.FORMAT and h["library_version"] == sv.__version__


def test_loaded_model_encodes_decodes_and_samples_without_numba_or_matplotlib(tmp_path):
    model = _model(likelihood="bernoulli")
    ckpt.save(tmp_path / "m.npz", model)
    x = np.random.default_rng(1).random((4, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "want.npy", model.decode(model.encode(x)[0]))
    script = block_imports("numba", "llvmlite", "matplotlib") + textwrap.dedent(f"""
        import numpy as np, scratchvae as sv
        model = sv.load({str(tmp_path / "m.npz")!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        mu, logvar = model.encode(x)
        np.testing.assert_array_equal(model.decode(mu), np.load({str(tmp_path / "want.npy")!r}))
        s = model.sample(5, np.random.default_rng(0))
        assert s.shape == (5, 12) and 0 <= s.min() and s.max() <= 1
        assert not any(m.split(".")[0] in ("numba", "matplotlib") for m in sys.modules)
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_BACKEND"}   # the default
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = _model()
    path = ckpt.save(tmp_path / "c.npz", model)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    model.params["enc.0.W"] += 1
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(path, model)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]     # no temporary left


def test_missing_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.read(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ckpt.CheckpointError, match="does not start as an .npz file does"):
        sv.load(junk)
    text = tmp_path / "notes.npz"          # a text file was called truncated or corrupt
    text.write_text("epoch,loss\n1,140.2\n")
    with pytest.raises(ckpt.CheckpointError, match=r"not a readable checkpoint: .*b'epoch,'.*another kind of file"):
        sv.load(text)
    good = ckpt.save(tmp_path / "good.npz", _model())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        sv.load(cut)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="not a scratchvae checkpoint"):
        sv.load(foreign)


def _rewrite_header(path, **changes):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays[ckpt.HEADER_KEY].tobytes())
    header.update(changes)
    arrays[ckpt.HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)


def test_newer_format_and_other_architectures_are_refused(tmp_path):
    path = ckpt.save(tmp_path / "c.npz", _model())
    _rewrite_header(path, format_version=ckpt.FORMAT_VERSION + 1, library_version="9.0")
    with pytest.raises(ckpt.CheckpointError, match="newer than this scratchvae"):
        sv.load(path)

    path = ckpt.save(tmp_path / "d.npz", _model())
    _, groups = ckpt.read(path)
    other = sv.VAE(12, [9], 3, likelihood="gaussian_pixel")
    with pytest.raises(ckpt.CheckpointError, match=r"do not fit.*enc\.0\.W"):
        ckpt.load_params(other, groups)
    _rewrite_header(path, model={"input_dim": 12, "hidden": [8], "latent_dim": 3, "likelihood": "poisson"})
    with pytest.raises(ckpt.CheckpointError, match="bad model description"):
        sv.load(path)


# ----------------------------------------------------------------------
# checkpoints written by scratchvae 0.1.0 (tests/data/README.md)
# ----------------------------------------------------------------------

OLD = Path(__file__).parent / "data" / "v0.1.0"


def test_a_0_1_0_training_checkpoint_loads_computes_the_same_and_resumes(tmp_path, monkeypatch):
    from scratchvae.run import Run, Trainer
    expected = np.load(OLD / "expected.npz")
    model = sv.load(OLD / "vae-checkpoint.npz")
    mu, logvar = model.encode(expected["probe"])
    np.testing.assert_allclose(mu, expected["mu"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar, expected["logvar"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.decode(expected["z"]), expected["decoded"], rtol=1e-5, atol=1e-6)
    # the run resumes where it stopped (its data set is a relative path: work beside it)
    shutil.copy(OLD / "vae-checkpoint.npz", tmp_path / "checkpoint.npz")
    shutil.copy(OLD / "bars.npy", tmp_path / "bars.npy")
    monkeypatch.chdir(tmp_path)
    run = Run.open(tmp_path)
    assert run.resumable and run.epoch == 2 and len(run.history) == 2
    run.config.epochs = 3
    Trainer(run, quiet=True).fit()
    assert [r["epoch"] for r in Run.open(tmp_path).history] == [1, 2, 3]


def test_a_0_1_0_m2_checkpoint_loads_but_cannot_resume(tmp_path):
    from scratchvae.run import Run, Trainer
    expected = np.load(OLD / "expected.npz")
    m2 = ckpt.load_m2(OLD / "m2-checkpoint.npz")
    np.testing.assert_allclose(m2.log_proba(expected["probe"]), expected["m2_log_proba"], rtol=1e-5, atol=1e-6)
    mu, logvar = m2.vae.encode(expected["probe"], expected["m2_c"])
    np.testing.assert_allclose(mu, expected["m2_mu"], rtol=1e-5, atol=1e-6)
    assert sv.load(OLD / "m2-checkpoint.npz").context_dim == 4
    run = Run.open(OLD / "m2-checkpoint.npz")
    assert not run.resumable
    with pytest.raises(ValueError, match="saved without its optimizer state"):
        Trainer(run)


# ----------------------------------------------------------------------
# the latent variants as written before priors and flows were objects
# ----------------------------------------------------------------------

VARIANTS = Path(__file__).parent / "data" / "variants"


@pytest.mark.parametrize("name", ["vamp", "flow"])
def test_a_variant_checkpoint_of_7616d8e_loads_computes_the_same_and_resumes(name, tmp_path, monkeypatch):
    from scratchvae.run import Run, Trainer
    expected = np.load(VARIANTS / "expected.npz")
    model = sv.load(VARIANTS / f"{name}-checkpoint.npz")
    probe, z = expected["probe"], expected["z"]
    mu, logvar = model.encode(probe)
    terms, _ = model.forward(probe, expected["eps"], with_grad=False)
    for key, value in (("mu", mu), ("logvar", logvar), ("embed", model.embed(probe)), ("decoded", model.decode(z)),
                       ("log_prior", model.log_prior(z)), ("log_weight", terms.log_weight)):
        np.testing.assert_allclose(value, expected[f"{name}_{key}"], rtol=1e-5, atol=1e-5, err_msg=key)
    shutil.copy(VARIANTS / f"{name}-checkpoint.npz", tmp_path / "checkpoint.npz")
    shutil.copy(OLD / "bars.npy", tmp_path / "bars.npy")
    monkeypatch.chdir(tmp_path)
    run = Run.open(tmp_path)
    assert run.resumable and run.epoch == 2
    run.config.epochs = 3
    Trainer(run, quiet=True).fit()
    assert [r["epoch"] for r in Run.open(tmp_path).history] == [1, 2, 3]

