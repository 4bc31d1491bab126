"""Named data sets, where to find them on disk, and plain array files.

A :class:`Dataset` holds a train and a test split as float32 matrices of
shape ``(n, d)`` with values in [0, 1] (one flattened image per row) and,
optionally, int64 labels.

Named data sets (see ``DATASETS``): ``mnist``, ``fashion-mnist`` and
``kmnist``, each four gzip'ed IDX files read from the first folder that has
them, in this order:

1. the ``data_dir`` argument: the folder holding the four files, or a parent
   holding ``<name>/``;
2. ``$SCRATCHVAE_DATA/<name>``;
3. ``~/.cache/scratchvae/<name>`` (where ``scratchvae download NAME`` saves);
4. ``/usr/share/datasets/<name>`` (where Debian's ``dataset-*`` packages
   install, e.g. ``dataset-fashion-mnist``).

And ``synthetic-digits``, generated in memory by
:func:`scratchvae.data.synthetic.synthetic_digits`; it needs no files.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .idx import IDXError, read_idx

#: The four files of every MNIST-like set, with the split and part each holds.
IDX_FILES: Tuple[Tuple[str, str, str], ...] = (
    ("train-images-idx3-ubyte.gz", "train", "images"),
    ("train-labels-idx1-ubyte.gz", "train", "labels"),
    ("t10k-images-idx3-ubyte.gz", "test", "images"),
    ("t10k-labels-idx1-ubyte.gz", "test", "labels"),
)
_FILENAMES = tuple(f for f, _, _ in IDX_FILES)

#: Name of the built-in, generated data set.
SYNTHETIC = "synthetic-digits"
SYNTHETIC_SIZES = (60_000, 10_000)  # (train, test)

#: Environment variable naming a folder that holds ``<name>/`` sub-folders.
ENV_VAR = "SCRATCHVAE_DATA"
SYSTEM_DIR = Path("/usr/share/datasets")


@dataclass(frozen=True)
class DatasetSpec:
    """What we know about a named data set.

    ``mirrors`` are base URLs, tried in order; a file's URL is the base, a
    slash and the file name.  ``sha256`` maps each file name to the SHA-256
    digests (hex) of the .gz files we accept: the upstream file first, then
    known byte-different repackagings of the same content.
    """

    name: str
    title: str
    homepage: str
    license: str
    mirrors: Tuple[str, ...]
    sha256: Dict[str, Tuple[str, ...]]
    classes: Tuple[str, ...]
    debian_package: Optional[str] = None

    def urls(self, filename: str) -> List[str]:
        """The download URLs of one file, in the order to try them."""
        return [m.rstrip("/") + "/" + filename for m in self.mirrors]


# Where the SHA-256 values come from (all of the .gz files as published):
#
# mnist   - TensorFlow Datasets, tensorflow_datasets/url_checksums/mnist.txt
#           (files fetched from the CVDF mirror, same sizes as the originals);
#           the same four values in torchvision's
#           torchvision/prototype/datasets/_builtin/mnist.py (class MNIST).
#           LeCun's own site often refuses downloads nowadays, hence the
#           mirrors first.
# kmnist  - TensorFlow Datasets, tensorflow_datasets/url_checksums/kmnist.txt;
#           the same values in torchvision's
#           torchvision/prototype/datasets/_builtin/mnist.py (class KMNIST).
# fashion - upstream: TensorFlow Datasets,
#           tensorflow_datasets/url_checksums/fashion_mnist.txt, the same in
#           torchvision's prototype mnist.py (class FashionMNIST).
#           Second value: Debian's dataset-fashion-mnist package (the copy in
#           this project's shared/data), recompressed without the file name
#           in the gzip header, so its .gz bytes differ; its decompressed
#           bytes are identical to upstream's (checked against the raw-file
#           digests several public projects publish).
DATASETS: Dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits (LeCun, Cortes, Burges)",
        homepage="http://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            "https://storage.googleapis.com/cvdf-datasets/mnist",
            "http://yann.lecun.com/exdb/mnist",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",),
        },
        classes=tuple(str(i) for i in range(10)),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando Research)",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        license="MIT",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",),
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        debian_package="dataset-fashion-mnist",
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        title="Kuzushiji-MNIST, 10 classes (ROIS-DS CODH)",
        homepage="https://github.com/rois-codh/kmnist",
        license="CC BY-SA 4.0",
        mirrors=(
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist",
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",),
            "train-labels-idx1-ubyte.gz": (
                "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",),
            "t10k-images-idx3-ubyte.gz": (
                "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",),
            "t10k-labels-idx1-ubyte.gz": (
                "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",),
        },
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}

#: Every name :func:`load_dataset` accepts.
DATASET_NAMES: Tuple[str, ...] = tuple(DATASETS) + (SYNTHETIC,)


class DatasetNotFoundError(FileNotFoundError):
    """The files of a named data set are in none of the places searched."""


# ---------------------------------------------------------------------------
# The Dataset container
# ---------------------------------------------------------------------------


def _check_x(name: str, x: np.ndarray, allow_empty: bool) -> None:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"Dataset.{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"Dataset.{name} must be 2-D (n, d), got shape {x.shape}")
    if x.dtype != np.float32:
        raise ValueError(f"Dataset.{name} must be float32, got {x.dtype}")
    if x.shape[1] == 0 or (x.shape[0] == 0 and not allow_empty):
        raise ValueError(f"Dataset.{name} is empty (shape {x.shape})")
    if x.size == 0:
        return
    if not np.isfinite(x).all():
        raise ValueError(f"Dataset.{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"Dataset.{name} values must lie in [0, 1], found [{lo}, {hi}]")


def _check_y(name: str, y: Optional[np.ndarray], n: int) -> None:
    if y is None:
        return
    if not isinstance(y, np.ndarray):
        raise TypeError(f"Dataset.{name} must be a numpy array or None, got {type(y).__name__}")
    if y.dtype != np.int64:
        raise ValueError(f"Dataset.{name} must be int64, got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"Dataset.{name} must have shape ({n},) to match the images, "
                         f"got {y.shape}")


@dataclass(repr=False)
class Dataset:
    """A train/test pair of flattened images in [0, 1], with optional labels.

    Attributes
    ----------
    name:        e.g. ``"fashion-mnist"``.
    x_train:     float32 ``(n_train, d)``, values in [0, 1], one image per row.
    y_train:     int64 ``(n_train,)`` class labels, or None.
    x_test:      float32 ``(n_test, d)``, same ``d``.
    y_test:      int64 ``(n_test,)`` or None.
    image_shape: ``(height, width)`` with ``height * width == d`` when the rows
                 are images (e.g. ``(28, 28)``), else None.

    ``__post_init__`` checks all of this and raises ValueError (TypeError for
    non-arrays) on any violation.
    """

    name: str
    x_train: np.ndarray
    y_train: Optional[np.ndarray]
    x_test: np.ndarray
    y_test: Optional[np.ndarray]
    image_shape: Optional[Tuple[int, ...]] = field(default=None)

    def __post_init__(self) -> None:
        _check_x("x_train", self.x_train, allow_empty=False)
        _check_x("x_test", self.x_test, allow_empty=True)
        if self.x_test.shape[1] != self.x_train.shape[1]:
            raise ValueError(f"Dataset: x_train has {self.x_train.shape[1]} features per row "
                             f"but x_test has {self.x_test.shape[1]}")
        _check_y("y_train", self.y_train, self.x_train.shape[0])
        _check_y("y_test", self.y_test, self.x_test.shape[0])
        if self.image_shape is not None:
            shape = tuple(int(s) for s in self.image_shape)
            if int(np.prod(shape)) != self.x_train.shape[1]:
                raise ValueError(f"Dataset: image_shape {shape} does not hold "
                                 f"{self.x_train.shape[1]} features")
            self.image_shape = shape

    @property
    def n_features(self) -> int:
        """``d``, the number of values per example (784 for 28x28 images)."""
        return int(self.x_train.shape[1])

    def fingerprint(self) -> Dict[str, dict]:
        """``{"train": ..., "test": ...}``, each split's :func:`fingerprint`."""
        return {"train": fingerprint(self.x_train, self.y_train), "test": fingerprint(self.x_test, self.y_test)}

    def __repr__(self) -> str:
        def lab(y: Optional[np.ndarray]) -> str:
            return "None" if y is None else f"int64{y.shape}"
        return (f"Dataset(name={self.name!r}, x_train=float32{self.x_train.shape}, "
                f"y_train={lab(self.y_train)}, x_test=float32{self.x_test.shape}, "
                f"y_test={lab(self.y_test)}, image_shape={self.image_shape})")


def fingerprint(x: np.ndarray, y: Optional[np.ndarray] = None) -> dict:
    """``{"shape": [n, d], "sha256": hex}``: x's shape and a SHA-256 of its
    bytes (C order) followed by the labels' (int64), if any. Two splits with
    the same fingerprint hold the same data; it takes about 0.15 s for
    60,000 x 784 float32 values."""
    digest = hashlib.sha256(np.ascontiguousarray(x).data)
    if y is not None:
        digest.update(np.ascontiguousarray(y, np.int64).data)
    return {"shape": [int(s) for s in x.shape], "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """Normalise spelling: ``Fashion_MNIST`` -> ``fashion-mnist``."""
    key = str(name).strip().lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    return key


def _spec(name: str) -> DatasetSpec:
    key = canonical_name(name)
    if key not in DATASETS:
        if key == SYNTHETIC:
            raise ValueError(f"{SYNTHETIC!r} is generated in memory and has no files; "
                             "use load_dataset")
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")
    return DATASETS[key]


def default_cache_dir(name: str) -> Path:
    """``~/.cache/scratchvae/<name>``: where downloads go by default."""
    return Path.home() / ".cache" / "scratchvae" / canonical_name(name)


def _locate_files(folder: Path) -> Tuple[Optional[Dict[str, Path]], str]:
    """Find the four IDX files in ``folder``.

    Each may be stored gzip'ed (``x.gz``, the usual form) or already
    decompressed (``x``).  Returns (mapping from the .gz file name to the
    path found, "") when all four are there, else (None, reason).
    """
    if not folder.is_dir():
        return None, "no such folder" if not folder.exists() else "not a folder"
    found: Dict[str, Path] = {}
    missing = []
    for fname in _FILENAMES:
        for candidate in (folder / fname, folder / fname[:-3]):
            if candidate.is_file():
                found[fname] = candidate
                break
        else:
            missing.append(fname)
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, ""


def _candidates(name: str, data_dir: Optional[os.PathLike]) -> List[Tuple[Optional[Path], str]]:
    """The folders to search, in order, as (path or None, how we got it)."""
    out: List[Tuple[Optional[Path], str]] = []
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        out.append((base, "data_dir argument"))
        out.append((base / name, "data_dir argument"))
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        out.append((Path(env).expanduser() / name, f"${ENV_VAR}/{name}"))
    else:
        out.append((None, f"${ENV_VAR}/{name}"))
    out.append((default_cache_dir(name), "user cache"))
    out.append((SYSTEM_DIR / name, "system-wide"))
    return out


def _find_files(name: str, data_dir: Optional[os.PathLike]) -> Tuple[Path, Dict[str, Path]]:
    spec = _spec(name)
    looked: List[str] = []
    for folder, how in _candidates(spec.name, data_dir):
        if folder is None:
            looked.append(f"  - {how}: ${ENV_VAR} is not set")
            continue
        files, reason = _locate_files(folder)
        if files is not None:
            return folder, files
        looked.append(f"  - {folder} ({how}): {reason}")
    how_to = [f"  - online: `scratchvae download {spec.name}` saves them to "
              f"{default_cache_dir(spec.name)}"]
    if spec.debian_package:
        how_to.append(f"  - on Debian or Ubuntu: `apt install {spec.debian_package}` installs "
                      f"them in {SYSTEM_DIR / spec.name}")
    how_to.append(f"  - or copy the four files into a folder `{spec.name}/` and set "
                  f"{ENV_VAR} to its parent, or pass that folder as data_dir")
    raise DatasetNotFoundError(
        f"data set {spec.name!r} not found: looked for {', '.join(_FILENAMES)} in\n"
        + "\n".join(looked)
        + "\nTo get it:\n" + "\n".join(how_to)
    )


def find_dataset(name: str, data_dir: Optional[os.PathLike] = None) -> Path:
    """Return the folder holding the four IDX files of the named data set.

    Searches, in order: ``data_dir`` itself, ``data_dir/<name>``,
    ``$SCRATCHVAE_DATA/<name>``, ``~/.cache/scratchvae/<name>``,
    ``/usr/share/datasets/<name>``; the first folder with all four files
    (each ``.gz`` or decompressed) wins.

    Raises
    ------
    DatasetNotFoundError
        None of them has the files; the message lists every place searched
        (and what was missing there) and how to get the data.
    ValueError
        Unknown name, or ``synthetic-digits`` (which has no files).
    """
    return _find_files(name, data_dir)[0]


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _read_split(name: str, files: Dict[str, Path], prefix: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read one split: images float32 (n, 784) in [0, 1], labels int64 (n,) in
    [0, number of classes); at least one image."""
    img_path = files[f"{prefix}-images-idx3-ubyte.gz"]
    lab_path = files[f"{prefix}-labels-idx1-ubyte.gz"]
    fix = (f"Replace the file: `scratchvae download {name}` fetches and verifies "
           "a fresh copy.")
    try:
        images = read_idx(img_path, expect_ndim=3)
        labels = read_idx(lab_path, expect_ndim=1)
    except IDXError as exc:
        raise IDXError(f"{exc}\n{fix}") from exc
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IDXError(f"{img_path} / {lab_path}: expected uint8 images and labels, got "
                       f"{images.dtype} and {labels.dtype}. {fix}")
    if images.shape[1:] != (28, 28):
        raise IDXError(f"{img_path}: expected 28x28 images, got shape {images.shape}. {fix}")
    if images.shape[0] != labels.shape[0]:
        raise IDXError(f"{img_path} has {images.shape[0]} images but {lab_path} has "
                       f"{labels.shape[0]} labels. {fix}")
    if images.shape[0] == 0:
        raise IDXError(f"{img_path}: holds no images (its header says 0). {fix}")
    n_classes = len(DATASETS[name].classes)
    if labels.max() >= n_classes:
        raise IDXError(f"{lab_path}: labels must lie in 0-{n_classes - 1} ({name} has {n_classes} classes), "
                       f"found {labels.max()}. {fix}")
    x = images.reshape(images.shape[0], -1).astype(np.float32)
    x /= np.float32(255.0)
    return x, labels.astype(np.int64)


def _derived_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for a sub-stream of ``seed``, stable across platforms."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(stream),))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


def _load_synthetic(seed: int) -> Dataset:
    # Imported here so this module works without (or before) synthetic.py.
    from .synthetic import synthetic_digits

    n_train, n_test = SYNTHETIC_SIZES
    parts = []
    for n, s in ((n_train, int(seed)), (n_test, _derived_seed(seed, 1))):
        images, labels = synthetic_digits(n, s)
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.shape != (n, 28, 28) or labels.shape != (n,):
            raise ValueError(f"synthetic_digits({n}, {s}) returned images {images.shape} and "
                             f"labels {labels.shape}; expected ({n}, 28, 28) and ({n},)")
        parts.append((np.ascontiguousarray(images.reshape(n, 784), dtype=np.float32),
                      labels.astype(np.int64)))
    (x_tr, y_tr), (x_te, y_te) = parts
    return Dataset(SYNTHETIC, x_tr, y_tr, x_te, y_te, (28, 28))


def load_dataset(name: str, data_dir: Optional[os.PathLike] = None, *, seed: int = 0) -> Dataset:
    """Load a named data set.

    Parameters
    ----------
    name:
        ``mnist``, ``fashion-mnist``, ``kmnist`` (read from IDX files found by
        :func:`find_dataset`) or ``synthetic-digits`` (generated).
    data_dir:
        Optional folder to look in first (see :func:`find_dataset`).
    seed:
        Only for ``synthetic-digits``: the train split is generated from
        ``seed``, the test split from a different seed derived from it.

    Returns
    -------
    Dataset
        ``x_*`` float32 ``(n, 784)`` = uint8 pixels / 255, ``y_*`` int64
        ``(n,)``, ``image_shape == (28, 28)``.  For the MNIST-like sets
        n_train = 60,000 and n_test = 10,000.

    Raises
    ------
    DatasetNotFoundError
        The files are nowhere to be found (the message says how to get them).
    IDXError
        A file is truncated or corrupt, or the images and labels disagree.
    """
    key = canonical_name(name)
    if key == SYNTHETIC:
        return _load_synthetic(seed)
    _, files = _find_files(key, data_dir)
    x_tr, y_tr = _read_split(key, files, "train")
    x_te, y_te = _read_split(key, files, "t10k")
    return Dataset(key, x_tr, y_tr, x_te, y_te, (28, 28))


# ---------------------------------------------------------------------------
# Plain arrays and binarisation
# ---------------------------------------------------------------------------


def load_array_file(path: os.PathLike) -> np.ndarray:
    """Load a user's own data from ``.npy`` or ``.npz``.

    Accepted content: one array of shape ``(n, d)`` or ``(n, h, w)`` (flattened
    to ``(n, h*w)``), either uint8 (pixels, divided by 255), bool (0/1), or
    floating point with every value in [0, 1].  An ``.npz`` must hold exactly
    one array or one called ``x``.  Nothing is unpickled.

    Returns
    -------
    np.ndarray
        float32 ``(n, d)``, C-contiguous, values in [0, 1].

    Raises
    ------
    ValueError
        Unsupported extension, pickled objects, ambiguous .npz, wrong number
        of dimensions, empty array, unsupported dtype, NaN/inf, or values
        outside [0, 1].
    """
    return load_array_images(path)[0]


def load_array_images(path: os.PathLike) -> Tuple[np.ndarray, Optional[Tuple[int, int]]]:
    """:func:`load_array_file`'s examples ``(n, d)`` and their image shape.

    The image shape is ``(h, w)`` of an ``(n, h, w)`` array, kept as it is
    (``(n, 28, 20)``, the Frey faces, are 28x20 images); of an ``(n, d)``
    array, ``(s, s)`` when ``d == s * s``, else None (not images).
    """
    path = Path(path)
    arr = _read_array(path)
    x = _as_examples(path, arr)
    if arr.ndim == 3:
        return x, (int(arr.shape[1]), int(arr.shape[2]))
    side = int(round(np.sqrt(x.shape[1])))
    return x, ((side, side) if side * side == x.shape[1] else None)


#: how a .npy file, a zip (.npz) and a pickle begin
NPY_MAGIC, ZIP_MAGIC, PICKLE_MAGIC = b"\x93NUMPY", b"PK", b"\x80"


def _read_array(path: Path) -> np.ndarray:
    """The array in a ``.npy`` file, or the one (or the one named ``x``) in an ``.npz``; nothing unpickled."""
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: expected a .npy or .npz file, not {suffix or 'no extension'!r}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except ValueError as exc:
        # NumPy takes any file that is neither .npy nor .npz for a pickle: look at its first bytes
        with open(path, "rb") as f:
            head = f.read(8)
        if not head.startswith((NPY_MAGIC, ZIP_MAGIC, PICKLE_MAGIC)):
            raise ValueError(f"{path}: not a NumPy file (it starts with {head!r}); save the data with "
                             "np.save or np.savez") from None
        if "pickle" in str(exc).lower():
            raise ValueError(f"{path}: holds pickled Python objects, which are not loaded "
                             "for safety; save a plain numeric array instead") from exc
        raise ValueError(f"{path}: not a readable NumPy file ({exc})") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable NumPy file, truncated or corrupt ({exc})") from exc
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:  # NpzFile
        return _npz_array(path, loaded)


def _npz_array(path: Path, npz) -> np.ndarray:
    """The one array of an open ``.npz``, or the one named ``x``."""
    keys = list(npz.files)
    if "x" in keys:
        key = "x"
    elif len(keys) == 1:
        key = keys[0]
    else:
        raise ValueError(f"{path}: an .npz must hold one array or one named 'x'; "
                         f"found {keys or 'none'}")
    try:
        return npz[key]
    except ValueError as exc:
        raise ValueError(f"{path}: array {key!r} holds pickled Python objects, "
                         "which are not loaded for safety") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: array {key!r} is truncated or corrupt ({exc})") from exc


def _as_examples(path: Path, arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32 examples ``(n, d)`` in [0, 1] (uint8 divided by 255), or the
    ValueError that says what is wrong with it."""
    if arr.dtype == object:
        raise ValueError(f"{path}: array of Python objects is not supported")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: expected shape (n, d) or (n, h, w), got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{path}: the array is empty (shape {arr.shape})")
    n = arr.shape[0]
    if arr.dtype == np.uint8:
        out = arr.reshape(n, -1).astype(np.float32)
        out /= np.float32(255.0)
        return out
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.reshape(n, -1), dtype=np.float32)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: dtype {arr.dtype} not supported; use uint8 (0-255) or "
                         "floats in [0, 1]")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{path}: float values must lie in [0, 1], found [{lo}, {hi}]; "
                         "rescale them (e.g. divide 0-255 pixels by 255)")
    return np.ascontiguousarray(arr.reshape(n, -1), dtype=np.float32)


def binarize(x: np.ndarray, rng: np.random.Generator, out: Optional[np.ndarray] = None,
             scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """Draw a Bernoulli sample with success probabilities ``x``.

    ``out[i] = 1`` with probability ``x[i]``, else 0.  Used once with a fixed
    seed for static binarisation, or per batch for dynamic binarisation.

    Parameters
    ----------
    x:   float array of any shape, values in [0, 1] (0 and 1 give 0 and 1).
    rng: the source of randomness.
    out: where to write the sample (may be ``x`` itself), else a new array.
    scratch: a buffer like ``x`` for the uniform draws (float32 for float32
         ``x``), so that the training loop allocates nothing per batch.

    Returns
    -------
    np.ndarray
        Same shape and dtype as ``x`` (float32 in, float32 out), values in
        {0, 1}.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("binarize needs a numpy.random.Generator, e.g. np.random.default_rng(0)")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"binarize expects floating-point probabilities, got {x.dtype}")
    u_dtype = np.float32 if x.dtype == np.float32 else np.float64
    u = rng.random(None if scratch is not None else x.shape, dtype=u_dtype, out=scratch)
    return np.less(u, x, out=np.empty_like(x) if out is None else out)
