"""The sample-quality figures: the Fréchet distance against closed forms, the
prediction figures on predictions whose answer is known, and the judge on a
small labelled data set, where real images must score far better than bad ones."""
import numpy as np
import pytest
from conftest import bars_and_blocks

from scratchvae.inference.quality import (SampleJudge, frechet_distance, gaussian_frechet_distance,
                                          prediction_figures)


def _random_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_distance_of_commuting_covariances_has_its_closed_form():
    """Diagonal covariances: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(0)
    a, b = rng.random(5) + 0.1, rng.random(5) + 0.1
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)
    want = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert gaussian_frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(want, rel=1e-12)


def test_frechet_distance_of_any_covariances():
    """tr (c1^1/2 c2 c1^1/2)^1/2 equals the sum of the square roots of the eigenvalues of
    c1 c2 (similar matrices): an independent route. Zero for equal Gaussians, symmetric."""
    rng = np.random.default_rng(1)
    c1, c2 = _random_cov(rng, 6), _random_cov(rng, 6)
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    cross = np.sqrt(np.linalg.eigvals(c1 @ c2).real).sum()
    want = ((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * cross
    assert gaussian_frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-9)
    assert gaussian_frechet_distance(m2, c2, m1, c1) == pytest.approx(want, rel=1e-9)
    assert abs(gaussian_frechet_distance(m1, c1, m1, c1)) < 1e-9


def test_frechet_distance_of_samples_tends_to_that_of_their_gaussians():
    rng = np.random.default_rng(2)
    c = _random_cov(rng, 4)
    L = np.linalg.cholesky(c)
    f1 = rng.standard_normal((50000, 4)) @ L.T
    f2 = rng.standard_normal((50000, 4)) @ L.T
    same = frechet_distance(f1, f2)
    shifted = frechet_distance(f1, f2 + 1.0)
    assert 0 <= same < 0.01
    # a shift by 1 in every dimension adds |m1 - m2 - 1|^2 - |m1 - m2|^2 = d - 2 sum(m1 - m2)
    assert shifted == pytest.approx(same + 4 - 2 * (f1.mean(axis=0) - f2.mean(axis=0)).sum(), rel=1e-9)
    squeezed = frechet_distance(f1, 0.5 * f2)         # less variety: a larger distance too
    assert squeezed == pytest.approx(0.25 * np.trace(c), rel=0.03)


def test_prediction_figures():
    even = np.eye(4)[np.arange(400) % 4]
    assert prediction_figures(even) == {"confidence": 1.0, "balance": pytest.approx(1.0), "class_counts": [100] * 4}
    one_class = np.tile([0.1, 0.7, 0.1, 0.1], (50, 1))
    figures = prediction_figures(one_class)
    assert figures["balance"] == 0 and figures["confidence"] == pytest.approx(0.7)
    assert figures["class_counts"] == [0, 50, 0, 0]
    two = np.eye(4)[np.arange(100) % 2]
    assert prediction_figures(two)["balance"] == pytest.approx(0.5)      # log 2 / log 4


@pytest.fixture(scope="module")
def judge_and_data():
    rng = np.random.default_rng(3)
    x_tr, y_tr = bars_and_blocks(rng, 1200)
    x_te, y_te = bars_and_blocks(rng, 400)
    return SampleJudge(x_tr, y_tr, 4, steps=300, seed=0, hidden=(16,)), x_tr, x_te, y_te


def test_the_judge_scores_real_images_far_better_than_bad_samples(judge_and_data):
    judge, x_tr, x_te, y_te = judge_and_data
    assert judge.accuracy(x_te, y_te) > 0.95
    real = judge.score(x_te, x_tr)
    assert real["confidence"] > 0.9 and real["balance"] > 0.95
    rng = np.random.default_rng(4)
    noise = judge.score(rng.random(x_te.shape).astype(np.float32), x_tr)
    blur = judge.score(np.tile(x_tr.mean(axis=0), (400, 1)), x_tr)        # the mean image, 400 times
    one = judge.score(x_te[y_te == 2], x_tr)                               # sharp, but one class only
    assert real["frechet"] < 0.05 * min(noise["frechet"], blur["frechet"], one["frechet"])
    assert blur["balance"] == 0 and one["balance"] < 0.1
    assert one["confidence"] > 0.9 > blur["confidence"]
