"""Tests of the built-in synthetic-digits data set."""

import numpy as np
import pytest

from scratchvae.data.synthetic import synthetic_digits


@pytest.fixture(scope="module")
def sample():
    """2,000 images at the default size, shared by the statistical tests."""
    return synthetic_digits(2000, seed=123)


def centre_of_mass(images):
    """(row, col) ink centre of mass of each image, shape (n, 2)."""
    size = images.shape[1]
    r = np.arange(size)
    total = images.sum(axis=(1, 2))
    rows = (images.sum(axis=2) * r).sum(axis=1) / total
    cols = (images.sum(axis=1) * r).sum(axis=1) / total
    return np.stack([rows, cols], axis=1)


@pytest.mark.parametrize("n, size", [(1, 28), (37, 28), (25, 16), (10, 8)])
def test_shapes_dtypes_and_range(n, size):
    images, labels = synthetic_digits(n, seed=1, size=size)
    assert images.shape == (n, size, size)
    assert images.dtype == np.float32
    assert labels.shape == (n,)
    assert labels.dtype == np.int64
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert labels.min() >= 0 and labels.max() <= 9
    # MNIST-like: mostly background, some full ink in every image
    assert (images.reshape(n, -1).max(axis=1) > 0.5).all()
    assert (images == 0).mean() > 0.5


def test_same_seed_gives_identical_arrays():
    a, la = synthetic_digits(300, seed=7)
    b, lb = synthetic_digits(300, seed=7)
    assert np.array_equal(la, lb)
    assert np.array_equal(a, b)  # bit for bit


def test_different_seeds_give_different_images():
    a, la = synthetic_digits(300, seed=7)
    b, lb = synthetic_digits(300, seed=8)
    assert not np.array_equal(la, lb)
    # compare within a class, so a changed label order alone cannot pass
    for c in (0, 4, 8):
        ma, mb = a[la == c], b[lb == c]
        k = min(len(ma), len(mb))
        assert np.abs(ma[:k] - mb[:k]).max(axis=(1, 2)).min() > 0.1


def test_labels_balanced_and_shuffled():
    _, labels = synthetic_digits(1003, seed=2)
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 1003
    assert counts.min() >= 100 and counts.max() <= 101
    assert not np.array_equal(labels, np.sort(labels))
    assert not np.array_equal(labels, np.arange(1003) % 10)


def test_every_class_has_plausible_ink(sample):
    images, labels = sample
    for c in range(10):
        ink = images[labels == c].mean(axis=(1, 2))
        # MNIST's mean pixel value is about 0.13; a "1" has less ink
        assert 0.03 < ink.mean() < 0.25, (c, ink.mean())
        assert ink.min() > 0.015, (c, ink.min())
        assert ink.max() < 0.4, (c, ink.max())


def test_digits_are_centred_and_inside_the_frame(sample):
    images, labels = sample
    centre = (images.shape[1] - 1) / 2.0
    com = centre_of_mass(images)
    for c in range(10):
        mean = com[labels == c].mean(axis=0)
        assert np.abs(mean - centre).max() < 1.5, (c, mean)
    assert np.abs(com - centre).max() < 4.0
    # nothing is cut off at the border
    border = np.concatenate([images[:, 0], images[:, -1],
                             images[:, :, 0], images[:, :, -1]], axis=1)
    assert border.max() < 0.2


def test_digits_fill_an_mnist_sized_box(sample):
    images, _ = sample
    inked = images > 0.5
    rows, cols = inked.any(axis=2), inked.any(axis=1)
    size = images.shape[1]

    def extent(m):
        return size - m[:, ::-1].argmax(axis=1) - m.argmax(axis=1)

    longer = np.maximum(extent(rows), extent(cols))
    assert 16 <= np.median(longer) <= 22
    assert longer.min() >= 12 and longer.max() <= 24


def test_classes_are_distinguishable():
    """A nearest-class-mean classifier does far better than chance (10%)."""
    train_x, train_y = synthetic_digits(2000, seed=10)
    test_x, test_y = synthetic_digits(1000, seed=11)
    means = np.stack([train_x[train_y == c].mean(axis=0).ravel()
                      for c in range(10)])
    flat = test_x.reshape(len(test_x), -1)
    dist = (flat ** 2).sum(1)[:, None] - 2 * flat @ means.T + (means ** 2).sum(1)
    accuracy = (dist.argmin(axis=1) == test_y).mean()
    assert accuracy > 0.6, accuracy


def test_images_within_a_class_vary(sample):
    images, labels = sample
    for c in range(10):
        members = images[labels == c]
        assert members.std(axis=0).mean() > 0.05, c
        # no two examples of a class are (nearly) the same picture
        flat = members.reshape(len(members), -1).astype(np.float64)
        sq = (flat ** 2).sum(axis=1)
        dist2 = sq[:, None] - 2 * flat @ flat.T + sq[None, :]
        np.fill_diagonal(dist2, np.inf)
        assert dist2.min() > 0.1, (c, dist2.min())


@pytest.mark.parametrize("n", [0, -5, 2.5, "10", None, True])
def test_bad_n_raises(n):
    with pytest.raises(ValueError, match="n must be"):
        synthetic_digits(n)


@pytest.mark.parametrize("size", [7, 0, -28, 28.0, "28", False])
def test_bad_size_raises(size):
    with pytest.raises(ValueError, match="size must be"):
        synthetic_digits(10, size=size)
