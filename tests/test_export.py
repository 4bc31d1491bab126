"""Export: the one-file NumPy module computes what the library computes, in a process that
cannot import scratchvae, Numba or Matplotlib; and export refuses what it cannot express."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from blockers import block_imports
from cli_helpers import assert_one_error, bars, run

import scratchvae as sv
from scratchvae import kernels
from scratchvae.kernels import ACTIVATIONS
from scratchvae.model.likelihoods import LIKELIHOODS
from scratchvae.run.export import IMPORTED, TEMPLATE, export

# (likelihood, activation, hidden, latent, context_dim, dtype): every likelihood and activation,
# both dtypes, conditional models with and without hidden layers
CASES = {
    "bernoulli-relu": ("bernoulli", "relu", [16], 2, 0, np.float32),
    "cb-elu-conditional": ("continuous_bernoulli", "elu", [8, 6], 3, 3, np.float32),
    "gauss-fixed-tanh-no-hidden-conditional": ("gaussian_fixed", "tanh", [], 2, 2, np.float64),
    "gauss-scalar-sigmoid": ("gaussian_scalar", "sigmoid", [10], 4, 0, np.float64),
    "gauss-pixel-softplus": ("gaussian_pixel", "softplus", [12, 7], 2, 0, np.float32),
    "bernoulli-leaky-conditional": ("bernoulli", "leaky_relu", [9], 1, 4, np.float64),
    "cb-identity": ("continuous_bernoulli", "identity", [5], 2, 0, np.float64),
}
D, N = 20, 9
OUTPUTS = ("mu", "logvar", "decoded", "sample_mean", "sample_draw", "elbo")


def _model(likelihood, activation, hidden, latent, context_dim, dtype):
    """A model with weights spread out as a trained model's are (logits well away from 0)."""
    model = sv.VAE(D, hidden, latent, likelihood=likelihood, activation=activation, context_dim=context_dim,
                   sigma=0.3, dtype=dtype, seed=len(hidden) + latent)
    rng = np.random.default_rng(1)
    for value in model.params.values():
        value += (0.5 * rng.standard_normal(value.shape)).astype(dtype)
    return model


def _inputs(model):
    rng = np.random.default_rng(2)
    x = rng.random((N, D))
    c = rng.random((N, model.context_dim)) if model.context_dim else None
    z = rng.standard_normal((N, model.latent_dim))
    return x, c, z


def _library(model):
    """What the library computes for the inputs, with the same random streams the module uses."""
    x, c, z = _inputs(model)
    mu, logvar = model.encode(x, c)
    rng = np.random.default_rng(5)
    eps = rng.standard_normal(mu.shape, dtype=model.dtype)          # what elbo(x, rng) draws
    terms, _ = model.forward(x, eps, c, with_grad=False)
    return {"mu": mu, "logvar": logvar, "decoded": model.decode(z, c),
            "sample_mean": model.sample(N, np.random.default_rng(3), c=c),
            "sample_draw": model.sample(N, np.random.default_rng(4), mean=False, c=c),
            "elbo": -(terms.nll + terms.kl)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported, and the exported modules' outputs computed in one subprocess where
    scratchvae, Numba and Matplotlib cannot be imported."""
    root = tmp_path_factory.mktemp("exports")
    for case, spec in CASES.items():
        model = _model(*spec)
        x, c, z = _inputs(model)
        export(model, root / case, name="model")
        np.savez(root / case / "inputs.npz", x=x, z=z, **({} if c is None else {"c": c}))
    script = block_imports("scratchvae", "numba", "llvmlite", "matplotlib") + textwrap.dedent(f"""
        import importlib, sys
        import numpy as np
        for case in {list(CASES)!r}:
            folder = {str(root)!r} + "/" + case
            sys.path.insert(0, folder)
            model = importlib.import_module("model")
            inputs = np.load(folder + "/inputs.npz")
            x, z, c = inputs["x"], inputs["z"], inputs["c"] if "c" in inputs else None
            mu, logvar = model.encode(x, c)
            np.savez(folder + "/outputs.npz", mu=mu, logvar=logvar, decoded=model.decode(z, c),
                     sample_mean=model.sample({N}, np.random.default_rng(3), c=c),
                     sample_draw=model.sample({N}, np.random.default_rng(4), c=c, mean=False),
                     elbo=model.elbo(x, np.random.default_rng(5), c))
            del sys.modules["model"]
            sys.path.remove(folder)
        assert not any(m.split(".")[0] in ("scratchvae", "numba", "matplotlib") for m in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    return root


# the library's default backend, and NumPy's: both multiply with BLAS, as the exported module does.
# (The reference backend multiplies with einsum; its products differ in the last bits, which the
# continuous Bernoulli's mean near l = 0, a difference of two terms near 1/l, amplifies beyond 1e-6.)
@pytest.mark.parametrize("backend_name", sorted({kernels.default_backend(), "numpy"}))
@pytest.mark.parametrize("case", list(CASES))
def test_exported_module_computes_what_the_library_computes(exported, case, backend_name):
    before = sv.get_backend()
    try:
        sv.set_backend(backend_name)
        expected = _library(_model(*CASES[case]))
    finally:
        sv.set_backend(before)
    with np.load(exported / case / "outputs.npz") as got:
        for key in OUTPUTS:
            want = np.asarray(expected[key])
            assert got[key].dtype == want.dtype, key
            rtol = 1e-6 if want.dtype == np.float32 else 1e-12
            # relative to the array's scale: an entry that cancels to near 0 is held to the same digits
            np.testing.assert_allclose(got[key], want, rtol=rtol, atol=rtol * np.abs(want).max(), err_msg=key)


def test_every_likelihood_and_activation_is_exported_and_tested():
    assert {spec[0] for spec in CASES.values()} == set(LIKELIHOODS)
    assert {spec[1] for spec in CASES.values()} == set(ACTIVATIONS)


def test_the_module_is_short_and_imports_numpy_and_the_standard_library_only():
    source = TEMPLATE.read_text()
    assert len(source.splitlines()) < 150
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == set(IMPORTED)


def test_the_export_records_its_architecture_and_fills_in_the_docstring(tmp_path):
    model = _model(*CASES["cb-elu-conditional"])
    paths = export(model, tmp_path / "out", name="shoes", context="label", source="runs/x")
    assert [p.name for p in paths] == ["shoes.npz", "shoes.json", "shoes.py"]
    header = json.loads(paths[1].read_text())
    assert header["format"] == "scratchvae-export" and header["context"] == "label"
    assert header["hidden"] == [8, 6] and header["dtype"] == "float32" and header["source"] == "runs/x"
    with np.load(paths[0], allow_pickle=False) as weights:
        assert set(weights.files) == set(model.params)
    text = paths[2].read_text()
    assert "$" not in text and repr(model) in text and "one-hot label, (n, 3)" in text
    assert "shoes.encode(x)" in text
    assert not list((tmp_path / "out").glob(".*.part"))              # atomic writes leave no temporaries


def test_a_full_disk_keeps_the_earlier_export_and_names_the_file(tmp_path, monkeypatch):
    from scratchvae import atomic
    model = _model(*CASES["bernoulli-relu"])
    paths = export(model, tmp_path)
    before = {p: p.read_bytes() for p in paths}
    monkeypatch.setattr(atomic, "free_disk", lambda directory: 100)
    with pytest.raises(atomic.WriteError, match=rf"{tmp_path / 'vae.npz'}.*100 bytes free"):
        export(model, tmp_path, overwrite=True)
    assert {p: p.read_bytes() for p in paths} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.json", "vae.npz", "vae.py"]


def test_an_existing_export_is_replaced_only_when_asked(tmp_path):
    model = _model(*CASES["bernoulli-relu"])
    py = export(model, tmp_path)[2]
    py.write_text("# mine")
    with pytest.raises(ValueError, match=r"already holds vae.npz, vae.json, vae.py; pass --overwrite"):
        export(model, tmp_path)
    assert py.read_text() == "# mine"
    export(model, tmp_path, name="other")                          # another name is another export
    export(model, tmp_path, overwrite=True)
    assert py.read_text() != "# mine"


def test_export_refuses_what_the_module_cannot_compute(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="implements prior 'standard' only, and this model has prior 'vamp'"):
        export(sv.VAE(D, [8], 2, prior="vamp", pseudo_inputs=3), tmp_path)
    with pytest.raises(ValueError, match="implements flow 'none' only, and this model has flow 'planar:2'"):
        export(sv.VAE(D, [8], 2, flow="planar:2"), tmp_path)
    model = _model(*CASES["bernoulli-relu"])
    config = sv.VAE.config(model)
    monkeypatch.setattr(model, "config", lambda: {**config, "posterior": "mixture"})
    with pytest.raises(ValueError, match=r"does not implement posterior='mixture'"):
        export(model, tmp_path)
    monkeypatch.setattr(model, "config", lambda: {**config, "activation": "gelu"})
    with pytest.raises(ValueError, match=r"does not implement its activation 'gelu' \(it knows identity"):
        export(model, tmp_path)
    monkeypatch.setattr(model, "config", lambda: config)
    monkeypatch.setattr(model, "params", {**model.params, "flow.0.u": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"parameters differ .* \(unknown: flow.0.u; missing: none\)"):
        export(model, tmp_path)

    class Subclassed(sv.VAE):
        pass
    with pytest.raises(ValueError, match="export writes a plain or conditional VAE; this is a Subclassed"):
        export(Subclassed(4, [3], 2), tmp_path)
    broken = _model(*CASES["bernoulli-relu"])
    broken.params["dec.0.b"][0] = np.nan
    with pytest.raises(ValueError, match="weights dec.0.b hold NaN"):
        export(broken, tmp_path)
    for name in ("numpy", "json", "my-model", "class"):
        with pytest.raises(ValueError, match="--name must be a Python module name"):
            export(model, tmp_path, name=name)
    assert not list(tmp_path.iterdir())                            # nothing written by a refusal


def test_export_command(capsys, tmp_path):
    data = tmp_path / "bars.npz"
    np.savez(data, x=bars(120))
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "--dataset", data, "--hidden", "8", "--latent", "2", "--epochs", "1",
                       "--batch-size", "32", "--no-plots", "--out", run_dir)
    assert code == 0, err
    code, out, err = run(capsys, "export", run_dir, "-o", tmp_path / "ship")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "ship" / f"vae{s}") for s in (".npz", ".json", ".py")]
    header = json.loads((tmp_path / "ship" / "vae.json").read_text())
    assert header["image_shape"] == [8, 8] and header["source"] == str(run_dir)
    code, _, err = run(capsys, "export", run_dir, "-o", tmp_path / "ship")
    assert_one_error(code, err, "already holds vae.npz", "--overwrite")
    code, _, err = run(capsys, "export", run_dir, "-o", tmp_path / "ship", "--overwrite", "--name", "bars")
    assert code == 0, err
    code, _, err = run(capsys, "export", tmp_path / "nothing", "-o", tmp_path / "ship2")
    assert_one_error(code, err, "no such checkpoint")


def test_export_command_needs_no_data_set(capsys, tmp_path):
    """A run on non-image data stores no image shape; exporting it where its data file is gone
    still works (the shape is recorded as unknown)."""
    data = tmp_path / "vectors.npz"
    np.savez(data, x=np.random.default_rng(0).random((100, 10), dtype=np.float32))
    code, _, err = run(capsys, "train", "--dataset", data, "--hidden", "4", "--latent", "2", "--epochs", "1",
                       "--no-plots", "--out", tmp_path / "run")
    assert code == 0, err
    data.unlink()
    code, _, err = run(capsys, "export", tmp_path / "run", "-o", tmp_path / "ship")
    assert code == 0, err
    assert json.loads((tmp_path / "ship" / "vae.json").read_text())["image_shape"] is None
