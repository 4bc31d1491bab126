"""Activations, Linear and MLP: finite-difference checks and initialisers."""
import math

import numpy as np
import pytest

from scratchvae.gradcheck import check_op, gradcheck
from scratchvae.kernels import ACTIVATIONS, DEFAULT_ALPHA
from scratchvae.kernels import ops as K
from scratchvae.model import layers as nn

pytestmark = pytest.mark.usefixtures("backend")


def _away_from_kinks(a):
    """Push values off the kink of relu-like activations so +-h never crosses it."""
    return np.where(np.abs(a) < 1e-3, 0.5, a)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_gradient(act):
    """The kernels' pair on its own: y = f(a), and d_a = d_y * f'(a) from y."""
    rng = np.random.default_rng(0)
    a = _away_from_kinks(rng.standard_normal((5, 7)) * 2)
    alpha = DEFAULT_ALPHA.get(act, 0.0)

    def forward(a):
        y = K.bias_activation(a, np.zeros(a.shape[1]), act, alpha)
        return y, y

    check_op(forward, lambda y, d: {"a": K.activation_backward(y, d, act, alpha)}, {"a": a}).raise_if_failed()


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linear_gradient(act):
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((6, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)

    def backward(cache, d):
        d_x, g = nn.linear_backward(cache, d)
        return {"x": d_x, "W": g["W"], "b": g["b"]}

    check_op(lambda x, W, b: nn.linear_forward(x, W, b, act), backward,
             {"x": x, "W": W, "b": b}).raise_if_failed()


@pytest.mark.parametrize("act", ["identity", "relu", "tanh"])
def test_linear_with_a_context_block_and_row_weights(act):
    """y = f([x, c] @ W + b) without the concatenation; rows weighted in the backward."""
    rng = np.random.default_rng(5)
    x, c = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    W, b, rows = rng.standard_normal((6, 3)), rng.standard_normal(3), rng.random(6)
    y, _ = nn.linear_forward(x, W, b, act, c=c)
    np.testing.assert_allclose(y, nn.linear_forward(np.concatenate([x, c], axis=1), W, b, act)[0], rtol=1e-12)

    def backward(cache, d):
        d_x, g = nn.linear_backward(cache, d / rows[:, None], row_scale=rows)
        return {"x": d_x, "W": g["W"], "b": g["b"]}

    check_op(lambda x, W, b: nn.linear_forward(x, W, b, act, c=c), backward,
             {"x": x, "W": W, "b": b}).raise_if_failed()


def test_linear_accumulates_its_input_gradient_when_asked():
    rng = np.random.default_rng(6)
    x, W = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    y, cache = nn.linear_forward(x, W, np.zeros(2))
    d_y, earlier = rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    d_x = earlier.copy()
    nn.linear_backward(cache, d_y, d_x=d_x, accumulate_d_x=True)
    np.testing.assert_allclose(d_x, earlier + d_y @ W.T, rtol=1e-12)


def test_linear_skips_the_input_gradient_when_not_needed():
    rng = np.random.default_rng(2)
    y, cache = nn.linear_forward(rng.standard_normal((2, 3)), rng.standard_normal((3, 4)), np.zeros(4))
    d_x, g = nn.linear_backward(cache, np.ones_like(y), need_d_x=False)
    assert d_x is None and g["W"].shape == (3, 4) and g["b"].shape == (4,)


@pytest.mark.parametrize("sizes,acts", [([5, 9, 4, 3], ["tanh", "elu", "identity"]),
                                         ([3, 2], ["sigmoid"]),
                                         ([4, 6, 6, 6, 2], ["softplus", "leaky_relu", "relu", "identity"])])
def test_mlp_gradient_any_depth(sizes, acts):
    rng = np.random.default_rng(3)
    mlp = nn.MLP("m", sizes, acts)
    params = mlp.init(rng, "glorot_normal", np.float64)
    for k in params:                       # non-zero biases so that they are tested too
        params[k] += 0.1 * rng.standard_normal(params[k].shape)
    x = rng.standard_normal((7, sizes[0]))
    w = rng.standard_normal((7, sizes[-1]))
    y, caches = mlp.forward(params, x)
    grads = {}
    d_x = mlp.backward(caches, w, grads)
    arrays = dict(params, x=x)
    analytic = dict(grads, x=d_x)
    gradcheck(lambda: float(np.sum(w * mlp.forward(params, x)[0])), arrays, analytic).raise_if_failed()
    assert sorted(grads) == sorted(params)


def test_mlp_rejects_bad_sizes_and_activation_counts():
    with pytest.raises(ValueError, match="positive integers"):
        nn.MLP("m", [3, 0, 2], ["relu", "identity"])
    with pytest.raises(ValueError, match="need 2 activations"):
        nn.MLP("m", [3, 4, 2], ["relu"])
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nn.MLP("m", [3, 2], ["swish"])


@pytest.mark.parametrize("init,fan_in,fan_out", [("torch", 400, 300), ("glorot_uniform", 400, 300),
                                                  ("glorot_normal", 400, 300), ("he_uniform", 400, 300),
                                                  ("he_normal", 400, 300)])
def test_initialiser_distributions(init, fan_in, fan_out):
    W, b = nn.init_linear(np.random.default_rng(4), fan_in, fan_out, init, np.float64)
    assert W.shape == (fan_in, fan_out) and b.shape == (fan_out,)
    if init == "torch":
        bound = 1 / math.sqrt(fan_in)
        for a in (W, b):
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.98 * bound
        assert W.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)     # uniform: std = bound/sqrt(3)
        return
    assert np.all(b == 0)
    n = fan_in + fan_out if init.startswith("glorot") else fan_in
    std = math.sqrt(2 / n)
    if init.endswith("uniform"):
        std = math.sqrt(6 / n) / math.sqrt(3)
        assert np.abs(W).max() <= math.sqrt(6 / n)
    assert W.std() == pytest.approx(std, rel=0.02)
    assert abs(W.mean()) < 0.02 * std


def test_init_is_reproducible_and_dtype_only_rounds():
    W64, _ = nn.init_linear(np.random.default_rng(5), 3, 4, "torch", np.float64)
    W32, _ = nn.init_linear(np.random.default_rng(5), 3, 4, "torch", np.float32)
    assert W32.dtype == np.float32
    np.testing.assert_array_equal(W32, W64.astype(np.float32))


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        nn.init_linear(np.random.default_rng(0), 2, 2, "xavier", np.float64)
