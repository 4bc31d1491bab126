"""The checker itself must catch wrong gradients."""
import numpy as np
import pytest

from scratchvae.gradcheck import check_op, gradcheck, numerical_gradient


def test_numerical_gradient_of_a_known_function_and_restores_the_input():
    x = np.array([[0.3, -1.2], [2.0, 0.5]])
    x0 = x.copy()
    g = numerical_gradient(lambda: float(np.sum(np.sin(x) * x)), x)
    np.testing.assert_allclose(g, np.cos(x0) * x0 + np.sin(x0), rtol=1e-9)
    np.testing.assert_array_equal(x, x0)


def test_a_wrong_gradient_fails_with_a_readable_report():
    x = np.array([1.0, 2.0, 3.0])
    report = gradcheck(lambda: float(np.sum(x ** 3)), {"x": x}, {"x": 3 * x ** 2 * (1 + 1e-4)})
    assert not report.ok and report.max_rel_error > 1e-6
    with pytest.raises(AssertionError, match=r"x\s+\(3,\).*FAIL"):
        report.raise_if_failed()
    good = gradcheck(lambda: float(np.sum(x ** 3)), {"x": x}, {"x": 3 * x ** 2})
    assert good.ok and "all ok" in str(good)


def test_check_op_catches_a_backward_that_forgets_a_term():
    def forward(a):
        return a * a + a, None

    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4))
    assert check_op(forward, lambda c, d: {"a": d * (2 * a + 1)}, {"a": a}).ok
    assert not check_op(forward, lambda c, d: {"a": d * 2 * a}, {"a": a}).ok


def test_subset_checking_and_argument_errors():
    x = np.linspace(-1, 1, 50)
    report = gradcheck(lambda: float(np.sum(x ** 2)), {"x": x}, {"x": 2 * x}, max_elements=7)
    assert report.rows[0].checked == 7 and report.ok
    with pytest.raises(ValueError, match="no analytic gradient"):
        gradcheck(lambda: 0.0, {"x": x}, {})
    with pytest.raises(ValueError, match="has shape"):
        gradcheck(lambda: 0.0, {"x": x}, {"x": x[:3]})
