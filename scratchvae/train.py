"""The training loop: shuffled minibatches, KL warm-up, per-epoch evaluation,
history, checkpoints after every epoch, resume, and clean interruption.

    from scratchvae.train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(epochs=5), dataset, "runs/demo")
    trainer.fit()

Randomness: the model's weights come from ``seed``; the training stream
(shuffling, eps, dynamic binarisation) from a generator seeded by ``seed``
and saved in every checkpoint, so a resumed run continues bit for bit as if
it had never stopped. Evaluation uses its own generator per epoch and does
not touch the training stream.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from . import checkpoint as ckpt
from .atomic import atomic_write
from .complete import MASK_KINDS, Mask, observed_context
from .data.datasets import Dataset, binarize, load_array_file, load_dataset, one_hot
from .evaluate import elbo
from .optim import Adam
from .progress import Progress
from .vae import VAE

BINARIZE = ("none", "dynamic", "static")
CONDITIONAL = ("none", "label", "mask:KIND")
HISTORY_FIELDS = ("epoch", "step", "beta", "train_total", "train_nll", "train_kl",
                  "test_total", "test_nll", "test_kl", "seconds", "examples_per_s")


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
    conditional: str = "none"        # label | mask:KIND: a conditional VAE, see contexts()

    def __post_init__(self):
        for name in ("epochs", "batch_size", "latent_dim"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v > 0):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "sigma"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("beta", "warmup_epochs"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")
        if self.binarize not in BINARIZE:
            raise ValueError(f"binarize must be one of {', '.join(BINARIZE)}, got {self.binarize!r}")
        if self.binarize != "none" and self.likelihood != "bernoulli":
            raise ValueError(f"binarization makes 0/1 data for the bernoulli likelihood; "
                             f"it makes no sense with {self.likelihood}")
        if not (isinstance(self.iw_samples, (int, np.integer)) and self.iw_samples >= 1):
            raise ValueError(f"iw_samples must be an integer >= 1, got {self.iw_samples!r}")
        if self.iw_samples > 1 and (self.beta != 1 or self.warmup_epochs):
            raise ValueError("the importance-weighted bound has no KL term to weight: "
                             "use beta 1 and no warm-up with iw_samples > 1")
        if self.conditional.startswith("mask:"):
            Mask.parse(self.conditional[5:])
        elif self.conditional not in CONDITIONAL:
            raise ValueError(f"conditional must be none, label or mask:KIND (KIND: {', '.join(MASK_KINDS)}), "
                             f"got {self.conditional!r}")
        self.hidden = [int(h) for h in self.hidden]

    def model(self, input_dim: int, context_dim: int = 0) -> VAE:
        return VAE(input_dim, self.hidden, self.latent_dim, likelihood=self.likelihood,
                   activation=self.activation, init=self.init, seed=self.seed, sigma=self.sigma,
                   context_dim=context_dim)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


def _stream(seed: int, key: int) -> np.random.Generator:
    """An independent generator for one purpose (1 training, 2 binarisation, 100+ evaluation)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


class Trainer:
    """Runs :class:`TrainConfig` on a :class:`Dataset`, writing into ``out_dir``.

    ``out_dir`` receives ``checkpoint.npz`` (after every epoch, and on Ctrl-C),
    ``history.csv`` and ``history.json``. ``on_batch(trainer)`` is called
    after every optimizer step (tests use it; so can a user's logger).
    """

    def __init__(self, config: TrainConfig, data: Dataset, out_dir, *, quiet: bool = False,
                 stream=None, on_batch: Optional[Callable[["Trainer"], None]] = None):
        self.config, self.data = config, data
        self.out_dir = Path(out_dir)
        self.quiet, self.on_batch = quiet, on_batch
        self.stream = sys.stderr if stream is None else stream
        self.x_train, self.x_test = prepare_data(config, data)
        self.train_context, self.c_test = contexts(config, data, self.x_test)
        self.model = config.model(data.n_features, 0 if self.c_test is None else self.c_test.shape[1])
        self.optimizer = Adam(self.model.params, lr=config.lr, max_grad_norm=config.max_grad_norm)
        self.rng = _stream(config.seed, 1)
        self.epoch = 0          # epochs completed
        self.batch = 0          # batches completed in the current epoch
        self.step = 0           # optimizer steps in all
        self.perm: Optional[np.ndarray] = None
        self.sums = {"total": 0.0, "nll": 0.0, "kl": 0.0, "n": 0, "seconds": 0.0}
        self.history: List[dict] = []
        self._stop = False
        self._buffers = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.npz"

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.x_train) // self.config.batch_size)

    def beta_at(self, step: int) -> float:
        """KL weight of optimizer step ``step`` (0-based): linear warm-up, then ``beta``."""
        warm = self.config.warmup_epochs * self.batches_per_epoch
        return self.config.beta * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)

    # ------------------------------------------------------------------

    def fit(self) -> str:
        """Train up to ``config.epochs``. Returns ``"done"`` or ``"interrupted"``.

        Ctrl-C finishes the current step, saves a checkpoint and returns
        ``"interrupted"`` (a second Ctrl-C aborts at once). A non-finite loss
        raises :class:`TrainingDiverged` and saves nothing.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            while self.epoch < self.config.epochs:
                if not self._train_epoch():
                    self.save()
                    return "interrupted"
                self._end_epoch()
            return "done"
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum, frame):
        self._stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C aborts

    def _train_epoch(self) -> bool:
        cfg, model, n = self.config, self.model, len(self.x_train)
        if self.perm is None:
            self.perm = self.rng.permutation(n)
        progress = Progress(self.batches_per_epoch, f"epoch {self.epoch + 1}/{cfg.epochs}",
                            self.stream, self.quiet)
        t0 = time.perf_counter()
        while self.batch < self.batches_per_epoch:
            idx = self.perm[self.batch * cfg.batch_size:(self.batch + 1) * cfg.batch_size]
            x, scratch = self._batch_buffers(len(idx))
            np.take(self.x_train, idx, axis=0, out=x)
            if cfg.binarize == "dynamic":
                binarize(x, self.rng, out=x, scratch=scratch)
            c = None if self.train_context is None else self.train_context(idx, x, self.rng)
            beta = self.beta_at(self.step)
            try:
                if cfg.iw_samples > 1:
                    losses, grads = model.iw_loss_and_grads(x, cfg.iw_samples, rng=self.rng, c=c)
                else:
                    losses, grads = model.loss_and_grads(x, rng=self.rng, beta=beta, c=c)
            except FloatingPointError as e:
                progress.close()
                raise self._diverged(f"batch {self.batch + 1}", e) from None
            self.optimizer.step(grads)
            self.batch += 1
            self.step += 1
            for k in ("total", "nll", "kl"):
                self.sums[k] += losses[k] * len(idx)
            self.sums["n"] += len(idx)
            progress.update(self.batch, f"loss {losses['total']:.2f}")
            if self.on_batch is not None:
                self.on_batch(self)
            if self._stop:
                self.sums["seconds"] += time.perf_counter() - t0
                progress.close()
                return False
        self.sums["seconds"] += time.perf_counter() - t0
        progress.close()
        return True

    def _diverged(self, where: str, e: FloatingPointError) -> TrainingDiverged:
        last = (f"the last good checkpoint (epoch {self.epoch}) is {self.checkpoint_path}"
                if self.checkpoint_path.exists() else "no checkpoint was written")
        return TrainingDiverged(f"training diverged at epoch {self.epoch + 1}, {where}: {e}; {last}")

    def _batch_buffers(self, n):
        """(x, scratch) buffers for a batch of n rows, made once per batch size."""
        if n not in self._buffers:
            self._buffers[n] = (np.empty((n, self.x_train.shape[1]), self.x_train.dtype),
                                np.empty((n, self.x_train.shape[1]), self.x_train.dtype))
        return self._buffers[n]

    def _end_epoch(self):
        s = self.sums
        try:
            test = elbo(self.model, self.x_test, _stream(self.config.seed, 100 + self.epoch), c=self.c_test)
        except FloatingPointError as e:     # the epoch's last steps blew the weights up
            raise self._diverged("evaluating the test set", e) from None
        self.epoch += 1
        row = {"epoch": self.epoch, "step": self.step, "beta": self.beta_at(self.step - 1),
               "train_total": s["total"] / s["n"], "train_nll": s["nll"] / s["n"],
               "train_kl": s["kl"] / s["n"], "test_total": test["total"], "test_nll": test["nll"],
               "test_kl": test["kl"], "seconds": s["seconds"], "examples_per_s": s["n"] / s["seconds"]}
        self.history.append(row)
        self.batch, self.perm = 0, None
        self.sums = {"total": 0.0, "nll": 0.0, "kl": 0.0, "n": 0, "seconds": 0.0}
        self.save()
        self.write_history()
        if not self.quiet:
            print(f"epoch {row['epoch']:>3}/{self.config.epochs}  "
                  f"train {row['train_total']:8.2f} (nll {row['train_nll']:.2f}, kl {row['train_kl']:.2f})  "
                  f"test {row['test_total']:8.2f} (nll {row['test_nll']:.2f}, kl {row['test_kl']:.2f})  "
                  f"{row['examples_per_s']:,.0f} ex/s", file=self.stream, flush=True)

    # ------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------

    def save(self) -> Path:
        state = {"config": dataclasses.asdict(self.config), "epoch": self.epoch, "batch": self.batch,
                 "step": self.step, "rng": self.rng.bit_generator.state, "sums": self.sums,
                 "history": self.history,
                 "data": {"name": self.data.name, "image_shape": self.data.image_shape}}
        arrays = {} if self.perm is None else {"perm": self.perm}
        return ckpt.save(self.checkpoint_path, self.model, self.optimizer, state, arrays)

    def write_history(self) -> None:
        with atomic_write(self.out_dir / "history.json") as f:
            f.write(json.dumps(self.history, indent=1).encode())
        with atomic_write(self.out_dir / "history.csv") as f:
            rows = [",".join(HISTORY_FIELDS)] + [",".join(f"{r[k]:.6g}" for k in HISTORY_FIELDS)
                                                 for r in self.history]
            f.write(("\n".join(rows) + "\n").encode())

    @classmethod
    def resume(cls, path, data: Dataset, *, epochs: Optional[int] = None, **kwargs) -> "Trainer":
        """Continue the run saved in ``path`` (a checkpoint or run directory).

        ``epochs`` may raise the number of epochs to train in all. The data
        set must be the one the run was trained on (same feature count).
        """
        header, groups = ckpt.read(path)
        if "train" not in header or "optimizer" not in header:
            raise ckpt.CheckpointError(f"{path}: holds a model only, not a training run to resume")
        state = header["train"]
        config = TrainConfig(**state["config"])
        if epochs is not None:
            config.epochs = epochs
        out_dir = Path(path) if Path(path).is_dir() else Path(path).parent
        trainer = cls(config, data, out_dir, **kwargs)
        ckpt.load_params(trainer.model, groups["param"], str(path))
        trainer.optimizer.load_state_dict(groups["optim"])
        trainer.rng.bit_generator.state = state["rng"]
        trainer.epoch, trainer.batch, trainer.step = state["epoch"], state["batch"], state["step"]
        trainer.sums, trainer.history = state["sums"], state["history"]
        trainer.perm = groups["train"].get("perm")
        return trainer


def read_config_from(path) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint was trained with."""
    header, _ = ckpt.read(path)
    if "train" not in header:
        raise ckpt.CheckpointError(f"{path}: holds a model only, not a training run")
    return TrainConfig(**header["train"]["config"])


def default_run_dir(dataset: str) -> Path:
    """``runs/<dataset>-<YYYYmmdd-HHMMSS>`` (with a suffix if that exists)."""
    base = Path("runs") / f"{Path(dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path


def prepare_data(config: TrainConfig, data: Dataset):
    """``(x_train, x_test)`` as the run sees them, binarised as ``config.binarize`` says.

    Whenever binarisation is on, the test set is binarised once (seeded), so
    every epoch and every later evaluation scores the same data; ``static``
    binarises the training set once too, ``dynamic`` leaves it to the loop.
    """
    if config.binarize == "none":
        return data.x_train, data.x_test
    rng = _stream(config.seed, 2)
    x_test = binarize(data.x_test, rng)
    x_train = binarize(data.x_train, rng) if config.binarize == "static" else data.x_train
    return x_train, x_test


def contexts(config: TrainConfig, data: Dataset, x_test: np.ndarray):
    """What a conditional run feeds its model besides x: ``(train_context, c_test)``.

    ``train_context(idx, x, rng)`` gives the contexts of the training batch
    ``x = x_train[idx]``; ``c_test`` those of ``x_test``. Both are None for a
    plain run.

    - ``label``: the one-hot label, (n, classes).
    - ``mask:KIND``: the observed part of the image and the mask,
      ``[x * (1 - m), m]`` (n, 2d), for completion; training draws a fresh mask
      per example and batch, the test set gets fixed (seeded) masks.
    """
    if config.conditional == "none":
        return None, None
    if config.conditional == "label":
        if data.y_train is None or data.y_test is None:
            raise ValueError(f"--conditional label needs labels, and {data.name} has none; "
                             "use a named data set (mnist, fashion-mnist, kmnist, synthetic-digits)")
        n_classes = int(max(data.y_train.max(), data.y_test.max(), 1)) + 1
        c_train = one_hot(data.y_train, n_classes)
        return (lambda idx, x, rng: c_train[idx]), one_hot(data.y_test, n_classes)
    if data.image_shape is None or len(data.image_shape) != 2:
        raise ValueError(f"--conditional {config.conditional} needs images; {data.name} has none")
    mask = Mask.parse(config.conditional[5:])
    test_missing = mask.sample(_stream(config.seed, 4), len(x_test), data.image_shape)
    return ((lambda idx, x, rng: observed_context(x, mask.sample(rng, len(x), data.image_shape))),
            observed_context(x_test, test_missing))


def load_data(config: TrainConfig) -> Dataset:
    """The data set ``config.dataset`` names: a named set, or a ``.npy``/``.npz`` file.

    A plain array file has no test split: a seeded 10% of it (at most
    10,000 rows) is held out for evaluation.
    """
    if config.dataset.endswith((".npy", ".npz")):
        x = load_array_file(config.dataset)
        if len(x) < 2:
            raise ValueError(f"{config.dataset}: need at least 2 examples to hold out a test split")
        order = _stream(config.seed, 3).permutation(len(x))
        n_test = max(1, min(10_000, len(x) // 10))
        side = int(round(np.sqrt(x.shape[1])))
        shape = (side, side) if side * side == x.shape[1] else None
        return Dataset(Path(config.dataset).name, x[order[n_test:]], None, x[order[:n_test]], None, shape)
    return load_dataset(config.dataset, config.data_dir, seed=config.seed)
