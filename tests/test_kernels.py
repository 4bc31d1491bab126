"""The kernel layer: the contract, the registry, the conformance checker on every backend
(and on a broken one), one set of fastmath flags, and the numerics every backend must keep."""
import ast
import inspect
import math
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

import scratchvae as sv
from scratchvae import kernels
from scratchvae.gradcheck import check_op
from scratchvae.kernels import numpy as numpy_backend
from scratchvae.kernels import reference as R

from conftest import HAS_NUMBA, bars_and_blocks, builtin_backend

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")


# --------------------------------------------------------------------------
# the contract and the registry
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", [name for name in kernels.BUILTIN_BACKENDS if name != "reference"])
def test_every_builtin_backend_implements_the_contract_with_the_reference_signatures(name):
    module = builtin_backend(name)
    for k in kernels.CONTRACT:
        assert inspect.signature(getattr(module, k)) == inspect.signature(getattr(R, k)), (name, k)


@pytest.mark.parametrize("kernel", kernels.CONTRACT)
def test_a_backend_with_one_wrong_signature_is_refused_by_name(kernel):
    def wrong(*args):
        return None
    with pytest.raises(ImportError, match=rf"backend 'wrong': {kernel}\(\*args\) differs from the contract {kernel}\("):
        kernels.register_backend("wrong", _module_like(numpy_backend, **{kernel: wrong}))
    assert "wrong" not in sv.backends()


def test_nothing_in_the_kernel_layer_imports_inside_a_function():
    """Imports run one way and at the top; the one import in a function is the optional
    probe of whether Numba is installed."""
    folder = os.path.dirname(kernels.__file__)
    inner = []
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".py")):
        with open(os.path.join(folder, name)) as f:
            functions = [n for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.FunctionDef)]
        inner += [(name, fn.name) for fn in functions
                  for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert inner == [("__init__.py", "default_backend")]


def test_set_backend_rejects_unknown_names_and_rebinds_ops():
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        kernels.set_backend("cuda")
    with pytest.raises(ImportError, match="does not import"):
        kernels.set_backend("no_such_package.backend")
    with pytest.raises(ValueError, match="unknown GEMM 'mkl'"):
        kernels.set_backend("numpy", gemm="mkl")
    before = kernels.get_backend()
    kernels.set_backend("numpy")
    try:
        assert kernels.get_backend() == "numpy"
        assert kernels.ops.gemm is numpy_backend.gemm and kernels.ops.min_max is numpy_backend.min_max
        kernels.set_backend("numpy", gemm="reference")
        assert kernels.ops.gemm is R.gemm and sv.describe()["gemm"] == "reference (numpy.einsum)"
    finally:
        kernels.set_backend(before)


def _module_like(base, **overrides):
    """A backend module: ``base``'s kernels, some replaced."""
    mod = types.ModuleType("third_party_backend")
    for k in kernels.CONTRACT:
        setattr(mod, k, overrides.get(k, getattr(base, k)))
    for k in kernels.FUSED:              # a fused kernel only where one is given
        if k in overrides:
            setattr(mod, k, overrides[k])
    return mod


def test_register_backend_checks_the_contract_and_selects_by_name():
    with pytest.raises(ImportError, match="does not implement"):
        kernels.register_backend("half", types.ModuleType("half"))

    def bad_signature(logits, x, scale):
        return None
    with pytest.raises(ImportError, match=r"bernoulli_nll\(logits, x, scale\) differs from the contract"):
        kernels.register_backend("bad", _module_like(numpy_backend, bernoulli_nll=bad_signature))

    calls = []

    def counting_min_max(x):
        calls.append(x.shape)
        return numpy_backend.min_max(x)
    kernels.register_backend("counting", _module_like(numpy_backend, min_max=counting_min_max))
    before = kernels.get_backend()
    kernels.set_backend("counting")
    try:
        assert "counting" in sv.backends()
        sv.VAE(6, [4], 2).loss(np.full((3, 6), 0.5), rng=np.random.default_rng(0))
        assert calls == [(3, 6)]                   # the model's array work goes through the backend
    finally:
        kernels.set_backend(before)


def test_the_checker_passes_the_numpy_backend_and_its_report_names_every_kernel(capsys):
    report = sv.check_backend("numpy")
    assert report.ok, str(report)
    printed = capsys.readouterr().out
    for k in kernels.CONTRACT:
        assert f"  {k} " in printed
    assert printed.strip().endswith(f"({sum(r.cases for r in report.results)} cases)")
    assert all(r.cases >= 8 for r in report.results)


@pytest.mark.skipif(not HAS_NUMBA, reason="Numba is not installed")
def test_the_checker_passes_the_numba_backend():
    report = sv.check_backend("numba", verbose=False)
    assert report.ok, str(report)


@pytest.mark.skipif(not HAS_NUMBA, reason="Numba is not installed")
def test_the_checker_passes_the_hand_written_gemm_in_every_layout():
    report = sv.check_backend("scratchvae.kernels.gemm_numba", verbose=False, kernels=["gemm"])
    assert report.ok, str(report)
    assert report.results[0].cases >= 4 * 2 * 7 * 2        # layouts x dtypes x shapes x accumulate


def test_the_checker_fails_a_backend_that_is_wrong_somewhere():
    def sigmoid_off_by_a_bit(logits, x, nll=None, grad=None, with_grad=True, scratch=None):
        nll, grad = numpy_backend.bernoulli_nll(logits, x, nll, grad, with_grad, scratch)
        if with_grad:
            grad[..., -1] += 1e-2                   # one wrong column
        return nll, grad

    def writes_its_input(a, b, activation, alpha, out=None):
        out = numpy_backend.bias_activation(a, b, activation, alpha, out)
        if b.size > 1:
            b[0] = 0.0
        return out

    def loses_float32(x, times, out=None):
        return np.tile(x.astype(np.float64), (times, 1))

    broken = _module_like(numpy_backend, bernoulli_nll=sigmoid_off_by_a_bit, bias_activation=writes_its_input,
                          repeat_rows=loses_float32)
    report = sv.check_backend(broken, verbose=False, quick=True)
    failing = {r.name: r.failures for r in report.results if not r.ok}
    assert set(failing) == {"bernoulli_nll", "bias_activation", "repeat_rows"}
    assert not report.ok and "NOT CONFORMING" in str(report)
    assert any("times the tolerance" in f for f in failing["bernoulli_nll"])
    assert any("input 1 was modified" in f for f in failing["bias_activation"])
    assert any("dtype float64" in f for f in failing["repeat_rows"])


def test_an_out_of_tree_backend_is_selected_by_module_path_in_the_command_line(tmp_path):
    """SCRATCHVAE_BACKEND=package.module reaches the CLI and subprocesses; the example backend conforms."""
    env = dict(os.environ, SCRATCHVAE_BACKEND="my_backend.kernels", PYTHONPATH=EXAMPLES)
    r = subprocess.run([sys.executable, "-m", "scratchvae", "train", "--dataset", _array_file(tmp_path),
                        "--epochs", "1", "--hidden", "8", "--latent", "2", "--no-plots", "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "kernels: my_backend.kernels" in r.stderr
    check = subprocess.run([sys.executable, "-c", "import scratchvae as sv, my_backend.kernels as m; "
                            "assert sv.check_backend(m, quick=True).ok"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert check.returncode == 0, check.stdout + check.stderr


def _array_file(tmp_path):
    x = np.random.default_rng(0).random((40, 16)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    return str(path)


@pytest.mark.skipif(not HAS_NUMBA, reason="Numba is not installed")
def test_every_compiled_kernel_uses_the_one_set_of_fastmath_flags():
    import numba

    from scratchvae.kernels import gemm_numba
    from scratchvae.kernels import numba as numba_backend
    seen = 0
    for module in (numba_backend, gemm_numba):
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher):
                assert set(value.targetoptions["fastmath"]) == set(kernels.FASTMATH), (module.__name__, name)
                seen += 1
    assert seen >= 20
    assert not {"nnan", "ninf", "afn", "fast"} & kernels.FASTMATH


# --------------------------------------------------------------------------
# numerics every backend keeps
# --------------------------------------------------------------------------

NAIVE = {
    "identity": lambda a, al: a,
    "relu": lambda a, al: np.maximum(a, 0),
    "leaky_relu": lambda a, al: np.where(a > 0, a, al * a),
    "tanh": lambda a, al: np.tanh(a),
    "sigmoid": lambda a, al: 1 / (1 + np.exp(-a)),
    "softplus": lambda a, al: np.log(1 + np.exp(a)),
    "elu": lambda a, al: np.where(a > 0, a, al * (np.exp(a) - 1)),
}


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("act", kernels.ACTIVATIONS)
def test_bias_activation_matches_the_textbook_formula(act):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)) * 3, rng.standard_normal(4)
    np.testing.assert_allclose(kernels.ops.bias_activation(a.copy(), b, act, 0.3), NAIVE[act](a + b, 0.3),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("act", ["sigmoid", "softplus", "tanh", "elu"])
def test_activations_do_not_overflow_on_huge_inputs(act):
    a = np.array([[-1e4, -800.0, 0.0, 800.0, 1e4]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = kernels.ops.bias_activation(a.copy(), np.zeros(5), act, 1.0)
        d = kernels.ops.activation_backward(y, np.ones_like(y), act, 1.0)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(d))


@pytest.mark.usefixtures("backend")
def test_bernoulli_nll_is_stable_for_huge_logits():
    K = kernels.ops
    logits = np.array([[-1e4, 1e4, 0.0]])
    x = np.array([[0.0, 1.0, 0.5]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        nll, d = K.bernoulli_nll(logits, x)
    np.testing.assert_allclose(nll, [math.log(2)], rtol=1e-12)   # only the middle pixel costs
    np.testing.assert_allclose(d, [[0, 0, 0]], atol=1e-300)
    _, d = K.bernoulli_nll(np.array([[-0.0, 0.0]]), np.zeros((1, 2)))
    np.testing.assert_array_equal(d, [[0.5, 0.5]])            # sigmoid(-0) = sigmoid(0) = 1/2


@pytest.mark.usefixtures("backend")
def test_nan_survives_every_kernel():
    """No kernel assumes finite values (the fastmath flags never say nnan): NaN in, NaN out."""
    K = kernels.ops
    logits = np.array([[0.5, np.nan, 1.0]], np.float32)
    with np.errstate(invalid="ignore"):
        nll, d = K.bernoulli_nll(logits, np.full((1, 3), 0.5, np.float32))
    assert np.isnan(nll[0]) and np.isnan(d[0, 1]) and not np.isnan(d[0, 0])
    y = K.bias_activation(np.array([[np.nan, 1.0]]), np.zeros(2), "relu", 0.0)
    assert np.isnan(y[0, 0])
    lo, hi = K.min_max(np.array([[1.0, np.nan], [2.0, 3.0]], np.float32))
    assert math.isnan(lo) and math.isnan(hi)


def _cb_log_normalizer_exact(l):
    """log C from its definition on lambda = sigmoid(l), in float64 (valid away from l = 0)."""
    lam = 1 / (1 + np.exp(-l))
    return np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))


def test_cb_log_normalizer_matches_definition_and_its_series_agrees_at_the_switch():
    l = np.array([-8.0, -3.0, -0.5, 0.3, 2.0, 8.0])    # where the definition is accurate
    np.testing.assert_allclose(R.cb_log_normalizer(l), _cb_log_normalizer_exact(l), rtol=1e-10)
    below, above = np.nextafter(0.1, 0), 0.1
    assert abs(R.cb_log_normalizer_grad(np.array([below]))[0]
               - R.cb_log_normalizer_grad(np.array([above]))[0]) < 1e-13
    assert R.cb_log_normalizer(np.array([0.0]))[0] == pytest.approx(math.log(2), abs=1e-16)


def test_cb_log_normalizer_grad_matches_central_differences():
    l = np.array([-12.0, -1.0, -0.1, -1e-3, 0.0, 2e-2, 0.0999, 0.1001, 0.7, 30.0])
    h = 1e-6
    num = (R.cb_log_normalizer(l + h) - R.cb_log_normalizer(l - h)) / (2 * h)
    np.testing.assert_allclose(R.cb_log_normalizer_grad(l), num, rtol=1e-6, atol=1e-10)


@pytest.mark.usefixtures("backend")
def test_cb_density_integrates_to_one_near_and_far_from_half():
    x = (np.arange(200000) + 0.5) / 200000      # midpoint rule on [0, 1]
    for l in [-30.0, -4.0, -1e-3, 0.0, 1e-7, 0.05, 0.5, 7.0]:
        logits = np.full((1, x.size), l)
        nll, _ = kernels.ops.continuous_bernoulli_nll(logits, x[None])
        softplus, log_c = np.maximum(l, 0) + np.log1p(np.exp(-abs(l))), R.cb_log_normalizer(logits)[0]
        per_point = softplus - x * l - log_c
        assert np.exp(-per_point).mean() == pytest.approx(1.0, abs=1e-6), l
        # the row's sum cancels terms of size (softplus + |x l| + log C): it is exact to 1e-11 of them
        scale = np.sum(softplus + np.abs(x * l) + np.abs(log_c))
        assert abs(nll[0] - per_point.sum()) <= 1e-11 * scale, l


@pytest.mark.usefixtures("backend")
def test_gaussian_nll_matches_the_density():
    rng = np.random.default_rng(2)
    mean, x = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    log_sigma = rng.standard_normal(4) * 0.3
    nll, _ = kernels.ops.gaussian_nll(mean, x, log_sigma)
    s = np.exp(log_sigma)
    want = -np.log(np.exp(-((x - mean) / s) ** 2 / 2) / (s * math.sqrt(2 * math.pi))).sum(1)
    np.testing.assert_allclose(nll, want, rtol=1e-12)


@pytest.mark.usefixtures("backend")
def test_log_softmax_and_its_backward():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 4)) * 3
    K = kernels.ops
    np.testing.assert_allclose(np.exp(K.log_softmax(logits)).sum(axis=1), 1.0, rtol=1e-14)
    check_op(lambda logits: (K.log_softmax(logits), logits),
             lambda cache, d: {"logits": K.log_softmax_backward(K.log_softmax(cache), d)},
             {"logits": logits}).raise_if_failed()
    huge = K.log_softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))
    np.testing.assert_allclose(huge, [[0.0, -1000.0], [-math.log(2), -math.log(2)]], atol=1e-12)


@pytest.mark.usefixtures("backend")
def test_float32_inputs_give_float32_outputs():
    K = kernels.ops
    rng = np.random.default_rng(3)
    x = rng.random((4, 5), dtype=np.float32)
    l = rng.standard_normal((4, 5), dtype=np.float32)
    for fn in (K.bernoulli_nll, K.continuous_bernoulli_nll):
        nll, d = fn(l, x)
        assert nll.dtype == np.float32 and d.dtype == np.float32
    nll, d = K.gaussian_nll(l, x, np.zeros(5, np.float32))
    assert nll.dtype == d.dtype == np.float32
    assert K.gaussian_log_sigma_grad(l, x, np.zeros(5, np.float32), np.ones(4, np.float32)).dtype == np.float32
    z, kl, kl_sample = K.gaussian_latent(l, l, l)
    assert z.dtype == kl.dtype == kl_sample.dtype == np.float32
    assert K.bias_activation(l.copy(), np.zeros(5, np.float32), "softplus", 0.0).dtype == np.float32
    assert K.log_softmax(l).dtype == np.float32


def test_a_model_trains_on_the_third_party_example_backend_through_the_api():
    sys.path.insert(0, EXAMPLES)
    try:
        import my_backend.kernels as mine
    finally:
        sys.path.remove(EXAMPLES)
    before = kernels.get_backend()
    sv.register_backend("mine", mine)
    x = bars_and_blocks(np.random.default_rng(0), 64)[0]

    def train(backend):
        sv.set_backend(backend)
        model = sv.VAE(36, [16], 2, seed=0)
        opt = sv.Adam(model.params, lr=1e-2)
        rng = np.random.default_rng(0)
        losses = []
        for _ in range(60):
            losses.append(model.loss_and_grads(x, rng=rng)[0]["total"])
            opt.step(model.grads)
        return model, losses
    try:
        mine_model, mine_losses = train("mine")
        ref_model, ref_losses = train("numpy")
    finally:
        kernels.set_backend(before)
    assert mine_losses[-1] < mine_losses[0] - 5.0
    np.testing.assert_allclose(mine_losses, ref_losses, rtol=1e-5)      # the same maths, another backend


def test_subprocesses_follow_the_environment():
    code = "import scratchvae as sv; print(sv.get_backend())"
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_BACKEND"}
    for name in ("reference", "numpy"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=dict(env, SCRATCHVAE_BACKEND=name))
        assert r.stdout.strip() == name, r.stderr
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=120, env=dict(env, SCRATCHVAE_BACKEND="nope"))
    assert "unknown kernel backend 'nope'" in r.stderr


def test_describe_names_numpys_blas_and_the_kernel_openblas_chose():
    """With BLAS products, describe() says which library and which of its kernels run (issue 20):
    OpenBLAS picks a kernel per CPU at run time, and OPENBLAS_CORETYPE overrides the pick."""
    info = numpy_backend.describe()
    if "blas_kernel" not in info:
        pytest.skip(f"NumPy's BLAS here is not an OpenBLAS that says its kernel ({info.get('blas', 'unknown')})")
    assert info["blas_isa"] == numpy_backend.OPENBLAS_ISA.get(info["blas_kernel"], "unknown")
    code = "import scratchvae as sv; sv.set_backend('numpy'); d = sv.describe(); print(d['blas_kernel'], d['blas_isa'])"
    forced = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"})
    assert forced.stdout.split() == ["Haswell", "AVX2"]


# --------------------------------------------------------------------------
# fused kernels: optional, defined by their composition
# --------------------------------------------------------------------------

def test_a_backend_of_the_unfused_contract_gets_the_composition_of_each_fused_kernel():
    """A third-party backend written before the fused kernels existed: ``ops.gemm_bias_activation``
    composes its own gemm and bias_activation (each call lands in them) and describe() says so."""
    calls = []

    def counting(name):
        def kernel(*args, **kwargs):
            calls.append(name)
            return getattr(numpy_backend, name)(*args, **kwargs)
        kernel.__signature__ = inspect.signature(getattr(R, name))
        return kernel
    before = kernels.get_backend()
    kernels.register_backend("unfused", _module_like(numpy_backend, gemm=counting("gemm"),
                                                     bias_activation=counting("bias_activation")))
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3)), rng.standard_normal(3)
    try:
        kernels.set_backend("unfused")
        y = kernels.ops.gemm_bias_activation(x, W, b, "tanh", 0.0)
        fused = kernels.describe()["fused"]
    finally:
        kernels.set_backend(before)
    assert calls == ["gemm", "bias_activation"]
    np.testing.assert_allclose(y, np.tanh(x @ W + b), rtol=1e-12)
    assert fused.startswith("none")


@pytest.mark.parametrize("name", kernels.FUSED)
def test_every_fused_kernel_is_defined_by_its_composition_and_checked_against_it(name):
    """The reference's fused kernel is the composition over the reference kernels; a backend's own
    fused kernel is held to it by the checker, and one that differs fails there by name."""
    assert R.gemm_bias_activation(np.eye(2), np.ones((2, 2)), np.array([-1.0, 1.0]), "relu", 0.0).tolist() == \
        [[0.0, 2.0], [0.0, 2.0]]
    with pytest.raises(ImportError, match=f"does not implement {name}"):      # it has none to check
        sv.check_backend(_module_like(numpy_backend), verbose=False, kernels=[name])

    def off(x, W, b, activation, alpha, out=None):
        return R.gemm_bias_activation(x, W, b, activation, alpha, out) * 1.001
    report = sv.check_backend(_module_like(numpy_backend, gemm_bias_activation=off), verbose=False, quick=True)
    failed = [r.name for r in report.results if not r.ok]
    assert failed == [name]


def test_a_fused_kernel_with_the_wrong_signature_is_refused_by_name():
    def wrong(x, W, b):
        return x @ W + b
    with pytest.raises(ImportError, match=r"gemm_bias_activation\(x, W, b\) differs from the contract"):
        kernels.register_backend("wrong-fused", _module_like(numpy_backend, gemm_bias_activation=wrong))
