"""Adam and SGD against the textbook update rules, computed by hand here."""
import math

import numpy as np
import pytest

import scratchvae as sv
from scratchvae.optim import global_grad_norm

pytestmark = pytest.mark.usefixtures("backend")


def _problem():
    params = {"w": np.array([1.0, -2.0, 0.5]), "b": np.array([[0.3]])}
    grads = [{"w": np.array([0.1, -0.4, 2.0]), "b": np.array([[-1.0]])},
             {"w": np.array([-0.3, 0.2, 1.0]), "b": np.array([[0.5]])},
             {"w": np.array([0.05, 0.0, -2.0]), "b": np.array([[0.25]])}]
    return params, grads


def _adam_by_hand(p, gs, lr, b1, b2, eps, wd=0.0):
    m = v = 0.0
    for t, g in enumerate(gs, start=1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_matches_the_textbook_rule(wd):
    params, grads = _problem()
    start = {k: v.copy() for k, v in params.items()}
    opt = sv.Adam(params, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    for g in grads:
        opt.step(g)
    for k in params:
        for i in np.ndindex(params[k].shape):
            want = _adam_by_hand(start[k][i], [g[k][i] for g in grads], 0.05, 0.8, 0.99, 1e-6, wd)
            assert params[k][i] == pytest.approx(want, rel=1e-12)
    assert opt.step_count == 3


def test_adam_first_step_moves_each_weight_by_lr():
    """With bias correction, step 1 is lr * g / (|g| + eps): a sign step of size lr."""
    params = {"w": np.array([0.0, 0.0])}
    sv.Adam(params, lr=0.01, eps=0.0).step({"w": np.array([3.0, -1e-3])})
    np.testing.assert_allclose(params["w"], [-0.01, 0.01], rtol=1e-12)


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.2)])
def test_sgd_matches_the_textbook_rule(momentum, wd):
    params, grads = _problem()
    start = {k: v.copy() for k, v in params.items()}
    opt = sv.SGD(params, lr=0.1, momentum=momentum, weight_decay=wd)
    for g in grads:
        opt.step(g)
    for k in params:
        p, buf = start[k].copy(), 0.0
        for g in grads:
            buf = momentum * buf + g[k] + wd * p
            p = p - 0.1 * buf
        np.testing.assert_allclose(params[k], p, rtol=1e-12)


def test_clipping_scales_the_global_norm_and_leaves_grads_untouched():
    params, grads = _problem()
    g = grads[0]
    norm = math.sqrt(sum((v ** 2).sum() for v in g.values()))
    assert global_grad_norm(g) == pytest.approx(norm, rel=1e-12)
    clipped = {k: v.copy() for k, v in params.items()}
    plain = {k: v.copy() for k, v in params.items()}
    g_copy = {k: v.copy() for k, v in g.items()}
    sv.SGD(clipped, lr=1.0, max_grad_norm=0.5).step(g)
    sv.SGD(plain, lr=1.0).step({k: v * 0.5 / (norm + 1e-6) for k, v in g.items()})
    for k in params:
        np.testing.assert_allclose(clipped[k], plain[k], rtol=1e-12)
        np.testing.assert_array_equal(g[k], g_copy[k])
    # below the threshold nothing changes
    free = {k: v.copy() for k, v in params.items()}
    sv.SGD(free, lr=1.0, max_grad_norm=100.0).step(g)
    for k in params:
        np.testing.assert_allclose(free[k], params[k] - g[k], rtol=1e-12)


def test_state_dict_round_trip_continues_identically():
    params, grads = _problem()
    a = sv.Adam(params, lr=0.1)
    a.step(grads[0])
    state = a.state_dict()
    assert set(state) == {"step", "m.w", "m.b", "v.w", "v.b"}
    twin_params = {k: params[k].copy() for k in params}
    b = sv.Adam(twin_params, lr=0.1)
    b.load_state_dict(state)
    for g in grads[1:]:
        a.step(g)
        b.step(g)
    for k in params:
        np.testing.assert_array_equal(params[k], twin_params[k])
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"step": np.array(1)})


def test_bad_hyperparameters_and_gradients_are_refused():
    params, grads = _problem()
    with pytest.raises(ValueError, match="lr must be"):
        sv.Adam(params, lr=0.0)
    with pytest.raises(ValueError, match="beta1 must lie"):
        sv.Adam(params, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="momentum must lie"):
        sv.SGD(params, momentum=-0.1)
    with pytest.raises(ValueError, match="max_grad_norm must be"):
        sv.SGD(params, max_grad_norm=float("nan"))
    opt = sv.Adam(params)
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        opt.step({"w": grads[0]["w"]})
    with pytest.raises(ValueError, match="has shape"):
        opt.step({"w": np.zeros(2), "b": np.zeros((1, 1))})


def test_float32_parameters_stay_float32():
    params = {"w": np.ones(4, np.float32)}
    opt = sv.Adam(params)
    opt.step({"w": np.full(4, 0.5, np.float32)})
    assert params["w"].dtype == np.float32
    assert opt.state["m"]["w"].dtype == np.float32


def test_odd_arguments_are_refused_by_name_not_by_an_internal_error():
    """issue 21, the small ones: Adam({}) raised StopIteration, a list or float parameter AttributeError,
    betas=(0.9,) an unpacking error, lr='a' and momentum='a' errors that did not name the argument,
    an integer parameter was accepted (and never moved), and a complex gradient reached Numba's typing."""
    params, _ = _problem()
    cases = [
        (lambda: sv.Adam({}), ValueError, "params is empty"),
        (lambda: sv.SGD({}), ValueError, "params is empty"),
        (lambda: sv.Adam(None), TypeError, "params must be a dict"),
        (lambda: sv.Adam({"a": [1.0]}), TypeError, "parameter 'a' must be a float32 or float64 NumPy array"),
        (lambda: sv.Adam({"a": 1.0}), TypeError, "parameter 'a' must be a float32"),
        (lambda: sv.Adam({"a": np.zeros(3, int)}), TypeError, "got int64"),
        (lambda: sv.Adam(params, lr="a"), TypeError, "lr must be a finite number > 0, got 'a'"),
        (lambda: sv.Adam(params, betas=(0.9,)), ValueError, r"betas must be a pair of numbers"),
        (lambda: sv.Adam(params, betas=None), ValueError, r"betas must be a pair of numbers"),
        (lambda: sv.SGD(params, momentum="a"), ValueError, "momentum must lie in"),
        (lambda: sv.Adam(params).step(None), TypeError, "grads must be a dict"),
        (lambda: sv.Adam(params).step({"w": np.zeros(2, complex), "b": np.zeros(1)}), TypeError,
         "gradient 'w' must be an array of real numbers, got complex128"),
        (lambda: sv.Adam(params).step({"w": [0.0, 0.0], "b": np.zeros(1)}), TypeError, "gradient 'w'"),
    ]
    for make, kind, needle in cases:
        with pytest.raises(kind, match=needle):
            make()
