"""A training run as one object: configuration, data, contexts, model, optimizer, loop state.

    run = Run(TrainConfig(epochs=5), out_dir="runs/demo")   # a new run (loads its data)
    run = Run.open("runs/demo")                             # a saved one (data loaded when asked for)

``train``, ``evaluate``, ``sample``, ``plot`` and ``complete`` all start from
a :class:`Run`, so the sequence data -> binarisation -> contexts -> model is
written once, here.

A run's directory holds ``checkpoint.npz``, ``history.csv``/``.json`` and
the pictures; a new run refuses a directory that holds another run unless
told to replace it (``overwrite=True``). Its checkpoints record a
fingerprint of the data (shape and SHA-256 of each split), and a run opened
from one refuses data that differ from it, saying what changed.

A run finds its data by fingerprint, not only by path: an array file is
stored by its absolute path, and when it has moved a saved run says so
(:class:`DataMissingError`) and takes the same data from elsewhere
(``Run.open(..., dataset=PATH)``, ``--dataset``; or ``data_dir``, looked in
first for a file of that name) when the stored fingerprint accepts them.

A run directory has one writer at a time: whatever writes into it does so
inside :meth:`Run.writing`, which takes the directory's lock
(:mod:`scratchvae.run.lock`; a second writer is told which process holds it)
and then checks, under the lock, that the directory holds nothing this run
would write over (:meth:`Run.check_destination`): a run that appeared since
a new one was made, a checkpoint newer than the one a resumed run read, or
another run beside the backup copy a run was opened from. Reading a run
(``Run.open``, ``evaluate``, ``sample``, ...) takes no lock and writes nothing.

Randomness: the model's weights come from ``seed``; the training stream
(shuffling, eps, dynamic binarisation, M2's labelled draws) from a generator
seeded by ``seed`` and saved in every checkpoint, so a resumed run continues
bit for bit as if it had never stopped. Evaluation uses its own generator
per epoch and does not touch the training stream.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..atomic import check_writable, make_dirs, remove_empty
from ..data.datasets import Dataset, binarize, load_array_images, load_dataset
from ..inference.complete import MASK_KINDS, Mask, observed_context
from ..model import M2, VAE
from ..model.flows import parse_flow
from ..model.layers import one_hot
from ..model.m2 import split_labels
from ..model.priors import make_prior
from ..model.vae import check_variants
from ..optim import Adam
from . import checkpoint as ckpt
from .lock import RunLock
from .plots import PICTURES

BINARIZE = ("none", "dynamic", "static")
CONDITIONAL = ("none", "label", "mask:KIND")
IW_GRADIENTS = ("iwae", "dreg")
DEFAULT_PSEUDO_INPUTS = 500
CHECKPOINT = "checkpoint.npz"
#: the files that make a directory a run's (besides its pictures)
RUN_FILES = (CHECKPOINT, "history.csv", "history.json")

_FINGERPRINT = ckpt.Fields({"shape": (ckpt.SIZES, True), "sha256": (ckpt.SHA256, True)})
#: a checkpoint's loop state (:meth:`Run.state`); without an optimizer every field is optional
TRAIN_STATE = ckpt.Fields({
    "config": (ckpt.OBJECT, True), "epoch": (ckpt.integer(0), True), "batch": (ckpt.integer(0), True),
    "step": (ckpt.integer(0), True), "rng": (ckpt.OBJECT, True), "sums": (ckpt.OBJECT, True),
    "history": (ckpt.RECORDS, True),
    "data": (ckpt.Fields({"name": (ckpt.TEXT, True), "image_shape": (ckpt.IMAGE_SHAPE, False),
                          "fingerprint": (ckpt.Fields({"train": (_FINGERPRINT, True), "test": (_FINGERPRINT, True)}),
                                          False)}), False)})


class RunExistsError(ValueError):
    """A new run was pointed at a directory that holds another run."""


class DataChangedError(ValueError):
    """A saved run was given data other than those it was trained on."""


class RunChangedError(ValueError):
    """A run's directory was written by someone else since the run was opened or last saved."""


class DataMissingError(FileNotFoundError):
    """A saved run's array file is not where the run looks for it."""


def data_source(name: str) -> str:
    """A data set's name as a run stores it: a named set as given, an array
    file's path made absolute (so the run finds it from any directory)."""
    return _absolute(name) if is_array_file(name) else name


def _absolute(path) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _integer(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _number(v) -> bool:
    """A finite real number (not a bool, which Python counts as an int)."""
    if not isinstance(v, (int, float, np.number)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:                       # an int beyond any float
        return False


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints)."""
    dataset: str = "synthetic-digits"
    data_dir: Optional[str] = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    hidden: List[int] = field(default_factory=lambda: [400])
    latent_dim: int = 20
    activation: str = "relu"
    likelihood: str = "bernoulli"
    sigma: float = 1.0
    init: str = "torch"
    beta: float = 1.0
    warmup_epochs: float = 0.0       # linear KL warm-up: beta grows from 0 over this many epochs
    binarize: str = "none"           # none | dynamic (every batch) | static (once, seeded)
    seed: int = 0
    max_grad_norm: Optional[float] = None
    iw_samples: int = 1              # > 1: train on the importance-weighted bound (IWAE) with k samples
    conditional: str = "none"        # label | mask:KIND: a conditional VAE, see Run.contexts
    semi_supervised: bool = False    # the M2 model: a label-conditional VAE and a classifier
    labels_per_class: int = 100      # M2: labelled examples per class, the rest unlabelled
    alpha: float = 10.0              # M2: weight of the labelled examples' cross-entropy
    labelled_batch: int = 100        # M2: labelled examples drawn (with replacement) per step
    iw_gradient: str = "iwae"        # iwae | dreg: the encoder's gradient of the IWAE bound (dreg: Tucker et al.)
    prior: str = "standard"          # standard (N(0, I)) | vamp (the VampPrior)
    pseudo_inputs: int = DEFAULT_PSEUDO_INPUTS   # vamp: its number of pseudo-inputs (components)
    flow: str = "none"               # none | planar:L: L planar flows on q, amortised

    def __post_init__(self):
        for name in ("dataset", "activation", "likelihood", "init", "binarize", "conditional", "iw_gradient",
                     "prior", "flow"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.semi_supervised, bool):
            raise ValueError(f"semi_supervised must be true or false, got {self.semi_supervised!r}")
        if not (isinstance(self.hidden, (list, tuple)) and all(_integer(h) and h > 0 for h in self.hidden)):
            raise ValueError(f"hidden must be a list of positive integers, got {self.hidden!r}")
        for name in ("epochs", "batch_size", "latent_dim", "labels_per_class", "labelled_batch", "pseudo_inputs"):
            v = getattr(self, name)
            if not (_integer(v) and v > 0):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (_integer(self.seed) and self.seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("lr", "sigma"):
            if not (_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("beta", "warmup_epochs", "alpha"):
            if not (_number(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if self.max_grad_norm is not None and not (_number(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a positive number or None, got {self.max_grad_norm!r}")
        if self.binarize not in BINARIZE:
            raise ValueError(f"binarize must be one of {', '.join(BINARIZE)}, got {self.binarize!r}")
        if self.binarize != "none" and self.likelihood != "bernoulli":
            raise ValueError(f"binarization makes 0/1 data for the bernoulli likelihood; "
                             f"it makes no sense with {self.likelihood}")
        if not (_integer(self.iw_samples) and self.iw_samples >= 1):
            raise ValueError(f"iw_samples must be an integer >= 1, got {self.iw_samples!r}")
        if self.iw_samples > 1 and (self.beta != 1 or self.warmup_epochs):
            raise ValueError("the importance-weighted bound has no KL term to weight: "
                             "use beta 1 and no warm-up with iw_samples > 1")
        if self.conditional.startswith("mask:"):
            Mask.parse(self.conditional[5:])
        elif self.conditional not in CONDITIONAL:
            raise ValueError(f"conditional must be none, label or mask:KIND (KIND: {', '.join(MASK_KINDS)}), "
                             f"got {self.conditional!r}")
        if self.semi_supervised and (self.conditional != "none" or self.iw_samples > 1 or self.beta != 1
                                     or self.warmup_epochs):
            raise ValueError("semi-supervised (M2) training conditions on the label itself and trains its "
                             "own bound: it takes no conditional, iw_samples, beta or warm-up")
        self._check_variants()
        self.hidden = [int(h) for h in self.hidden]
        self.dataset = data_source(self.dataset)
        if self.data_dir is not None:
            self.data_dir = _absolute(self.data_dir)

    def _check_variants(self):
        """The prior, the flow and the IWAE gradient, alone and in combination."""
        if self.iw_gradient not in IW_GRADIENTS:
            raise ValueError(f"iw_gradient must be one of {', '.join(IW_GRADIENTS)}, got {self.iw_gradient!r}")
        make_prior(self.prior, self.pseudo_inputs if self.prior == "vamp" else 0)
        layers = parse_flow(self.flow)
        if self.iw_gradient == "dreg" and self.iw_samples < 2:
            raise ValueError("the DReG gradient is a gradient of the importance-weighted bound: "
                             "give iw_samples K > 1 (--iw-samples K) with iw_gradient dreg")
        if self.prior == "standard" and self.pseudo_inputs != DEFAULT_PSEUDO_INPUTS:
            raise ValueError("pseudo_inputs set the VampPrior's size: use them with prior vamp (--prior vamp)")
        check_variants(self.prior, self.flow, conditional=self.context != "none", dreg=self.iw_gradient == "dreg")
        if self.semi_supervised and (layers or self.iw_gradient != "iwae"):
            raise ValueError("semi-supervised (M2) training takes no flow and no iw_gradient")

    @property
    def context(self) -> str:
        """What the run's VAE is conditioned on: ``none``, ``label`` (also M2) or ``mask:KIND``."""
        return "label" if self.semi_supervised else self.conditional


def stream(seed: int, key: int) -> np.random.Generator:
    """An independent generator for one purpose (1 training, 2 binarisation,
    3 test split of an array file, 4 test masks, 5 the VampPrior's starting
    pseudo-inputs, 100+ evaluation of epoch e)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


class Run:
    """One training run. ``Run(config, data=None, out_dir=None)`` starts a new one
    (``data`` defaults to the data set ``config`` names); :meth:`open` reads a saved one.

    A new run refuses an ``out_dir`` that holds another run
    (:class:`RunExistsError`) unless ``overwrite``: then the old run's files
    are replaced when the new run saves its first checkpoint, and not before.

    Attributes: ``config``, ``model`` (a :class:`VAE`, or :class:`M2` for a
    semi-supervised run; ``vae`` is the VAE either way), ``optimizer``, the
    loop state (``epoch``, ``batch``, ``step``, ``perm``, ``sums``,
    ``history``, ``rng``), ``trained_on`` (the fingerprint of the data a
    saved run was trained on, or None), and, loaded when first used,
    ``data``, ``x_train``/``x_test`` (binarised as the run says), ``c_test``
    and the training contexts.
    """

    def __init__(self, config: Optional[TrainConfig], data: Optional[Dataset] = None, out_dir=None, *,
                 model=None, overwrite: bool = False):
        self.config = config
        self.out_dir = None if out_dir is None else Path(out_dir)
        found = [] if model is not None or self.out_dir is None else run_files(self.out_dir)
        if found and not overwrite:
            raise RunExistsError(
                f"{self.out_dir} already holds a run ({', '.join(found)}); continue it with "
                f"scratchvae train --resume {self.out_dir}, or replace it with --overwrite (Run(..., overwrite=True))")
        self._replaces = bool(found)
        self._overwrite = overwrite
        self._seen = None           # checkpoint.npz as this run last opened or saved it (see check_destination)
        self.source: Optional[Path] = None   # the checkpoint this run continues: the one opened, then the one saved
        self._lock: Optional[RunLock] = None
        self._data = data
        self.trained_on: Optional[dict] = None
        self.model = self._build_model() if model is None else model
        self.optimizer = None if config is None else Adam(self.model.params, lr=config.lr,
                                                          max_grad_norm=config.max_grad_norm)
        self.rng = None if config is None else stream(config.seed, 1)
        self.epoch = 0          # epochs completed
        self.batch = 0          # batches completed in the current epoch
        self.step = 0           # optimizer steps in all
        self.perm: Optional[np.ndarray] = None
        self.sums: dict = {}
        self.history: List[dict] = []
        self._image_shape = None
        self._shape_stored = False  # a saved run's checkpoint says what its images are (None: not images)
        self._pointed = False       # a saved run pointed at its data elsewhere (Run.open(..., dataset=PATH))

    # ------------------------------------------------------------------
    # the data as the run sees it
    # ------------------------------------------------------------------

    @cached_property
    def data(self) -> Dataset:
        """The data set the configuration names (loaded on first use), checked
        against :attr:`trained_on`."""
        if self.config is None:
            raise ValueError("this checkpoint holds a model only, no training configuration: "
                             "its data set is unknown")
        try:
            data = load_data(self.config) if self._data is None else self._data
        except FileNotFoundError:
            if self.source is None or self._pointed or not is_array_file(self.config.dataset):
                raise                   # a new run's data, or a path the user gave: "PATH: no such file"
            where = self.config.dataset + (f", nor in {self.config.data_dir}" if self.config.data_dir else "")
            raise DataMissingError(
                f"the run's data set {where} is not there: point the run at the same data with --dataset PATH "
                f"(Run.open(..., dataset=PATH)) or --data-dir DIR, the folder that holds "
                f"{Path(self.config.dataset).name} now; the run's fingerprint checks that they are the same") from None
        if self.trained_on is not None:
            check_fingerprint(self.trained_on, data, self.out_dir)
        return data

    @cached_property
    def fingerprint(self) -> dict:
        """The data's fingerprint (:meth:`Dataset.fingerprint`), as its checkpoints store it."""
        return self.data.fingerprint()

    @property
    def image_shape(self):
        """(h, w) of the run's images, or None: as its checkpoint stored them
        (known without loading the data, which may be elsewhere), else the data's."""
        if self._shape_stored or self.config is None:
            return self._image_shape
        return self.data.image_shape

    @cached_property
    def _prepared(self):
        return prepare_data(self.config, self.data)

    @property
    def x_train(self) -> np.ndarray:
        return self._prepared[0]

    @property
    def x_test(self) -> np.ndarray:
        return self._prepared[1]

    @cached_property
    def _contexts(self):
        return contexts(self.config, self.data, self.x_test)

    def train_context(self, idx, x, rng) -> Optional[np.ndarray]:
        """The contexts of the training batch ``x = x_train[idx]`` (None for a plain VAE)."""
        make = self._contexts[0]
        return None if make is None else make(idx, x, rng)

    @property
    def c_test(self) -> Optional[np.ndarray]:
        """The contexts of ``x_test`` (None for a plain VAE)."""
        return self._contexts[1]

    @cached_property
    def labels(self):
        """A semi-supervised run's ``(labelled, unlabelled)`` training indices."""
        return split_labels(self.data.y_train, self.config.labels_per_class, self.config.seed)

    def x_train_seen(self, rng: np.random.Generator) -> np.ndarray:
        """The training images as the model trains on them: x_train, binarised once
        with ``rng`` when the run binarises every batch (``dynamic``)."""
        return binarize(self.x_train, rng) if self.config.binarize == "dynamic" else self.x_train

    @property
    def train_indices(self) -> np.ndarray:
        """The examples an epoch passes over: all of x_train, or M2's unlabelled ones."""
        return self.labels[1] if self.config.semi_supervised else np.arange(len(self.x_train))

    # ------------------------------------------------------------------
    # the model
    # ------------------------------------------------------------------

    @property
    def vae(self) -> VAE:
        """The run's VAE (for M2, its label-conditional VAE)."""
        return self.model.vae if isinstance(self.model, M2) else self.model

    def _build_model(self):
        cfg, data = self.config, self.data
        if cfg.semi_supervised:
            if data.y_train is None or data.y_test is None:
                raise ValueError(f"semi-supervised training needs labels to choose from, and {data.name} has none; "
                                 "use a named data set (mnist, fashion-mnist, kmnist, synthetic-digits)")
            return M2(data.n_features, n_classes(data), cfg.hidden, cfg.latent_dim, classifier_hidden=cfg.hidden,
                      activation=cfg.activation, likelihood=cfg.likelihood, init=cfg.init, alpha=cfg.alpha,
                      seed=cfg.seed)
        c_test = self.c_test
        vamp = cfg.prior == "vamp"
        model = VAE(data.n_features, cfg.hidden, cfg.latent_dim, likelihood=cfg.likelihood,
                    activation=cfg.activation, init=cfg.init, seed=cfg.seed, sigma=cfg.sigma,
                    context_dim=0 if c_test is None else c_test.shape[1], prior=cfg.prior,
                    pseudo_inputs=cfg.pseudo_inputs if vamp else 0, flow=cfg.flow)
        if vamp:        # the pseudo-inputs start at K training images chosen with the seed, not at noise
            x = self.x_train
            pick = stream(cfg.seed, 5).choice(len(x), cfg.pseudo_inputs, replace=cfg.pseudo_inputs > len(x))
            model.params["prior.u"][...] = x[pick]
        return model

    # ------------------------------------------------------------------
    # saving and opening
    # ------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def state(self) -> dict:
        """The loop state as stored in a checkpoint's header (JSON)."""
        return {"config": dataclasses.asdict(self.config), "epoch": self.epoch, "batch": self.batch,
                "step": self.step, "rng": self.rng.bit_generator.state, "sums": self.sums,
                "history": self.history, "data": {"name": self.data.name, "image_shape": self.data.image_shape,
                                                  "fingerprint": self.fingerprint}}

    def save(self) -> Path:
        """Write the run's checkpoint (atomically) into its directory; the first
        save of a run that replaces another then removes the old history and pictures."""
        arrays = {} if self.perm is None else {"perm": self.perm}
        path = ckpt.save(self.checkpoint_path, self.model, self.optimizer, self.state(), arrays)
        self.source, self._seen = path, _identity(path)
        if self._replaces:
            for name in RUN_FILES[1:] + PICTURES:
                (self.out_dir / name).unlink(missing_ok=True)
            self._replaces = False
        return path

    @classmethod
    def open(cls, path, data_dir: Optional[str] = None, data: Optional[Dataset] = None,
             dataset: Optional[str] = None) -> "Run":
        """The run saved in ``path`` (a checkpoint file or run directory), as saved.

        ``data_dir`` overrides where its data set is looked for (for an array
        file: the folder looked in first for a file of its name); ``dataset``
        points the run at its data under another name or path (an array file
        that moved), which the stored fingerprint must accept (a run saved
        without one refuses); ``data`` gives the data set itself (one made in
        memory, as tests do). A checkpoint
        holding a model only (no training state) opens with ``config`` None:
        its model samples and decodes, but it knows no data set. A run saved
        without its optimizer (an M2 checkpoint of scratchvae 0.1) opens but
        cannot resume (:attr:`resumable`).
        """
        header, groups = ckpt.read(path)
        path = Path(path)
        out_dir = path if path.is_dir() else path.parent
        state = header.get("train")
        resumable = "optimizer" in header
        if state is not None:
            ckpt.check_fields(state, TRAIN_STATE if resumable else TRAIN_STATE.optional(), "train", str(path))
        model = ckpt.model_from(header, groups, str(path), m2=state is not None and "m2" in state)
        config = None if state is None else config_from(state.get("config", {}), str(path))
        if config is not None and data_dir:
            config = dataclasses.replace(config, data_dir=data_dir)
        if config is not None and dataset is not None and data_source(dataset) != config.dataset:
            if not (state.get("data") or {}).get("fingerprint"):
                raise ValueError(f"{path} was saved without a fingerprint of its data, so {dataset} cannot be "
                                 f"checked to be the data it was trained on ({config.dataset}); put those data "
                                 "back where the run looks for them")
            config = dataclasses.replace(config, dataset=dataset)
        run = cls(config, data, out_dir=out_dir, model=model)
        run._pointed = config is not None and dataset is not None
        run.source = path / CHECKPOINT if path.is_dir() else path
        run._seen = _identity(run.checkpoint_path)
        if state is None:
            return run
        run.history = state.get("history", [])
        stored_data = state.get("data", {})
        run._image_shape = stored_data.get("image_shape")
        run._shape_stored = "image_shape" in stored_data
        if run._image_shape is not None and int(np.prod(run._image_shape)) != run.vae.input_dim:
            raise ckpt.CheckpointError(f"{path}: header field train.data.image_shape {run._image_shape} does "
                                       f"not hold the model's {run.vae.input_dim} inputs")
        run.trained_on = stored_data.get("fingerprint")
        if not resumable:
            run.optimizer = None
            return run
        made = json.loads(json.dumps(run.optimizer.config()))        # as the header stores it
        differ = sorted(k for k in set(made) | set(header["optimizer"]) if made.get(k) != header["optimizer"].get(k))
        if differ:
            raise ckpt.CheckpointError(
                f"{path}: the optimizer in the header is not the one its training configuration makes ("
                + ", ".join(f"{k} {header['optimizer'].get(k)!r} vs {made.get(k)!r}" for k in differ) + ")")
        try:
            run.optimizer.load_state_dict(groups["optim"])
        except ValueError as e:
            raise ckpt.CheckpointError(f"{path}: {e}") from None
        try:
            run.rng.bit_generator.state = state["rng"]
        except (TypeError, ValueError, KeyError) as e:
            raise ckpt.CheckpointError(f"{path}: header field train.rng is not a state of NumPy's "
                                       f"{type(run.rng.bit_generator).__name__} generator ({e!r})") from None
        run.epoch, run.batch, run.step = state["epoch"], state["batch"], state["step"]
        run.sums = state["sums"]
        run.perm = groups["train"].get("perm")
        return run

    @property
    def resumable(self) -> bool:
        """Does this run hold what training needs to continue (optimizer and loop state)?"""
        return self.optimizer is not None

    # ------------------------------------------------------------------
    # one writer at a time
    # ------------------------------------------------------------------

    def check_destination(self) -> None:
        """Refuse to write this run into :attr:`out_dir` where that would write over work it does not own.

        - A run opened from a checkpoint that is not its folder's own
          ``checkpoint.npz`` (a backup copy, ``runs/A/epoch1.npz``) would
          continue in ``runs/A/checkpoint.npz`` and its history: refused
          (:class:`RunExistsError`) when that folder holds a run.
        - A new run: refused when the directory holds a run (unless
          ``overwrite``), as when it was made; it may have gained one since.
        - A run opened or saved before: refused (:class:`RunChangedError`)
          when its checkpoint is no longer the file this run read or wrote
          last (another process trained it meanwhile); checked without the
          lock, a process that holds it still is named instead
          (:class:`~scratchvae.run.lock.RunInUseError`).
        """
        if self.out_dir is None:                # a run that writes nowhere
            return
        found = run_files(self.out_dir)
        source = self.source
        if source is not None and source.name != CHECKPOINT and found:
            new = self.out_dir.parent / f"{self.out_dir.name}-from-{source.stem}"
            raise RunExistsError(
                f"{source} is not the checkpoint of the run in {self.out_dir} ({', '.join(found)}), and continuing "
                f"it would write over that run; continue the copy in a directory of its own (mkdir {new} && "
                f"cp {source} {new / CHECKPOINT} && scratchvae train --resume {new}), or continue the run "
                f"itself with --resume {self.out_dir}")
        if self._seen is None:
            if found and not self._overwrite:
                raise RunExistsError(
                    f"{self.out_dir} already holds a run ({', '.join(found)}); continue it with scratchvae train "
                    f"--resume {self.out_dir}, or replace it with --overwrite (Run(..., overwrite=True))")
            if self._overwrite:
                self._replaces = bool(found)
        elif _identity(self.checkpoint_path) != self._seen:
            if self._lock is None:      # checked early, unlocked: a process that holds the run is the news
                try:
                    with RunLock(self.out_dir):         # (RunInUseError, naming it)
                        pass
                except OSError:                         # no looking (a read-only folder): the change is
                    pass
            raise RunChangedError(
                f"{self.checkpoint_path} has changed since this run was opened (another process trained or "
                f"replaced it meanwhile), and continuing from the older state would write over that work; "
                f"start again from the run as it is now: scratchvae train --resume {self.out_dir}")

    @contextlib.contextmanager
    def writing(self):
        """Hold this run's directory for writing: make it if need be, check that
        it can be written, take its lock (:class:`~scratchvae.run.lock.RunLock`;
        :class:`~scratchvae.run.lock.RunInUseError` if another process or
        object holds it) and :meth:`check_destination` under the lock. The lock
        is released however the block ends; directories made here are removed
        again if it fails before anything was written into them. Re-entrant
        for the same run object (the command holds it through training and the
        pictures; the trainer takes it too)."""
        if self._lock is not None:
            yield
            return
        made = make_dirs(self.out_dir)
        try:
            check_writable(self.out_dir)
            with RunLock(self.out_dir) as self._lock:
                try:
                    self.check_destination()
                    yield
                finally:
                    self._lock = None
        except BaseException:
            remove_empty(made)
            raise


def config_from(stored: dict, source: str) -> TrainConfig:
    """A :class:`TrainConfig` from a checkpoint's stored configuration (fields
    it lacks take their defaults; fields this version does not know are refused)."""
    unknown = sorted(set(stored) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ckpt.CheckpointError(f"{source}: the training configuration in the header has fields this "
                                   f"scratchvae does not know: {', '.join(unknown)} (written by a newer scratchvae?)")
    try:
        return TrainConfig(**stored)
    except (TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{source}: bad training configuration in the header ({e})") from None


def _identity(path: Path):
    """Which file ``path`` is now (None: none): every save replaces the file, so a new save is a new one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def run_files(directory) -> List[str]:
    """Which of :data:`RUN_FILES` ``directory`` holds (none: it holds no run)."""
    return [name for name in RUN_FILES if (Path(directory) / name).exists()]


def check_fingerprint(trained_on: dict, data: Dataset, where) -> None:
    """Raise :class:`DataChangedError`, saying what changed, unless ``data``
    has the fingerprint ``trained_on`` (a :meth:`Dataset.fingerprint`)."""
    now = data.fingerprint()
    changes = []
    for split, label in (("train", "training"), ("test", "test")):
        then, new = trained_on[split], now[split]
        if then["shape"] != new["shape"]:
            changes.append(f"the {label} set has shape {tuple(new['shape'])} now, "
                           f"{tuple(then['shape'])} when the run was trained")
        elif then["sha256"] != new["sha256"]:
            changes.append(f"the {label} set has the shape it had, {tuple(new['shape'])}, but other values "
                           f"(SHA-256 {new['sha256'][:12]}... now, {then['sha256'][:12]}... then)")
    if changes:
        raise DataChangedError(f"{where}: {data.name} is not the data this run was trained on: "
                               + "; ".join(changes) + "; restore those data, or train a new run on these")


def n_classes(data: Dataset) -> int:
    """How many classes a labelled data set has: one more than its largest label."""
    return int(max(data.y_train.max(), data.y_test.max(), 1)) + 1


def prepare_data(config: TrainConfig, data: Dataset):
    """``(x_train, x_test)`` as the run sees them, binarised as ``config.binarize`` says.

    Whenever binarisation is on, the test set is binarised once (seeded), so
    every epoch and every later evaluation scores the same data; ``static``
    binarises the training set once too, ``dynamic`` leaves it to the loop.
    """
    if config.binarize == "none":
        return data.x_train, data.x_test
    rng = stream(config.seed, 2)
    x_test = binarize(data.x_test, rng)
    x_train = binarize(data.x_train, rng) if config.binarize == "static" else data.x_train
    return x_train, x_test


def contexts(config: TrainConfig, data: Dataset, x_test: np.ndarray):
    """What a conditional run feeds its model besides x: ``(train_context, c_test)``.

    ``train_context(idx, x, rng)`` gives the contexts of the training batch
    ``x = x_train[idx]``; ``c_test`` those of ``x_test``. Both are None for a
    plain run.

    - ``label`` (and M2): the one-hot label, (n, classes).
    - ``mask:KIND``: the observed part of the image and the mask,
      ``[x * (1 - m), m]`` (n, 2d), for completion; training draws a fresh mask
      per example and batch, the test set gets fixed (seeded) masks.
    """
    kind = config.context
    if kind == "none":
        return None, None
    if kind == "label":
        if data.y_train is None or data.y_test is None:
            raise ValueError(f"--conditional label needs labels, and {data.name} has none; "
                             "use a named data set (mnist, fashion-mnist, kmnist, synthetic-digits)")
        classes = n_classes(data)
        c_train = one_hot(data.y_train, classes)
        return (lambda idx, x, rng: c_train[idx]), one_hot(data.y_test, classes)
    if data.image_shape is None or len(data.image_shape) != 2:
        raise ValueError(f"--conditional {kind} needs images; {data.name} has none")
    mask = Mask.parse(kind[5:])
    test_missing = mask.sample(stream(config.seed, 4), len(x_test), data.image_shape)
    return ((lambda idx, x, rng: observed_context(x, mask.sample(rng, len(x), data.image_shape))),
            observed_context(x_test, test_missing))


def is_array_file(name: str) -> bool:
    """Does a data set's name name a ``.npy``/``.npz`` file (not a named set)?"""
    return name.endswith((".npy", ".npz"))


def array_file(config: TrainConfig) -> str:
    """Where the run's array file is read from: a file of its name in
    ``config.data_dir`` when there is one, else its own path."""
    if config.data_dir:
        there = os.path.join(config.data_dir, os.path.basename(config.dataset))
        if os.path.isfile(there):
            return there
    return config.dataset


def load_data(config: TrainConfig) -> Dataset:
    """The data set ``config.dataset`` names: a named set, or a ``.npy``/``.npz`` file.

    A plain array file has no test split: a seeded 10% of it (at most
    10,000 rows) is held out for evaluation. Its images keep the (h, w) of
    an ``(n, h, w)`` array; an ``(n, d)`` array's are square, or none.
    ``config.data_dir`` is looked in first for a file of its name.
    """
    if is_array_file(config.dataset):
        path = array_file(config)
        x, shape = load_array_images(path)
        if len(x) < 2:
            raise ValueError(f"{path}: need at least 2 examples to hold out a test split")
        order = stream(config.seed, 3).permutation(len(x))
        n_test = max(1, min(10_000, len(x) // 10))
        return Dataset(Path(path).name, x[order[n_test:]], None, x[order[:n_test]], None, shape)
    return load_dataset(config.dataset, config.data_dir, seed=config.seed)
