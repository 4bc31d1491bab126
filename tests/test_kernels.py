"""The kernel contract and the numerics of the reference kernels."""
import inspect
import math

import numpy as np
import pytest

from scratchvae import kernels
from scratchvae.kernels import reference as R


def test_every_backend_implements_the_contract_with_the_reference_signatures(backend):
    for name, module_name in kernels.BACKENDS.items():
        if name != backend:
            continue
        module = __import__(module_name, fromlist=["_"])
        for k in kernels.CONTRACT:
            assert inspect.signature(getattr(module, k)) == inspect.signature(getattr(R, k)), (name, k)


def test_set_backend_rejects_unknown_names_and_rebinds_ops():
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        kernels.set_backend("cuda")
    before = kernels.get_backend()
    kernels.set_backend("numpy")
    try:
        assert kernels.get_backend() == "numpy"
        assert kernels.ops.gemm is R.gemm
    finally:
        kernels.set_backend(before)


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True)])
def test_gemm_layouts_match_matmul(trans_a, trans_b):
    rng = np.random.default_rng(0)
    m, k, n = 7, 5, 3
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    out = np.empty((m, n))
    got = R.gemm(a, b, out=out, trans_a=trans_a, trans_b=trans_b)
    assert got is out
    np.testing.assert_allclose(got, want, rtol=1e-12)


NAIVE = {
    "identity": lambda a, al: a,
    "relu": lambda a, al: np.maximum(a, 0),
    "leaky_relu": lambda a, al: np.where(a > 0, a, al * a),
    "tanh": lambda a, al: np.tanh(a),
    "sigmoid": lambda a, al: 1 / (1 + np.exp(-a)),
    "softplus": lambda a, al: np.log(1 + np.exp(a)),
    "elu": lambda a, al: np.where(a > 0, a, al * (np.exp(a) - 1)),
}


@pytest.mark.parametrize("act", R.ACTIVATIONS)
def test_bias_activation_matches_the_textbook_formula(act):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)) * 3, rng.standard_normal(4)
    np.testing.assert_allclose(R.bias_activation(a.copy(), b, act, 0.3), NAIVE[act](a + b, 0.3),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("act", ["sigmoid", "softplus", "tanh", "elu"])
def test_activations_do_not_overflow_on_huge_inputs(act):
    a = np.array([[-1e4, -800.0, 0.0, 800.0, 1e4]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = R.bias_activation(a.copy(), np.zeros(5), act, 1.0)
        d = R.activation_backward(y, np.ones_like(y), act, 1.0)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(d))


def test_bernoulli_nll_is_stable_for_huge_logits():
    logits = np.array([[-1e4, 1e4, 0.0]])
    x = np.array([[0.0, 1.0, 0.5]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        nll, d = R.bernoulli_nll(logits, x, 1.0)
    np.testing.assert_allclose(nll, [math.log(2)], rtol=1e-12)   # only the middle pixel costs
    np.testing.assert_allclose(d, [[0, 0, 0]], atol=1e-300)
    _, d = R.bernoulli_nll(np.array([[-0.0, 0.0]]), np.zeros((1, 2)), 1.0)
    np.testing.assert_array_equal(d, [[0.5, 0.5]])            # sigmoid(-0) = sigmoid(0) = 1/2


def _cb_log_normalizer_exact(l):
    """log C from its definition on lambda = sigmoid(l), in float64 (valid away from l = 0)."""
    lam = 1 / (1 + np.exp(-l))
    return np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))


def test_cb_log_normalizer_matches_definition_and_is_continuous_at_the_switch():
    l = np.array([-8.0, -3.0, -0.5, 0.3, 2.0, 8.0])    # where the definition is accurate
    np.testing.assert_allclose(R.cb_log_normalizer(l), _cb_log_normalizer_exact(l), rtol=1e-10)
    # the series (below 0.1) and the direct formula (above) agree at the switch
    below, above = np.nextafter(0.1, 0), 0.1
    assert abs(R.cb_log_normalizer(np.array([below]))[0] - R.cb_log_normalizer(np.array([above]))[0]) < 1e-14
    assert abs(R.cb_log_normalizer_grad(np.array([below]))[0]
               - R.cb_log_normalizer_grad(np.array([above]))[0]) < 1e-13
    assert R.cb_log_normalizer(np.array([0.0]))[0] == pytest.approx(math.log(2), abs=1e-16)


def test_cb_density_integrates_to_one_near_and_far_from_half():
    x = (np.arange(200000) + 0.5) / 200000      # midpoint rule on [0, 1]
    for l in [-30.0, -4.0, -1e-3, 0.0, 1e-7, 0.05, 0.5, 7.0]:
        logits = np.full((1, x.size), l)
        nll, _ = R.continuous_bernoulli_nll(logits, x[None], 1.0)
        # nll is summed over the grid; per-point densities are needed instead
        per_point = (np.maximum(l, 0) + np.log1p(np.exp(-abs(l))) - x * l) - R.cb_log_normalizer(logits)[0]
        assert np.exp(-per_point).mean() == pytest.approx(1.0, abs=1e-6), l
        assert nll[0] == pytest.approx(per_point.sum(), rel=1e-9, abs=1e-9)


def test_cb_log_normalizer_grad_matches_central_differences():
    l = np.array([-12.0, -1.0, -0.1, -1e-3, 0.0, 2e-2, 0.0999, 0.1001, 0.7, 30.0])
    h = 1e-6
    num = (R.cb_log_normalizer(l + h) - R.cb_log_normalizer(l - h)) / (2 * h)
    np.testing.assert_allclose(R.cb_log_normalizer_grad(l), num, rtol=1e-6, atol=1e-10)


def test_gaussian_nll_matches_the_density():
    rng = np.random.default_rng(2)
    mean, x = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    log_sigma = rng.standard_normal(4) * 0.3
    nll, _, _ = R.gaussian_nll(mean, x, log_sigma, 1.0)
    s = np.exp(log_sigma)
    want = -np.log(np.exp(-((x - mean) / s) ** 2 / 2) / (s * math.sqrt(2 * math.pi))).sum(1)
    np.testing.assert_allclose(nll, want, rtol=1e-12)


def test_float32_inputs_give_float32_outputs():
    rng = np.random.default_rng(3)
    x = rng.random((4, 5), dtype=np.float32)
    l = rng.standard_normal((4, 5), dtype=np.float32)
    for fn in (R.bernoulli_nll, R.continuous_bernoulli_nll):
        nll, d = fn(l, x, np.float32(0.25))
        assert nll.dtype == np.float32 and d.dtype == np.float32
    nll, d, ds = R.gaussian_nll(l, x, np.zeros(5, np.float32), 0.25)
    assert nll.dtype == d.dtype == ds.dtype == np.float32
    z, kl = R.gaussian_latent(l, l, l)
    assert z.dtype == np.float32 and kl.dtype == np.float32
    y = R.bias_activation(l.copy(), np.zeros(5, np.float32), "softplus", 0.0)
    assert y.dtype == np.float32
