"""Named data sets: lookup order, loading, the Dataset checks, array files, binarize."""
from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from scratchvae.data import datasets as ds
from scratchvae.data.datasets import (
    Dataset,
    DatasetNotFoundError,
    binarize,
    find_dataset,
    load_array_file,
    load_dataset,
)
from scratchvae.data.idx import IDXError, write_idx

NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def make_fake_set(folder: Path, n_train=12, n_test=5, seed=0) -> Path:
    """Write four small, valid MNIST-like IDX files into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz",
                  (np.arange(n) % 10).astype(np.uint8))
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No real data visible: HOME and the system folder point into tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SCRATCHVAE_DATA", raising=False)
    monkeypatch.setattr(ds, "SYSTEM_DIR", tmp_path / "usr-share-datasets")
    return tmp_path


# --- lookup order -----------------------------------------------------------


def test_lookup_order(isolated, monkeypatch):
    tmp = isolated
    system = make_fake_set(tmp / "usr-share-datasets" / "mnist")
    assert find_dataset("mnist") == system

    cache = make_fake_set(tmp / "home" / ".cache" / "scratchvae" / "mnist")
    assert find_dataset("mnist") == cache

    env = make_fake_set(tmp / "envdata" / "mnist")
    monkeypatch.setenv("SCRATCHVAE_DATA", str(tmp / "envdata"))
    assert find_dataset("mnist") == env

    parent = make_fake_set(tmp / "explicit-parent" / "mnist")
    assert find_dataset("mnist", data_dir=tmp / "explicit-parent") == parent

    direct = make_fake_set(tmp / "explicit")
    assert find_dataset("mnist", data_dir=direct) == direct
    assert find_dataset("MNIST", data_dir=str(direct)) == direct


def test_incomplete_folder_is_skipped(isolated, monkeypatch):
    tmp = isolated
    partial = make_fake_set(tmp / "envdata" / "kmnist")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("SCRATCHVAE_DATA", str(tmp / "envdata"))
    cache = make_fake_set(tmp / "home" / ".cache" / "scratchvae" / "kmnist")
    assert find_dataset("kmnist") == cache


def test_decompressed_files_are_accepted(isolated):
    import gzip
    folder = make_fake_set(isolated / "plain")
    for name in NAMES:
        gz = folder / name
        (folder / name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert find_dataset("mnist", folder) == folder
    assert load_dataset("mnist", folder).x_train.shape == (12, 784)


def test_not_found_message_lists_every_place(isolated, monkeypatch):
    tmp = isolated
    monkeypatch.setenv("SCRATCHVAE_DATA", str(tmp / "envdata"))
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset("fashion-mnist", data_dir=tmp / "given")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in [tmp / "given", tmp / "given" / "fashion-mnist",
                  tmp / "envdata" / "fashion-mnist",
                  tmp / "home" / ".cache" / "scratchvae" / "fashion-mnist",
                  tmp / "usr-share-datasets" / "fashion-mnist"]:
        assert str(place) in msg, msg
    assert "scratchvae download fashion-mnist" in msg
    assert "dataset-fashion-mnist" in msg


def test_not_found_mentions_unset_env(isolated):
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset("mnist")
    msg = str(info.value)
    assert "SCRATCHVAE_DATA" in msg and "not set" in msg
    assert "scratchvae download mnist" in msg
    assert "dataset-fashion-mnist" not in msg


def test_unknown_name(isolated):
    with pytest.raises(ValueError, match="known"):
        find_dataset("cifar-10")
    with pytest.raises(ValueError, match="unknown"):
        load_dataset("cifar-10")


def test_every_named_set_records_urls_and_hashes():
    for name, spec in ds.DATASETS.items():
        assert sorted(spec.sha256) == sorted(NAMES), name
        for fname, digests in spec.sha256.items():
            assert digests and all(len(d) == 64 and int(d, 16) >= 0 for d in digests)
            assert all(u.endswith("/" + fname) for u in spec.urls(fname))
            assert spec.urls(fname)


# --- loading ------------------------------------------------------------------


def test_load_fake_set(isolated):
    folder = make_fake_set(isolated / "data" / "mnist", n_train=12, n_test=5)
    d = load_dataset("mnist", isolated / "data")
    assert d.name == "mnist"
    assert d.x_train.shape == (12, 784) and d.x_test.shape == (5, 784)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.image_shape == (28, 28)
    from scratchvae.data.idx import read_idx
    raw = read_idx(folder / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(d.x_train, raw.reshape(12, 784) / np.float32(255))
    np.testing.assert_array_equal(d.y_test, np.arange(5) % 10)


def test_load_rejects_count_mismatch(isolated):
    folder = make_fake_set(isolated / "mnist")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(IDXError, match="12 images but .* 11 labels"):
        load_dataset("mnist", folder)


def test_load_rejects_wrong_image_size(isolated):
    folder = make_fake_set(isolated / "mnist")
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 27), dtype=np.uint8))
    with pytest.raises(IDXError, match="28x28"):
        load_dataset("mnist", folder)


def test_load_corrupt_file_says_how_to_fix(isolated):
    folder = make_fake_set(isolated / "kmnist")
    p = folder / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(IDXError) as info:
        load_dataset("kmnist", folder)
    assert str(p) in str(info.value)
    assert "scratchvae download kmnist" in str(info.value)


def test_synthetic_branch(monkeypatch):
    calls = []

    def fake(n, seed):
        calls.append((n, seed))
        images = np.zeros((n, 28, 28), np.float32)
        images[:, 0, 0] = (seed % 100) / 100.0  # makes the seed visible in the data
        return images, (np.arange(n) % 10).astype(np.int64)

    module = types.ModuleType("scratchvae.data.synthetic")
    module.synthetic_digits = fake
    monkeypatch.setitem(sys.modules, "scratchvae.data.synthetic", module)
    import scratchvae.data as pkg
    monkeypatch.setattr(pkg, "synthetic", module, raising=False)

    d = load_dataset("synthetic-digits", seed=7)
    assert d.name == "synthetic-digits"
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.y_train.shape == (60000,) and d.y_test.dtype == np.int64
    assert d.image_shape == (28, 28)
    (n1, s1), (n2, s2) = calls
    assert (n1, s1) == (60000, 7) and n2 == 10000 and s2 != 7
    assert d.x_train[0, 0] == np.float32(0.07)
    np.testing.assert_array_equal(d.y_train[:12], np.arange(12) % 10)
    load_dataset("synthetic-digits", seed=7)
    assert calls[-1] == (10000, s2)  # derived seed is deterministic
    load_dataset("synthetic-digits", seed=8)
    assert calls[-2] == (60000, 8) and calls[-1][1] not in (s2, 8)


def test_synthetic_bad_shape_is_caught(monkeypatch):
    module = types.ModuleType("scratchvae.data.synthetic")
    module.synthetic_digits = lambda n, seed: (np.zeros((n, 27, 28), np.float32),
                                               np.zeros(n, np.int64))
    monkeypatch.setitem(sys.modules, "scratchvae.data.synthetic", module)
    import scratchvae.data as pkg
    monkeypatch.setattr(pkg, "synthetic", module, raising=False)
    with pytest.raises(ValueError, match="28, 28"):
        load_dataset("synthetic-digits")


# --- real data ----------------------------------------------------------------


def _real_fashion_dir():
    root = os.environ.get("SCRATCHVAE_DATA")
    if not root:
        pytest.skip("SCRATCHVAE_DATA is not set: no real Fashion-MNIST to test against "
                    "(CI sets it to shared/data)")
    folder = Path(root) / "fashion-mnist"
    missing = [n for n in NAMES if not (folder / n).is_file()]
    if missing:
        pytest.skip(f"SCRATCHVAE_DATA={root} lacks fashion-mnist/{', '.join(missing)}")
    return folder


def test_real_fashion_mnist():
    folder = _real_fashion_dir()
    assert find_dataset("fashion-mnist") == folder
    d = load_dataset("fashion-mnist")
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.x_train.dtype == np.float32
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert 0.0 <= d.x_test.min() and d.x_test.max() <= 1.0
    assert set(np.unique(d.y_train)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(d.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(d.y_test), np.full(10, 1000))
    # the mean Fashion-MNIST pixel is about 0.286
    assert abs(float(d.x_train.mean()) - 0.286) < 0.01


def test_real_fashion_files_match_recorded_hashes():
    from scratchvae.data.download import sha256_file
    folder = _real_fashion_dir()
    for name in NAMES:
        assert sha256_file(folder / name) in ds.DATASETS["fashion-mnist"].sha256[name]


# --- the Dataset checks ----------------------------------------------------------


def _good(**over):
    kw = dict(name="t", x_train=np.zeros((4, 6), np.float32), y_train=np.zeros(4, np.int64),
              x_test=np.ones((2, 6), np.float32), y_test=None, image_shape=(2, 3))
    kw.update(over)
    return kw


def test_dataset_accepts_good_input():
    d = Dataset(**_good())
    assert d.n_features == 6 and d.image_shape == (2, 3)
    assert "x_train=float32(4, 6)" in repr(d)
    Dataset(**_good(image_shape=None, y_train=None))


@pytest.mark.parametrize("over, match", [
    (dict(x_train=np.zeros((4, 6), np.float64)), "float32"),
    (dict(x_train=np.zeros((4, 2, 3), np.float32)), "2-D"),
    (dict(x_test=np.full((2, 6), np.nan, np.float32)), "NaN"),
    (dict(x_test=np.full((2, 6), 1.5, np.float32)), r"\[0, 1\]"),
    (dict(x_train=np.full((4, 6), -0.1, np.float32)), r"\[0, 1\]"),
    (dict(y_train=np.zeros(3, np.int64)), "shape"),
    (dict(y_train=np.zeros(4, np.int32)), "int64"),
    (dict(x_test=np.zeros((2, 5), np.float32)), "features"),
    (dict(image_shape=(28, 28)), "image_shape"),
    (dict(x_train=np.zeros((0, 6), np.float32), y_train=None), "empty"),
])
def test_dataset_rejects(over, match):
    with pytest.raises(ValueError, match=match):
        Dataset(**_good(**over))


# --- load_array_file ---------------------------------------------------------------


def test_array_file_uint8_3d(tmp_path):
    a = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    np.save(tmp_path / "a.npy", a)
    x = load_array_file(tmp_path / "a.npy")
    assert x.shape == (2, 20) and x.dtype == np.float32
    np.testing.assert_allclose(x, a.reshape(2, 20) / 255.0, rtol=1e-6)


@pytest.mark.parametrize("shape, image_shape", [((3, 4, 16), (4, 16)), ((3, 28, 20), (28, 20)),
                                                 ((3, 64), (8, 8)), ((3, 24), None)])
def test_array_file_keeps_the_image_shape_of_n_h_w(tmp_path, shape, image_shape):
    """(n, h, w) was flattened and a square guessed: (n, 4, 16) drawn 8x8, (n, 28, 20) not images (issue 21)."""
    np.save(tmp_path / "a.npy", np.zeros(shape, np.float32))
    x, found = ds.load_array_images(tmp_path / "a.npy")
    assert x.shape == (3, int(np.prod(shape[1:]))) and found == image_shape


def test_array_file_missing_says_so_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_array_file(tmp_path / "gone.npy")
    assert str(info.value) == f"{tmp_path / 'gone.npy'}: no such file"


def test_array_file_float_2d_and_npz(tmp_path):
    a = np.linspace(0, 1, 12).reshape(3, 4)
    np.save(tmp_path / "f.npy", a)
    np.testing.assert_allclose(load_array_file(tmp_path / "f.npy"), a, rtol=1e-6)
    np.savez(tmp_path / "one.npz", whatever=a)
    assert load_array_file(tmp_path / "one.npz").shape == (3, 4)
    np.savez(tmp_path / "x.npz", x=a, y=np.arange(3))
    np.testing.assert_allclose(load_array_file(tmp_path / "x.npz"), a, rtol=1e-6)
    np.save(tmp_path / "b.npy", a > 0.5)
    assert set(np.unique(load_array_file(tmp_path / "b.npy"))) <= {0.0, 1.0}


@pytest.mark.parametrize("content, match", [
    (np.zeros(5, np.float32), "shape"),
    (np.zeros((2, 3, 4, 5), np.float32), "shape"),
    (np.zeros((0, 4), np.float32), "empty"),
    (np.array([[0.5, np.nan]]), "NaN"),
    (np.array([[0.5, 2.0]]), r"\[0, 1\]"),
    (np.array([[0.5, -1.0]], np.float32), r"\[0, 1\]"),
    (np.array([[1, 2]], np.int64), "dtype"),
])
def test_array_file_rejects(tmp_path, content, match):
    p = tmp_path / "bad.npy"
    np.save(p, content)
    with pytest.raises(ValueError, match=match):
        load_array_file(p)


def test_array_file_rejects_pickles_and_ambiguity(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_array_file(p)
    q = tmp_path / "obj.npz"
    np.savez(q, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_array_file(q)
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="'x'"):
        load_array_file(tmp_path / "two.npz")
    (tmp_path / "a.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=".npy or .npz"):
        load_array_file(tmp_path / "a.csv")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        load_array_file(tmp_path / "junk.npy")


# --- binarize -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_values_and_mean(dtype):
    rng = np.random.default_rng(0)
    p = np.linspace(0, 1, 101, dtype=dtype)
    x = np.tile(p, (4000, 1))
    b = binarize(x, rng)
    assert b.dtype == dtype and b.shape == x.shape
    assert set(np.unique(b)) <= {0.0, 1.0}
    col_means = b.mean(axis=0)
    # 4000 draws per column: standard error <= 0.008
    assert np.all(np.abs(col_means - p) < 0.04)
    assert col_means[0] == 0.0 and col_means[-1] == 1.0
    assert abs(b.mean() - x.mean()) < 0.005


def test_binarize_is_reproducible_and_random():
    x = np.full((50, 50), 0.5, np.float32)
    a = binarize(x, np.random.default_rng(3))
    b = binarize(x, np.random.default_rng(3))
    c = binarize(x, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(TypeError):
        binarize(x, 3)


@pytest.mark.parametrize("head", [b"x,y\n0.1,0.2\n", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_a_file_that_is_not_numpy_is_named_so_not_pickled(tmp_path, head):
    """A text file or a picture renamed .npy was reported as holding pickled objects (issue 21)."""
    path = tmp_path / "data.npy"
    path.write_bytes(head * 20)
    with pytest.raises(ValueError, match="not a NumPy file") as e:
        load_array_file(path)
    assert "pickled" not in str(e.value)
    pickled = tmp_path / "objects.npy"
    pickled.write_bytes(pickle.dumps({"x": [1, 2]}))
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_array_file(pickled)
