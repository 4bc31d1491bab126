"""Checkpoints: one ``.npz`` file of plain arrays plus a JSON header, no pickle.

Layout of the archive (read it with ``np.load(path, allow_pickle=False)``):

    __header__.json       uint8 bytes of a UTF-8 JSON object (below)
    param/<name>          every model parameter, e.g. ``param/enc.0.W``
    optim/<name>          optimizer state, e.g. ``optim/m.enc.0.W``, ``optim/step``
    train/<name>          training-loop arrays (the epoch's shuffled order)

The header holds ``format`` ("scratchvae-checkpoint"), ``format_version``,
``library_version``, ``model`` (:meth:`VAE.config`), and, for training
checkpoints, ``optimizer`` (:meth:`Optimizer.config`) and ``train`` (loop
state: configuration, position, RNG state, history, and the fingerprint of
the data it trained on). :func:`read` checks the header against
:data:`HEADER` (and ``Run.open`` the loop state against ``run.TRAIN_STATE``)
and names any field that is missing, of the wrong type or unknown; the
parameters must be finite real numbers.

An M2 model is stored as its label-conditional VAE (so ``sv.load``,
``scratchvae sample --label`` and ``evaluate`` work on it) with its
classifier's parameters as ``train/cls.*`` and its configuration as
``train.m2`` in the header.

Files are written atomically (temporary file, fsync, rename), so a crash or
Ctrl-C during a save leaves the previous checkpoint intact; a save refuses
weights that are not finite, so a checkpoint always holds a usable model.
"""
from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from .._version import __version__
from ..model import M2, VAE
from ..atomic import atomic_write

FORMAT = "scratchvae-checkpoint"
FORMAT_VERSION = 1
HEADER_KEY = "__header__.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit: the message says why."""


class NotFiniteError(CheckpointError):
    """A save refused: what it would store holds NaN or inf (the weights diverged)."""


# ----------------------------------------------------------------------
# the header's schema
# ----------------------------------------------------------------------

Rule = Tuple[Callable[[object], bool], str]        # a test of a JSON value, and what it must be


def integer(lo: int) -> Rule:
    return (lambda v: type(v) is int and v >= lo), f"an integer >= {lo}"   # type(): True is not 1 here


def positive_ints(v) -> bool:
    return isinstance(v, list) and all(type(s) is int and s > 0 for s in v)


TEXT: Rule = (lambda v: isinstance(v, str)), "a string"
OBJECT: Rule = (lambda v: isinstance(v, dict)), "a JSON object"
NUMBER: Rule = (lambda v: type(v) in (int, float) and math.isfinite(v)), "a finite number"
SIZES: Rule = positive_ints, "a list of positive integers"
RECORDS: Rule = (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)), "a list of JSON objects"
IMAGE_SHAPE: Rule = (lambda v: v is None or (positive_ints(v) and len(v) == 2)), "null or [height, width]"
SHA256: Rule = (lambda v: isinstance(v, str) and len(v) == 64), "a SHA-256 digest (64 hex digits)"


@dataclass(frozen=True)
class Fields:
    """A JSON object's fields: name -> (a :data:`Rule` or nested ``Fields``, required).
    ``strict``: refuse fields not listed (they would reach a constructor)."""
    fields: Dict[str, Tuple[Union[Rule, "Fields"], bool]]
    strict: bool = False

    def optional(self) -> "Fields":
        return Fields({k: (rule, False) for k, (rule, _) in self.fields.items()}, self.strict)


MODEL = Fields({"input_dim": (integer(1), True), "hidden": (SIZES, True), "latent_dim": (integer(1), True),
                "likelihood": (TEXT, False), "activation": (TEXT, False), "init": (TEXT, False),
                "sigma": (NUMBER, False), "dtype": (TEXT, False), "context_dim": (integer(0), False),
                "prior": (TEXT, False), "pseudo_inputs": (integer(0), False), "flow": (TEXT, False)},
               strict=True)
M2_MODEL = Fields({"input_dim": (integer(1), True), "n_classes": (integer(2), True), "hidden": (SIZES, False),
                   "latent_dim": (integer(1), False), "classifier_hidden": (SIZES, False),
                   "activation": (TEXT, False), "likelihood": (TEXT, False), "init": (TEXT, False),
                   "alpha": (NUMBER, False), "dtype": (TEXT, False)}, strict=True)
#: the header's fields; ``train`` holds the loop state, which ``Run.open`` checks
#: (``run.TRAIN_STATE``), and, for M2, the model's configuration ``m2``
HEADER = Fields({"format": (TEXT, True), "format_version": (integer(1), True), "library_version": (TEXT, True),
                 "model": (MODEL, True), "optimizer": (Fields({"type": (TEXT, True)}), False),
                 "train": (Fields({"m2": (M2_MODEL, False)}), False)})


def check_fields(value, fields: Fields, where: str, source: str) -> None:
    """Raise :class:`CheckpointError` naming the first field of ``value`` (at
    ``where``, e.g. ``train.data``) that breaks ``fields``."""
    name_of = (lambda k: f"{where}.{k}" if where else k)
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: header field {where} must be a JSON object, got {_show(value)}")
    for key, (rule, required) in fields.fields.items():
        if key not in value:
            if required:
                raise CheckpointError(f"{source}: the checkpoint header has no field {name_of(key)}")
        elif isinstance(rule, Fields):
            check_fields(value[key], rule, name_of(key), source)
        elif not rule[0](value[key]):
            raise CheckpointError(f"{source}: header field {name_of(key)} must be {rule[1]}, "
                                  f"got {_show(value[key])}")
    unknown = sorted(set(value) - set(fields.fields)) if fields.strict else []
    if unknown:
        raise CheckpointError(f"{source}: header field {where} has fields this scratchvae does not know: "
                              f"{', '.join(unknown)} (written by a newer scratchvae?)")


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_header(header, source: str) -> None:
    """The header of a scratchvae checkpoint of a format this version reads,
    whose fields are all present and well-formed, or a :class:`CheckpointError`."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a scratchvae checkpoint")
    version = header.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {version} was written by scratchvae "
            f"{header.get('library_version')}, newer than this scratchvae {__version__} "
            f"(format {FORMAT_VERSION}); upgrade scratchvae to read it")
    check_fields(header, HEADER, "", source)


def _estimated_npz_bytes(arrays: Dict[str, np.ndarray]) -> int:
    """An upper bound of the size of ``np.savez(**arrays)``: the data, and per
    array its .npy header and the zip entries that name it twice."""
    return sum(a.nbytes + 2 * len(k) + 320 for k, a in arrays.items()) + 120


def _check_finite(arrays: Dict[str, np.ndarray], path) -> None:
    for key, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise NotFiniteError(f"refusing to write {path}: {key} holds NaN or inf (the weights have "
                                 "diverged); nothing was written")


def save(path, model: Union[VAE, M2], optimizer=None, train_state: Optional[dict] = None,
         train_arrays: Optional[Dict[str, np.ndarray]] = None) -> Path:
    """Write ``model`` (a VAE or M2, and optionally optimizer and loop state) to ``path`` atomically."""
    path = Path(path)
    train_arrays = dict(train_arrays or {})
    if isinstance(model, M2):
        train_state = {**(train_state or {}), "m2": model.config()}
        train_arrays.update(model.cls_params)
        model = model.vae
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
              "model": model.config()}
    arrays = {f"param/{k}": v for k, v in model.params.items()}
    if optimizer is not None:
        header["optimizer"] = optimizer.config()
        arrays.update({f"optim/{k}": v for k, v in optimizer.state_dict().items()})
    if train_state is not None:
        header["train"] = train_state
    arrays.update({f"train/{k}": v for k, v in train_arrays.items()})
    _check_finite(arrays, path)
    try:
        text = json.dumps(header, allow_nan=False)
    except ValueError:
        raise NotFiniteError(f"refusing to write {path}: its header holds NaN or inf") from None
    arrays[HEADER_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_write(path, size=_estimated_npz_bytes(arrays)) as f:
        np.savez(f, **arrays)
    return path


def read(path) -> Tuple[dict, Dict[str, Dict[str, np.ndarray]]]:
    """Read a checkpoint: ``(header, {"param": {...}, "optim": {...}, "train": {...}})``.

    Raises :class:`CheckpointError` for a missing, truncated or corrupt file,
    a file that is not a scratchvae checkpoint, one written by a newer
    format version, or a header that breaks :data:`HEADER`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.ndarray):
            with archive as npz:
                contents = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt); "
                              "use an intact copy or train again") from None
    if isinstance(archive, np.ndarray):
        raise CheckpointError(f"{path}: holds one NumPy array, not a checkpoint (a checkpoint is the "
                              ".npz file a training run writes)")
    if HEADER_KEY not in contents:
        raise CheckpointError(f"{path}: not a scratchvae checkpoint (no {HEADER_KEY})")
    try:
        header = json.loads(contents.pop(HEADER_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({e})") from None
    check_header(header, str(path))
    groups: Dict[str, Dict[str, np.ndarray]] = {"param": {}, "optim": {}, "train": {}}
    for key, value in contents.items():
        group, _, name = key.partition("/")
        if group not in groups:
            raise CheckpointError(f"{path}: unexpected array {key!r} in checkpoint")
        groups[group][name] = value
    return header, groups


def model_from(header: dict, groups: Dict[str, Dict[str, np.ndarray]], source="checkpoint",
               m2: bool = False) -> Union[VAE, M2]:
    """Build the model the header describes and fill in its parameters (names and
    shapes checked): the VAE, or with ``m2`` the whole M2 model of an M2 checkpoint."""
    m2_config = header.get("train", {}).get("m2") if m2 else None
    if m2 and m2_config is None:
        raise CheckpointError(f"{source}: not a semi-supervised (M2) checkpoint")
    try:
        model = M2(**m2_config) if m2 else VAE.from_config(header["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: bad model description in the header ({e})") from None
    load_params(model, groups, source)
    return model


def load_params(model: Union[VAE, M2], groups: Dict[str, Dict[str, np.ndarray]], source="checkpoint") -> None:
    """Copy a checkpoint's parameters into ``model``, refusing any other architecture."""
    if isinstance(model, M2):
        _copy(model.vae.params, groups["param"], model.vae, source)
        cls = {k: v for k, v in groups["train"].items() if k.startswith("cls.")}
        _copy(model.cls_params, cls, model, source)
    else:
        _copy(model.params, groups["param"], model, source)


def _copy(into: Dict[str, np.ndarray], params: Dict[str, np.ndarray], model, source) -> None:
    want = {k: v.shape for k, v in into.items()}
    got = {k: v.shape for k, v in params.items()}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise CheckpointError(
            f"{source}: its parameters do not fit this architecture ({model!r}); differing: "
            + ", ".join(f"{k} {got.get(k)} vs {want.get(k)}" for k in diff[:4]))
    for k, v in params.items():
        check_real(v, f"{source}: parameter {k}")
        into[k][...] = v


def check_real(a: np.ndarray, what: str) -> None:
    """Refuse an array a model cannot compute with: not real floating point, or not finite."""
    if a.dtype.kind != "f":
        raise CheckpointError(f"{what} has dtype {a.dtype}; a checkpoint stores real floating-point numbers")
    if not np.isfinite(a).all():
        raise CheckpointError(f"{what} is not finite (NaN or inf): the weights had diverged when it was saved")


def load(path) -> VAE:
    """The trained model in ``path`` (a checkpoint file or a run directory).

    Needs NumPy only: the returned :class:`VAE` encodes, decodes and samples
    without Numba or Matplotlib. This is how a trained model is shipped.
    """
    header, groups = read(path)
    return model_from(header, groups, str(path))


def load_m2(path) -> M2:
    """The whole M2 model (VAE and classifier) of a semi-supervised checkpoint (NumPy only)."""
    header, groups = read(path)
    return model_from(header, groups, str(path), m2=True)
