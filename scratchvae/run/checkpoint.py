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

A checkpoint is untrusted input: checked by name, shape and size before it
is read. :func:`read` looks at the zip directory first and refuses an array
whose name is not one of the layout's (``param/*``, ``optim/*``,
``train/perm``, ``train/cls.*``) without reading it; then, from each
member's ``.npy`` header alone (never its data), it refuses a member that
declares more bytes than the zip directory gives it, a dtype that is not a
plain number, a parameter or optimizer array whose shape is not the model's
(the model the header describes, built under the memory guard), an
order longer than the training set, and arrays whose total does not fit in
the memory available. Only then are the arrays read.
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
from ..model.memory import NotEnoughMemoryError
from ..atomic import atomic_write
from ..sizes import available_memory, format_bytes

FORMAT = "scratchvae-checkpoint"
FORMAT_VERSION = 1
HEADER_KEY = "__header__.json"
#: the arrays a checkpoint may hold besides its header: group -> a test of the name within it
GROUPS = {"param": lambda name: bool(name), "optim": lambda name: bool(name),
          "train": lambda name: name == "perm" or (name.startswith("cls.") and len(name) > 4)}
#: the most bytes a header may declare (a long run's history is a few MB)
HEADER_LIMIT = 256 * 2 ** 20


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


class Groups(dict):
    """:func:`read`'s arrays by group; ``model`` is the model the header
    describes, built to check the shapes, which :func:`model_from` takes
    (once) rather than building it again."""
    model: Union[VAE, M2, None] = None


def read(path) -> Tuple[dict, Dict[str, Dict[str, np.ndarray]]]:
    """Read a checkpoint: ``(header, {"param": {...}, "optim": {...}, "train": {...}})``.

    Raises :class:`CheckpointError` for a missing, truncated or corrupt file,
    a file that is not a scratchvae checkpoint, one written by a newer
    format version, or a header that breaks :data:`HEADER`; and, before any
    array is read, for an array of a name, dtype, shape or size the model
    does not have (:class:`NotEnoughMemoryError` where they do not fit in
    memory).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    corrupt = CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt); "
                              "use an intact copy or train again")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(np.lib.format.MAGIC_PREFIX))
        if magic == np.lib.format.MAGIC_PREFIX:
            raise CheckpointError(f"{path}: holds one NumPy array, not a checkpoint (a checkpoint is the "
                                  ".npz file a training run writes)")
        if not magic.startswith(b"PK"):         # every zip, so every .npz, begins so; a truncated one too
            raise CheckpointError(f"{path}: not a readable checkpoint: it does not start as an .npz file does "
                                  f"({magic!r}), so it is another kind of file or a corrupt copy; a checkpoint "
                                  "is the .npz file a training run writes")
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, path)
            header = _read_header(archive, members.pop(HEADER_KEY), path)
            check_header(header, str(path))
            declared = {key: _declared(archive, info, key, path) for key, info in members.items()}
            model = _expected(header, declared, path)
            groups = Groups(param={}, optim={}, train={})
            for key, info in members.items():
                group, _, name = key.partition("/")
                with archive.open(info) as f:
                    groups[group][name] = np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, ValueError, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise corrupt from None
    groups.model = model
    return header, groups


def _members(archive: zipfile.ZipFile, path: Path) -> Dict[str, zipfile.ZipInfo]:
    """The archive's members by array name, all of the layout's names (checked
    before anything is read), the header among them."""
    members: Dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        group, _, name = key.partition("/")
        if key != HEADER_KEY and not (group in GROUPS and GROUPS[group](name)):
            if HEADER_KEY in archive.NameToInfo or HEADER_KEY + ".npy" in archive.NameToInfo:
                raise CheckpointError(
                    f"{path}: unexpected array {key!r} in checkpoint (a checkpoint holds its header and "
                    "param/, optim/ and train/ arrays only); it was not read: use the checkpoint "
                    "training wrote, or save the model again with scratchvae")
            raise CheckpointError(f"{path}: not a scratchvae checkpoint (no {HEADER_KEY})")
        if key in members or info.is_dir():
            raise CheckpointError(f"{path}: the checkpoint holds {key!r} twice; use an intact copy or train again")
        members[key] = info
    if HEADER_KEY not in members:
        raise CheckpointError(f"{path}: not a scratchvae checkpoint (no {HEADER_KEY})")
    return members


def _declared(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, path: Path) -> Tuple[tuple, np.dtype]:
    """The shape and dtype a member's .npy header declares (its data unread),
    checked against the bytes the zip directory gives the member."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"npy format {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields is not None:
        raise CheckpointError(f"{path}: array {key} has dtype {dtype}; a checkpoint stores plain numbers")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > info.file_size - offset:
        raise CheckpointError(f"{path}: array {key} declares {format_bytes(nbytes)} (shape {shape}) but the "
                              f"file holds only {format_bytes(max(0, info.file_size - offset))} for it: it is "
                              "corrupt; use an intact copy or train again")
    return shape, dtype


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> dict:
    if info.file_size > HEADER_LIMIT:
        raise CheckpointError(f"{path}: its header declares {format_bytes(info.file_size)}, more than a "
                              f"checkpoint header holds ({format_bytes(HEADER_LIMIT)} at most); it was not read")
    shape, dtype = _declared(archive, info, HEADER_KEY, path)
    if dtype != np.uint8 or len(shape) != 1:
        raise CheckpointError(f"{path}: corrupt checkpoint header (an array {dtype} {shape}, not bytes)")
    with archive.open(info) as f:
        raw = np.lib.format.read_array(f, allow_pickle=False)
    try:
        return json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({e})") from None


def _build(header: dict, m2: bool, source) -> Union[VAE, M2]:
    """The model ``header`` describes (its weights drawn, to be replaced)."""
    m2_config = header.get("train", {}).get("m2") if m2 else None
    if m2 and m2_config is None:
        raise CheckpointError(f"{source}: not a semi-supervised (M2) checkpoint")
    try:
        return M2(**m2_config) if m2 else VAE.from_config(header["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: bad model description in the header ({e})") from None


def _dig(value, *keys):
    """``value[k1][k2]...``, or None where a level is missing or not a JSON object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _expected(header: dict, declared: Dict[str, Tuple[tuple, np.dtype]], path: Path) -> Union[VAE, M2]:
    """Check the declared arrays against the model the header describes (which
    is built, under the memory guard, and returned) and the memory available."""
    train = header.get("train")
    model = _build(header, isinstance(train, dict) and "m2" in train, path)
    vae, cls = (model.vae, model.cls_params) if isinstance(model, M2) else (model, {})
    params = {k: v.shape for k, v in vae.params.items()}
    optimized = {**params, **{k: v.shape for k, v in cls.items()}}     # one optimizer steps M2's two nets
    n_train = _dig(train, "data", "fingerprint", "train", "shape")
    n_train = n_train[0] if isinstance(n_train, list) and n_train and type(n_train[0]) is int else None
    for key, (shape, dtype) in declared.items():
        group, _, name = key.partition("/")
        of = name.partition(".")[2]
        if group == "param":
            want, what = params.get(name), "the model's"
        elif group == "optim" and name == "step":
            if shape != () or dtype.kind not in "iu":
                raise CheckpointError(f"{path}: optimizer state step must be one integer >= 0, got {dtype} "
                                      f"{shape}; it was not read: use an intact copy or train again")
            continue
        elif group == "optim":
            want, what = optimized.get(of), "the model's"
        elif name == "perm":
            if len(shape) != 1 or dtype.kind not in "iu" or (n_train is not None and shape[0] > n_train):
                bound = "" if n_train is None else f", more than the {n_train:,} of its training set"
                raise CheckpointError(f"{path}: train/perm is not an order of the training examples (shape "
                                      f"{shape}, dtype {dtype}{bound}); it was not read: use an intact copy or "
                                      "train again")
            continue
        else:
            want, what = (cls[name].shape if name in cls else None), "the model's"
        if want is None:
            raise CheckpointError(f"{path}: array {key} (shape {shape}) is not one of {what} arrays "
                                  f"({model!r}); it was not read: use the checkpoint training wrote")
        if tuple(shape) != tuple(want):
            raise CheckpointError(f"{path}: its parameters do not fit this architecture ({model!r}): {key} has "
                                  f"shape {shape}, {what} is {tuple(want)}; it was not read: use an intact copy "
                                  "or train again")
    total = sum(math.prod(shape) * dtype.itemsize for shape, dtype in declared.values())
    available = available_memory()
    if available is not None and total > available:
        raise NotEnoughMemoryError(f"{path}: its arrays need {format_bytes(total)} of memory, only "
                                   f"{format_bytes(available)} is available; free some memory or read it on a "
                                   "machine with more")
    return model


def model_from(header: dict, groups: Dict[str, Dict[str, np.ndarray]], source="checkpoint",
               m2: bool = False) -> Union[VAE, M2]:
    """Build the model the header describes and fill in its parameters (names and
    shapes checked): the VAE, or with ``m2`` the whole M2 model of an M2 checkpoint."""
    built, model = getattr(groups, "model", None), None
    if built is not None and isinstance(built, M2) == m2:
        groups.model, model = None, built                  # read() built it: take it, once
    model = model or _build(header, m2, source)
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
