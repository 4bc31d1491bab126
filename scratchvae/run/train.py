"""The training loop, one for every objective: shuffled minibatches, KL warm-up,
per-epoch evaluation, history, checkpoints after every epoch, resume, and
clean interruption.

    from scratchvae.run import Run, TrainConfig, Trainer
    Trainer(Run(TrainConfig(epochs=5), out_dir="runs/demo")).fit()

What differs between the ELBO, the importance-weighted bound, a conditional
VAE and M2 is an :class:`Objective`: the loss and gradient of one batch, the
loss parts summed over an epoch, and the test metrics. Everything else
(order, checkpoints, Ctrl-C, resume bit for bit) is the loop's.

Two rules of the loop (issue 21):

- A run directory has one writer at a time. :meth:`Trainer.fit` holds the
  run's directory through :meth:`Run.writing <scratchvae.run.run.Run.writing>`
  (its lock, :mod:`scratchvae.run.lock`, and the check under that lock that
  nothing there is newer than what this run read or wrote), and releases it
  however it ends. Anything else that writes into a run directory takes the
  same lock.
- Every signal a scheduler sends ends training the way Ctrl-C does: SIGINT,
  SIGTERM and SIGHUP (:data:`STOP_SIGNALS`) finish the step, save a
  checkpoint and return ``"interrupted"``; a second one raises
  KeyboardInterrupt. A new signal that should stop training goes into
  :data:`STOP_SIGNALS`, not into a handler of its own.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..atomic import remove_stale_temporaries, write_bytes
from ..data.datasets import binarize
from ..distributed.comm import Communicator, OneProcess
from ..distributed.data_parallel import DataParallelStep, Draws, rows_of
from ..inference.evaluate import elbo
from ..kernels import active_module, thread_tuner
from ..model import M2, memory
from ..model.m2 import accuracy
from .checkpoint import CheckpointError, NotFiniteError
from .progress import Progress
from .run import Run, stream


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or inf; the last good checkpoint is left as it was."""


#: the signals that stop training the way Ctrl-C does: Ctrl-C itself, and what ``timeout``, ``docker stop``,
#: systemd, batch schedulers (SIGTERM) and a closed terminal (SIGHUP) send
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def handling(signals, handler):
    """Handle ``signals`` with ``handler`` inside the block, restoring the previous handlers after it
    (in the main thread only: elsewhere Python cannot set handlers, and nothing changes)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            if h is not None:               # None: a handler not set from Python, which cannot be restored
                signal.signal(s, h)


def signals_interrupt():
    """Every signal of :data:`STOP_SIGNALS` raises KeyboardInterrupt inside the block, as Ctrl-C does, so
    that a command's ``finally`` clauses run (its lock released, its empty directories removed)."""
    return handling(STOP_SIGNALS, signal.default_int_handler)


# --------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------

class Objective:
    """The ELBO (with KL weight beta), on a plain or conditional VAE."""

    parts = ("total", "nll", "kl")                  # loss parts summed over an epoch
    test_fields = ("test_total", "test_nll", "test_kl")
    samples = 1                                     # draws of z per example

    def losses_and_grads(self, run: Run, x, idx, rng, beta):
        """Loss parts (per-example means, nats) and gradients of the batch ``x = x_train[idx]``."""
        return self.batch(run, x, run.train_context(idx, x, rng), beta, rng=rng)

    def batch(self, run: Run, x, c, beta, rng=None, eps=None):
        """The same for rows ``x`` with contexts ``c`` (None for a plain VAE), the noise drawn
        from ``rng`` or given as ``eps`` (samples, rows, latent)."""
        return run.model.loss_and_grads(x, rng=rng, eps=eps, beta=beta, c=c, checked=True)

    def share(self, run: Run, idx, rank: int, size: int, beta, draws: Draws) -> dict:
        """Rank ``rank`` of ``size``'s share of a data-parallel step on the batch ``x_train[idx]``:
        the losses of its rows and (in the model's gradient) their gradient, each weighted by
        rows / batch, so that the ranks' shares add up to the batch's means; the random numbers
        come from ``draws``, the whole batch's in one process's order."""
        b, rows = len(idx), rows_of(len(idx), rank, size)
        n = rows.stop - rows.start
        x, c = draws.images_and_contexts(idx, rows)
        eps = draws.noise((self.samples, b, run.vae.latent_dim))[:, rows]
        if n == 0:                                  # a last batch smaller than the ranks
            run.model.grads.buffer.fill(0.0)
            return dict.fromkeys(self.parts, 0.0)
        losses, grads = self.batch(run, x, c, beta, eps=eps)
        np.multiply(grads.buffer, n / b, out=grads.buffer)
        return {p: losses[p] * n / b for p in self.parts}

    def test(self, run: Run, comm: Optional[Communicator] = None) -> dict:
        """The test metrics after ``run.epoch`` epochs (its own generator per epoch), the test
        set's batches shared among ``comm``'s ranks."""
        r = elbo(run.vae, run.x_test, stream(run.config.seed, 100 + run.epoch), c=run.c_test, comm=comm)
        return {"test_total": r["total"], "test_nll": r["nll"], "test_kl": r["kl"]}

    def summary(self, row: dict) -> str:
        return (f"train {row['train_total']:8.2f} (nll {row['train_nll']:.2f}, kl {row['train_kl']:.2f})  "
                f"test {row['test_total']:8.2f} (nll {row['test_nll']:.2f}, kl {row['test_kl']:.2f})")


class ImportanceWeighted(Objective):
    """The importance-weighted bound with ``k`` samples (IWAE), the encoder's gradient
    the bound's own or DReG's (``dreg``); the test loss stays the ELBO."""

    def __init__(self, k: int, dreg: bool = False):
        self.k, self.dreg = k, dreg
        self.samples = k

    def batch(self, run, x, c, beta, rng=None, eps=None):
        return run.model.iw_loss_and_grads(x, self.k, rng=rng, eps=eps, c=c, dreg=self.dreg, checked=True)


class SemiSupervised(Objective):
    """M2: each step pairs the unlabelled batch with labelled examples drawn with replacement."""

    parts = ("total", "labelled", "unlabelled", "ce")
    test_fields = ("test_accuracy",)

    def losses_and_grads(self, run, x, idx, rng, beta):
        labelled = run.labels[0]
        pick = labelled[rng.integers(0, len(labelled), run.config.labelled_batch)]
        x_l = run.x_train[pick]
        if run.config.binarize == "dynamic":           # as the loop binarised the unlabelled batch
            binarize(x_l, rng, out=x_l)
        return run.model.loss_and_grads(x_l, run.data.y_train[pick], x, rng=rng, checked=True)

    def share(self, run, idx, rank, size, beta, draws):
        """Both batches split among the ranks: its rows of the unlabelled batch and of the
        labelled examples drawn for the step, the noise of each of its rows (labelled rows
        first, then every class's copy of the unlabelled ones, as one process draws them)."""
        m2, n_labelled = run.model, run.config.labelled_batch
        b, rows, mine = len(idx), rows_of(len(idx), rank, size), rows_of(n_labelled, rank, size)
        x_u = draws.images(idx, rows)
        labelled = run.labels[0]
        pick = labelled[run.rng.integers(0, len(labelled), n_labelled)]
        x_l = draws.images(pick, mine)
        eps = draws.noise((n_labelled + m2.n_classes * b, run.vae.latent_dim))
        if not len(x_l) + len(x_u):
            for buffer in m2.grad_buffers:
                buffer.fill(0.0)
            return dict.fromkeys(self.parts, 0.0)
        own = np.concatenate([np.arange(mine.start, mine.stop)] + [
            n_labelled + k * b + np.arange(rows.start, rows.stop) for k in range(m2.n_classes)])
        losses, _ = m2.loss_and_grads(x_l, run.data.y_train[pick[mine]], x_u, eps=eps[own], checked=True,
                                      totals=(n_labelled, b))
        return losses

    def test(self, run, comm=None):
        return {"test_accuracy": accuracy(run.model.predict, run.x_test, run.data.y_test)}

    def summary(self, row):
        return (f"train {row['train_total']:8.2f} (labelled {row['train_labelled']:.2f}, unlabelled "
                f"{row['train_unlabelled']:.2f}, cross-entropy {row['train_ce']:.3f})  "
                f"test accuracy {row['test_accuracy']:.4f}")


def objective_of(run: Run) -> Objective:
    if run.config.semi_supervised:
        return SemiSupervised()
    if run.config.iw_samples > 1:
        return ImportanceWeighted(run.config.iw_samples, dreg=run.config.iw_gradient == "dreg")
    return Objective()


def history_fields(objective: Objective) -> tuple:
    """The columns of a run's history (``history.csv``), in order."""
    beta = ("beta",) if not isinstance(objective, SemiSupervised) else ()
    return (("epoch", "step") + beta + tuple(f"train_{p}" for p in objective.parts) + objective.test_fields
            + ("seconds", "examples_per_s"))


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------

class Trainer:
    """Trains ``run`` up to ``run.config.epochs``, writing into ``run.out_dir``.

    ``run.out_dir`` receives ``checkpoint.npz`` (after every epoch, and on
    Ctrl-C), ``history.csv`` and ``history.json``; the progress bar and one
    line per epoch are printed to ``file`` (stderr), unless ``quiet``.
    ``on_batch(trainer)`` is called after every optimizer step (tests use it;
    so can a user's logger). ``comm``: the ranks that train the run together
    (:mod:`scratchvae.distributed`, e.g. ``world()`` under ``mpiexec``), each
    calling ``fit`` with its own ``Run`` of the same configuration; each step
    splits the batch's rows among them, and rank 0 alone writes and prints.

    Before anything is trained it checks what a saved run resumes from (its
    epoch's order and position, its loss sums) and that a step fits in
    memory (:class:`~scratchvae.model.memory.NotEnoughMemoryError`).
    """

    def __init__(self, run: Run, *, quiet: bool = False, file=None,
                 on_batch: Optional[Callable[["Trainer"], None]] = None, comm: Optional[Communicator] = None):
        if not run.resumable:
            raise ValueError(f"{run.out_dir}: this run was saved without its optimizer state, "
                             "so it cannot continue; train a new one")
        run.check_destination()         # again under the lock, in fit
        self.run, self.quiet, self.on_batch = run, quiet, on_batch
        self.file = sys.stderr if file is None else file
        self.objective = objective_of(run)
        self.fields = history_fields(self.objective)
        #: the ranks this run is trained by (scratchvae.distributed); rank 0 alone writes and prints
        self.comm = OneProcess() if comm is None else comm
        self.writes = self.comm.rank == 0
        self.quiet = quiet or not self.writes
        #: one rank's share of a step when several train the run, else None
        self.data_parallel = DataParallelStep(self.comm, run, self.objective) if self.comm.size > 1 else None
        if not run.sums:
            run.sums = self._zero_sums()
        self._check_position()
        self._require_memory()
        self._stop = False
        self._ranks_stop = False
        self.stopped_by: Optional[int] = None       # the signal that stopped the last fit, if one did
        self._buffers = {}
        #: sizes the kernels' thread pool step by step (kernels/threads.py), or None where it may not
        self.tuner = None

    def _check_position(self):
        """Refuse loop state that does not fit this run's data (a damaged or foreign checkpoint)."""
        run, where = self.run, self.run.checkpoint_path
        if set(run.sums) != set(self._zero_sums()) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in run.sums.values()):
            raise CheckpointError(f"{where}: header field train.sums must hold the numbers "
                                  f"{', '.join(sorted(self._zero_sums()))}, got {sorted(run.sums)}")
        n = len(run.train_indices)
        if run.perm is not None and not is_permutation(run.perm, n):
            raise CheckpointError(f"{where}: train/perm is not an order of the {n:,} training examples "
                                  f"(shape {run.perm.shape}, dtype {run.perm.dtype})")
        if run.batch > self.batches_per_epoch or (run.batch and run.perm is None):
            raise CheckpointError(f"{where}: header field train.batch {run.batch} is not a position in an "
                                  f"epoch of {self.batches_per_epoch} batches")

    def _require_memory(self):
        """Refuse, before the first step, a step that would not fit in memory: its
        workspace and the run's untouched buffers (a new run's gradients and
        Adam moments are zeros the system has not handed out yet; a resumed
        run's moments were filled when it was opened)."""
        run, cfg = self.run, self.run.config
        rows = min(cfg.batch_size, len(run.train_indices))
        if isinstance(run.model, M2):                   # the labelled rows and every class's copy of a batch
            rows = cfg.labelled_batch + run.model.n_classes * rows
        untouched = sum(v.nbytes for v in run.model.params.values()) * (1 if run.step else 3)
        memory.require(untouched + memory.step_bytes(run.vae, rows, cfg.iw_samples),
                       f"training {run.model!r} on batches of {rows:,} rows x {cfg.iw_samples:,} samples")

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.run.train_indices) // self.run.config.batch_size)

    def beta_at(self, step: int) -> float:
        """KL weight of optimizer step ``step`` (0-based): linear warm-up, then ``beta``."""
        warm = self.run.config.warmup_epochs * self.batches_per_epoch
        return self.run.config.beta * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)

    def _zero_sums(self):
        return {**{p: 0.0 for p in self.objective.parts}, "n": 0, "seconds": 0.0}

    # ------------------------------------------------------------------

    def fit(self) -> str:
        """Train up to ``config.epochs``. Returns ``"done"`` or ``"interrupted"``.

        Ctrl-C, SIGTERM and SIGHUP (:data:`STOP_SIGNALS`) finish the current
        step, save a checkpoint and return ``"interrupted"``, the signal in
        :attr:`stopped_by`; a second signal aborts at once (KeyboardInterrupt).
        A non-finite loss, or weights that are not finite when a checkpoint is
        due, raise :class:`TrainingDiverged` and save nothing.

        The run directory is held for the whole call (:meth:`Run.writing`:
        made if need be, checked to be writable, locked, checked again to hold
        nothing this run would write over; released however the call ends),
        and cleared of temporaries that killed processes left; directories
        this call made are removed again if it fails before writing into them.
        """
        out_dir = self.run.out_dir
        self._stop, self._ranks_stop, self.stopped_by = False, False, None
        writing = self.run.writing() if self.writes else contextlib.nullcontext()
        with writing, handling(STOP_SIGNALS, self._on_signal), self._tuning():
            if self.writes:
                remove_stale_temporaries(out_dir)
            while self.run.epoch < self.run.config.epochs:
                if not self.train_epoch():
                    self._save("at the interruption", self.run.epoch + 1)
                    return "interrupted"
                self._end_epoch()
            return "done"

    @contextlib.contextmanager
    def _tuning(self):
        """:attr:`tuner` for the length of a fit; the pool gets all its threads back after it.
        Ranks of a data-parallel run keep the threads they were given: each waits for the slowest."""
        self.tuner = thread_tuner() if self.data_parallel is None else None
        try:
            yield
        finally:
            if self.tuner is not None:
                self.tuner.set_threads(self.tuner.max_threads)

    def _save(self, where: str, epoch: int) -> None:
        """The run's checkpoint, or :class:`TrainingDiverged` (in ``epoch``) if its weights are not finite.
        (Rank 0's alone: every rank holds the same weights.)"""
        if not self.writes:
            return
        try:
            self.run.save()
        except NotFiniteError as e:
            raise self._diverged(where, e, epoch) from None

    def _on_signal(self, signum, frame):
        self._stop = True
        self.stopped_by = signum
        for s in STOP_SIGNALS:                                      # a second signal aborts
            signal.signal(s, signal.default_int_handler)

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when Ctrl-C stopped it first.
        (:meth:`fit` calls it, then evaluates and saves.)"""
        run = self.run
        cfg, indices = run.config, run.train_indices
        if run.perm is None:
            run.perm = run.rng.permutation(len(indices))
        progress = Progress(self.batches_per_epoch, f"epoch {run.epoch + 1}/{cfg.epochs}", self.file, self.quiet)
        if run.step == 0 and hasattr(active_module(), "warmup"):    # a compiled backend: say why step 1 waits
            progress.update(0, "first step: loading the compiled kernels (compiling them on a fresh install)")
        t0 = time.perf_counter()
        while run.batch < self.batches_per_epoch:
            pos = run.perm[run.batch * cfg.batch_size:(run.batch + 1) * cfg.batch_size]
            idx = indices[pos]
            with self._timed_step(len(idx)):
                try:
                    losses = self._step(idx, self.beta_at(run.step))
                except FloatingPointError as e:
                    progress.close()
                    diverged = self._diverged(f"batch {run.batch + 1}", e)
                    diverged.every_rank = self.data_parallel is not None      # the ranks' losses are summed
                    raise diverged from None
            run.batch += 1
            run.step += 1
            for k in self.objective.parts:
                run.sums[k] += losses[k] * len(idx)
            run.sums["n"] += len(idx)
            progress.update(run.batch, f"loss {losses['total']:.2f}")
            if self.on_batch is not None:
                self.on_batch(self)
            if self._stopping:
                run.sums["seconds"] += time.perf_counter() - t0
                progress.close()
                return False
        run.sums["seconds"] += time.perf_counter() - t0
        progress.close()
        return True

    def _step(self, idx, beta) -> dict:
        """One optimizer step on the batch ``x_train[idx]``; returns its losses. Several ranks
        split it (:class:`DataParallelStep`)."""
        run = self.run
        if self.data_parallel is not None:
            losses, self._ranks_stop = self.data_parallel(idx, beta, self._stop)
            return losses
        x, scratch = self._batch_buffers(len(idx))
        np.take(run.x_train, idx, axis=0, out=x)
        if run.config.binarize == "dynamic":
            binarize(x, run.rng, out=x, scratch=scratch)
        losses, grads = self.objective.losses_and_grads(run, x, idx, run.rng, beta)
        run.optimizer.step(grads)
        return losses

    @property
    def _stopping(self) -> bool:
        """Stop after this step? When this process was signalled; with several ranks, all stop after
        the first step whose sum carried a signal one of them received (one that arrives during
        the sum is carried by the next), so that none waits for another that stopped."""
        return self._stop if self.data_parallel is None else self._ranks_stop

    def _timed_step(self, examples):
        return contextlib.nullcontext() if self.tuner is None else self.tuner.step(examples)

    def _diverged(self, where: str, e: Exception, epoch: Optional[int] = None) -> TrainingDiverged:
        """The error for a blow-up in ``epoch`` (1-based; default: the one in progress)."""
        epoch = self.run.epoch + 1 if epoch is None else epoch
        path = self.run.checkpoint_path
        last = (f"the last good checkpoint (epoch {epoch - 1}) is {path}"
                if path.exists() else "no checkpoint was written")
        return TrainingDiverged(f"training diverged at epoch {epoch}, {where}: {e}; {last}")

    def _batch_buffers(self, n):
        """(x, scratch) buffers for a batch of n rows, made once per batch size."""
        if n not in self._buffers:
            shape, dtype = (n, self.run.x_train.shape[1]), self.run.x_train.dtype
            self._buffers[n] = (np.empty(shape, dtype), np.empty(shape, dtype))
        return self._buffers[n]

    def _end_epoch(self):
        run, s = self.run, self.run.sums
        try:
            test = self.objective.test(run, self.comm)
        except FloatingPointError as e:     # the epoch's last steps blew the weights up
            raise self._diverged("evaluating the test set", e) from None
        run.epoch += 1
        row = {"epoch": run.epoch, "step": run.step}
        if "beta" in self.fields:
            row["beta"] = self.beta_at(run.step - 1)
        row.update({f"train_{p}": s[p] / s["n"] for p in self.objective.parts})
        row.update(test)
        row.update(seconds=s["seconds"], examples_per_s=s["n"] / s["seconds"])
        run.history.append(row)
        run.batch, run.perm = 0, None
        run.sums = self._zero_sums()
        self._save("at the end of the epoch", run.epoch)
        if self.writes:
            self.write_history()
        if not self.quiet:
            print(f"epoch {row['epoch']:>3}/{run.config.epochs}  {self.objective.summary(row)}  "
                  f"{row['examples_per_s']:,.0f} ex/s", file=self.file, flush=True)

    def write_history(self) -> None:
        out_dir = self.run.out_dir
        write_bytes(out_dir / "history.json", json.dumps(self.run.history, indent=1, allow_nan=False).encode())
        rows = [",".join(self.fields)] + [",".join(f"{r[k]:.6g}" for k in self.fields) for r in self.run.history]
        write_bytes(out_dir / "history.csv", ("\n".join(rows) + "\n").encode())


def is_permutation(perm: np.ndarray, n: int) -> bool:
    """Is ``perm`` an order of ``range(n)``: 1-D integers, each index once?"""
    return (perm.ndim == 1 and perm.dtype.kind in "iu" and len(perm) == n
            and (n == 0 or (perm.min() >= 0 and perm.max() < n and bool((np.bincount(perm, minlength=n) == 1).all()))))


def default_run_dir(dataset: str, when: Optional[float] = None) -> Path:
    """``runs/<dataset>-<YYYYmmdd-HHMMSS>`` of now (or of ``when``, seconds since the epoch),
    with a suffix if that exists."""
    base = Path("runs") / f"{Path(dataset).stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = Path(f"{base}-{i}")
    return path
