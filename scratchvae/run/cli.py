"""The ``scratchvae`` command: train, evaluate, sample, plot, complete, interpolate, export, download,
datasets.

Every command is a function ``cmd_NAME(args)`` with its options declared
beside it by ``add_NAME_arguments(parser)``; :data:`COMMANDS` lists them, and
:func:`build_parser` assembles the parser from that list.

Every error a user can cause ends with one line ``scratchvae: error: ...``
on stderr and a non-zero exit code (set ``SCRATCHVAE_DEBUG=1`` for the
traceback).  A standard output that cannot be written is named as such: one
closed by its reader (``scratchvae datasets | head -1``) ends the command
quietly with 141, as SIGPIPE ends other tools; a full one (``> /dev/full``) is
an error about standard output, never about a disk the command writes to.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import io
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np

from .._version import __version__
from ..atomic import atomic_write, make_dirs
from .run import TrainConfig

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130
#: the commands that share their work among the ranks of ``mpiexec -n N scratchvae ...``
RANKED_COMMANDS = ("train", "evaluate")
#: standard output closed by its reader: 128 + SIGPIPE, as the shell reports for ``yes | head -1``
EXIT_BROKEN_PIPE = 141

# train options that define the run: every field of TrainConfig but how long it trains and where its
# data lie; on --resume they must agree with the checkpoint
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("epochs", "data_dir"))
# those whose command-line flag is not "--" + the name with dashes
FLAGS = {"latent_dim": "--latent", "warmup_epochs": "--warmup"}


# ----------------------------------------------------------------------
# argument types: each parses one option's text or raises argparse's one-line error
# ----------------------------------------------------------------------

def _hidden(text: str):
    """argparse type: comma-separated positive layer widths, e.g. ``512,256``."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 400 or 512,256; got {text!r}")
    if not sizes:
        raise argparse.ArgumentTypeError(f"give at least one width, e.g. 400; got {text!r}")
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be positive, got {text!r}")
    return sizes


#: integers the command line takes stay below this (they are stored as 64-bit integers)
MAX_INT = 2 ** 63


def _number_parser(kind, strict=True):
    """argparse type: a finite ``kind`` (int or float) > 0, or >= 0 when not
    ``strict``; integers below :data:`MAX_INT`."""
    noun = "an integer" if kind is int else "a finite number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}")
        if not ((kind is int or np.isfinite(value)) and (value > 0 if strict else value >= 0)):
            raise argparse.ArgumentTypeError(f"must be {noun} {'>' if strict else '>='} 0, got {text!r}")
        if kind is int and value >= MAX_INT:
            raise argparse.ArgumentTypeError(f"must be an integer below 2**63, got {text!r}")
        return value
    return parse


_positive_int, _positive_float = _number_parser(int), _number_parser(float)
# seeds, labels, indices, burn-in: integers >= 0
_nonneg_int, _nonneg_float = _number_parser(int, strict=False), _number_parser(float, strict=False)


def _parsed(parse):
    """argparse type from a parser of the library that raises ValueError: the value as
    given if it parses (the run stores the text), else argparse's one-line error."""
    def check(text):
        try:
            parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))
        return text
    return check


#: the environment variables the library reads, as every ``--help`` ends
ENVIRONMENT = (
    "environment: SCRATCHVAE_BACKEND picks the kernels (numpy, numba, numba_pool, reference or a module "
    "path; default numba when Numba imports, else numpy); SCRATCHVAE_GEMM picks the matrix products "
    "(blas, numba, reference). SCRATCHVAE_GEMM=numba with the numba kernels runs a whole step in one "
    "thread pool, which training sizes step by step: faster than the default on 2 cores, quiet and under "
    "load (README, Speed), but not the default, since its first step on a fresh install compiles several "
    "times longer. Threads: Numba's and OpenBLAS's defaults (the machine's CPUs), or NUMBA_NUM_THREADS and "
    "OPENBLAS_NUM_THREADS. "
    "SCRATCHVAE_GEMM_ISA (avx512, avx2, sse) forces the hand-written GEMM's vector width; SCRATCHVAE_DATA "
    "is a folder searched for data sets; SCRATCHVAE_MPI=1 asks for MPI in a single process; "
    "SCRATCHVAE_DEBUG=1 prints a full traceback on an error.")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="scratchvae",
        description="A Variational Autoencoder from scratch: NumPy, hand-written backprop, "
                    "every gradient checked against finite differences.", epilog=ENVIRONMENT)
    parser.add_argument("--version", action="version", version=f"scratchvae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.description, epilog=ENVIRONMENT)
        if command.add_arguments is not None:
            command.add_arguments(sub)
    return parser


# ----------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------

def add_train_arguments(parser) -> None:
    """Every run option, its default from :class:`TrainConfig` in brackets, and where the run goes."""
    from ..data.datasets import DATASET_NAMES
    from ..kernels import ACTIVATIONS
    from ..model.flows import parse_flow
    from ..model.layers import INITS
    from ..model.likelihoods import LIKELIHOODS
    from ..model.priors import PRIORS
    from .run import BINARIZE, CONDITIONAL, IW_GRADIENTS

    d = TrainConfig()
    parser.add_argument("--dataset", help=f"a named data set ({', '.join(DATASET_NAMES)}) or a .npy/.npz "
                                          f"file of shape (n, d) or (n, h, w) in [0, 1] or uint8 [{d.dataset}]")
    parser.add_argument("--data-dir", help="folder holding the data set's IDX files, searched before "
                                           "$SCRATCHVAE_DATA, ~/.cache/scratchvae, /usr/share/datasets; for "
                                           "a .npy/.npz file: a folder to look in first for a file of its name")
    parser.add_argument("--epochs", type=_positive_int, help=f"epochs to train in all [{d.epochs}]")
    parser.add_argument("--batch-size", type=_positive_int, help=f"examples per step [{d.batch_size}]")
    parser.add_argument("--lr", type=_positive_float, help=f"Adam learning rate [{d.lr}]")
    parser.add_argument("--hidden", type=_hidden, help="encoder hidden widths, comma-separated; the "
                                                       "decoder mirrors them [400]")
    parser.add_argument("--latent", dest="latent_dim", type=_positive_int, help=f"latent size k [{d.latent_dim}]")
    parser.add_argument("--activation", choices=ACTIVATIONS, help=f"hidden activation [{d.activation}]")
    parser.add_argument("--likelihood", choices=LIKELIHOODS, help=f"p(x|z) [{d.likelihood}]")
    parser.add_argument("--sigma", type=_positive_float, help="Gaussian sigma: fixed value, or the start of a "
                                                               f"learned one [{d.sigma}]")
    parser.add_argument("--init", choices=INITS, help=f"weight initialiser [{d.init}]")
    parser.add_argument("--beta", type=_nonneg_float, help=f"weight of the KL term [{d.beta}]")
    parser.add_argument("--warmup", dest="warmup_epochs", type=_nonneg_float,
                        help="epochs over which the KL weight grows linearly from 0 to beta [0]")
    parser.add_argument("--binarize", choices=BINARIZE, help="for bernoulli: none (grey levels), dynamic "
                                                              "(resampled every batch), static (once) [none]")
    parser.add_argument("--seed", type=_nonneg_int, help=f"seed of weights, shuffling and noise [{d.seed}]")
    parser.add_argument("--max-grad-norm", type=_positive_float, help="clip the global gradient norm [off]")
    parser.add_argument("--iw-samples", type=_positive_int, metavar="K",
                        help="train on the importance-weighted bound with K samples (IWAE; needs beta 1, "
                             "no warm-up, a likelihood without learned sigma); the train loss shown is "
                             "then -L_K, the test loss stays the ELBO [1: the ELBO]")
    parser.add_argument("--iw-gradient", choices=IW_GRADIENTS,
                        help="with --iw-samples K > 1, the encoder's gradient: iwae (the bound's own) or dreg, the "
                             "doubly reparameterised gradient of Tucker et al. (2019): the same expectation without "
                             "the score-function term, whose noise grows with K; the decoder's gradient is the same "
                             f"(not with --flow) [{d.iw_gradient}]")
    parser.add_argument("--prior", choices=PRIORS,
                        help="p(z): standard, N(0, I); or vamp, the VampPrior of Tomczak and Welling (2018), the "
                             "mixture of the encoder's posteriors at --pseudo-inputs learned pseudo-inputs (started "
                             "at training images); the KL is then estimated from the drawn z (not with --conditional, "
                             f"--semi-supervised or --flow) [{d.prior}]")
    parser.add_argument("--pseudo-inputs", type=_positive_int, metavar="K",
                        help="with --prior vamp: the number of pseudo-inputs, the prior's components "
                             f"[{d.pseudo_inputs}]")
    parser.add_argument("--flow", type=_parsed(parse_flow), metavar="none|planar:L",
                        help="L planar normalising flows on q(z|x) (Rezende and Mohamed 2015), their parameters "
                             "output by the encoder for every x; the KL is then estimated from the drawn z "
                             f"[{d.flow}]")
    parser.add_argument("--conditional", metavar="|".join(CONDITIONAL),
                        help="a conditional VAE, q(z|x, c) and p(x|z, c). label: c is the one-hot label (the "
                             "data set needs labels; sample with --label). mask:KIND: c is the observed part "
                             "of the image and the mask, for completion (scratchvae complete); KIND is "
                             "bottom-half, block or random:P [none]")
    parser.add_argument("--semi-supervised", action="store_true", default=None,
                        help="train the M2 model of Kingma et al. (2014) instead: a label-conditional VAE and "
                             "a classifier q(y|x), from --labels-per-class labels per class (chosen with "
                             "--seed) and the rest of the training set unlabelled; an epoch is one pass over "
                             "the unlabelled examples; prints the test accuracy of q(y|x) after every epoch")
    parser.add_argument("--labels-per-class", type=_positive_int,
                        help=f"with --semi-supervised: labelled examples per class [{d.labels_per_class}]")
    parser.add_argument("--alpha", type=_nonneg_float,
                        help=f"with --semi-supervised: weight of the labelled examples' cross-entropy [{d.alpha:g}]")
    parser.add_argument("--labelled-batch", type=_positive_int, metavar="N",
                        help="with --semi-supervised: labelled examples drawn (with replacement) to go with each "
                             f"batch of unlabelled ones [{d.labelled_batch}]")
    parser.add_argument("--out", help="run directory [runs/<dataset>-<date>-<time>]; a directory that holds a run "
                                      "is refused (continue it with --resume, or replace it with --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run that --out holds: its checkpoint, history and pictures are replaced "
                             "when the new run saves its first checkpoint (until then the old run stays intact)")
    parser.add_argument("--resume", metavar="CKPT", help="continue the run in this checkpoint or run directory "
                                                         "(--epochs may extend it); a copy of a checkpoint beside "
                                                         "another run is refused: resume it in a directory of its "
                                                         "own")
    parser.add_argument("--no-plots", action="store_true", help="skip the pictures at the end")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the run directory")


def cmd_train(args) -> int:
    """Train; SIGTERM and SIGHUP end it the way Ctrl-C does, wherever they come (see :meth:`Trainer.fit`).
    Under ``mpiexec -n N`` every rank runs this, and N ranks train the run data-parallel."""
    from ..distributed import world
    from .train import signals_interrupt
    with signals_interrupt():
        return _train(args, world())


def _train(args, comm) -> int:
    import signal

    from ..distributed.comm import threads_per_rank

    run, trainer, ranks = (*_start_run(args, comm), None) if comm.size == 1 else _start_ranks(args, comm)
    cfg, data = run.config, run.data
    if not args.quiet:
        what = (f"{cfg.labels_per_class} labels per class, the other {len(run.labels[1]):,} training examples "
                "unlabelled, " if cfg.semi_supervised else "")
        split = "" if ranks is None else f", {_count(comm.size, 'rank')} x {_count(threads_per_rank(comm), 'thread')}"
        print(f"training {run.model!r} on {data.name} ({len(data.x_train):,} train / {len(data.x_test):,} test), "
              f"{what}{cfg.epochs} epochs, batch {cfg.batch_size}, kernels: {_kernels()}{split}", file=sys.stderr)
        if ranks is not None:
            print(f"data-parallel: global batch {cfg.batch_size} split into rows of ~{cfg.batch_size / comm.size:.0f}; "
                  "ranks (host:pid): " + ", ".join(f"{r} {where}" for r, where in enumerate(ranks)), file=sys.stderr)
    # one writer: rank 0 locks the run directory through training and pictures
    with run.writing() if trainer.writes else contextlib.nullcontext():
        if trainer.fit() == "interrupted":
            signum = trainer.stopped_by or signal.SIGINT
            by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
            print(f"interrupted{by}: checkpoint saved; continue with "
                  f"scratchvae train --resume {run.out_dir}", file=sys.stderr)
            return 128 + signum         # 130 for Ctrl-C (EXIT_INTERRUPTED), 143 for SIGTERM, as shells report
        if trainer.tuner is not None and not args.quiet:
            print(f"threads: {trainer.tuner.describe()}", file=sys.stderr)
        if trainer.data_parallel is not None and not args.quiet:
            print(f"ranks: {comm.size}, {trainer.data_parallel.allreduce_seconds:.2f} s of rank 0's time in the "
                  "gradient's allreduce", file=sys.stderr)
        if not args.no_plots and trainer.writes:
            _pictures(run, run.out_dir, args.quiet)
    if cfg.semi_supervised:
        print(f"test accuracy of q(y|x): {run.history[-1]['test_accuracy']:.4f}")
    print(f"run directory: {run.out_dir}")
    return 0


def _start_ranks(args, comm):
    """:func:`_start_run` on every rank of a data-parallel run, with the cores shared among them, and
    where each rank runs (host:pid); raises :class:`~scratchvae.distributed.comm.RanksDisagree` on
    every rank unless all started the same run."""
    import hashlib
    import socket

    from ..distributed.comm import agree, threads_per_rank
    from ..kernels import active_module, set_threads

    started = time.time() if comm.rank == 0 else None
    args.started = comm.broadcast(started)         # so that every rank names the same new run directory
    active_module()
    threads = threads_per_rank(comm)
    set_threads(threads)
    failure, identity, result = None, {}, None
    try:
        run, trainer = result = _start_run(args, comm)
        identity = {"scratchvae": __version__, "kernels": _kernels(), "run directory": str(run.out_dir),
                    "data (sha256)": [run.fingerprint[split]["sha256"] for split in ("train", "test")],
                    "position (epoch, batch, step)": [run.epoch, run.batch, run.step],
                    "parameters (sha256)": hashlib.sha256(b"".join(
                        v.tobytes() for v in run.model.params.values())).hexdigest(),
                    **{f"option {k}": v for k, v in dataclasses.asdict(run.config).items() if k != "data_dir"}}
    except (ValueError, TypeError, OSError, ImportError, RuntimeError, MemoryError) as e:
        failure = " ".join(line.strip() for line in (str(e).strip().splitlines() or [type(e).__name__]))
    agree(comm, failure, identity)
    return (*result, comm.allgather(f"{socket.gethostname()}:{os.getpid()}"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _start_run(args, comm):
    """The run ``args`` ask for, new or resumed, and its :class:`Trainer`."""
    from .run import Run, data_source
    from .train import Trainer, default_run_dir

    for option, value in (("--resume", args.resume), ("--out", args.out)):
        if value is not None and not value.strip():
            raise ValueError(f"{option} was given an empty path (an unset shell variable?); give a "
                             + ("checkpoint or run directory" if option == "--resume" else "directory"))
    given = {k: getattr(args, k) for k in RUN_OPTIONS if getattr(args, k) is not None}
    if "dataset" in given:
        given["dataset"] = data_source(given["dataset"])
    if args.resume is not None:
        if args.out:
            raise ValueError("--out cannot be combined with --resume: a run continues in its own directory")
        if args.overwrite:
            raise ValueError("--overwrite replaces a run with a new one; --resume continues it: give one of them")
        run = Run.open(args.resume, args.data_dir, dataset=given.get("dataset"))    # the fingerprint decides
        if run.config is None:
            raise ValueError(f"{args.resume}: holds a model only, not a training run to resume")
        stored = dataclasses.asdict(run.config)
        clash = {k: (v, stored[k]) for k, v in given.items() if stored[k] != v}
        if clash:
            raise ValueError("--resume continues the stored run, but " + "; ".join(
                f"{FLAGS.get(k, '--' + k.replace('_', '-'))} {v!r} differs from its {s!r}"
                for k, (v, s) in clash.items()))
        if args.epochs is not None:
            run.config.epochs = args.epochs
        if run.epoch >= run.config.epochs:
            asked = (f"--epochs {args.epochs} asks for no more than the {run.epoch} epochs {args.resume} has "
                     "trained" if args.epochs is not None else f"{args.resume} has trained all its {run.epoch} epochs")
            raise ValueError(f"{asked}: nothing to do; give --epochs {run.epoch + 1} or more to train it further")
    else:
        if args.epochs is not None:
            given["epochs"] = args.epochs
        if args.data_dir:
            given["data_dir"] = args.data_dir
        config = TrainConfig(**given)
        if "sigma" in given and not config.likelihood.startswith("gaussian"):
            raise ValueError(f"--sigma sets a Gaussian likelihood's sigma, and the {config.likelihood} likelihood "
                             "has none: leave --sigma out, or choose --likelihood gaussian_fixed, gaussian_scalar "
                             "or gaussian_pixel")
        out = Path(args.out) if args.out else default_run_dir(config.dataset, getattr(args, "started", None))
        run = Run(config, out_dir=out, overwrite=args.overwrite)
    return run, Trainer(run, quiet=args.quiet, comm=comm)


def _kernels():
    from ..kernels import describe
    info = describe()
    return f"{info['backend']}, gemm {info['gemm']}"


def _pictures(run, out_dir, quiet, seed=0, required=False):
    """Write every picture; without Matplotlib, say so (and fail only if ``required``)."""
    from . import plots
    try:
        written = plots.all_pictures(run.vae, run.data, run.history, out_dir, np.random.default_rng(seed),
                                     run.c_test, run.config.context)
    except ImportError as e:
        if required:
            raise
        print(f"no pictures: {e}", file=sys.stderr)
        return
    if not quiet:
        print("pictures: " + ", ".join(p.name for p in written), file=sys.stderr)


def _open_run(checkpoint, data_dir, dataset=None):
    """The run saved in ``checkpoint``, which must know its data set (at ``dataset``, if given)."""
    from .run import Run
    run = Run.open(checkpoint, data_dir, dataset=dataset)
    if run.config is None:
        raise ValueError(f"{checkpoint}: holds no training configuration, so its data set is unknown")
    return run


def add_data_arguments(parser, when: str = "") -> None:
    """Where a saved run's data are: ``--data-dir`` and ``--dataset`` (a run finds its data by
    fingerprint, not only by path: data elsewhere are taken when the run's fingerprint accepts them)."""
    parser.add_argument("--data-dir", help=f"{when}where to look for the data set first (for a .npy/.npz file: "
                                           "a folder to look in first for a file of its name)")
    parser.add_argument("--dataset", metavar="PATH", help=f"{when}the run's data set under another path or name "
                                                          "(a .npy/.npz file that moved); taken only when it is "
                                                          "the data the run was trained on (its fingerprint)")


def add_evaluate_arguments(parser) -> None:
    """The checkpoint, the samples of the bound and of log p(x), and --exact's and --posterior's options."""
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    add_data_arguments(parser)
    parser.add_argument("--samples", type=_positive_int, default=1, help="z samples per example, averaged [1]")
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the z samples [0]")
    parser.add_argument("--iw-samples", type=_positive_int, metavar="K",
                        help="also estimate log p(x) with K importance samples per example (Burda et al. "
                             "2016; 1000 or more for a tight estimate) [off; 1000 with --exact]")
    parser.add_argument("--exact", action="store_true",
                        help="for a latent of size 1 or 2: also compute log p(x) of every test image by quadrature "
                             "over z (float64, the grid refined until no value changes by more than --tol) and "
                             "print ELBO <= importance-weighted bound <= exact log p(x) with the gaps in nats")
    parser.add_argument("--tol", type=_positive_float, default=1e-3,
                        help="with --exact or --posterior: the largest change of any log p(x), in nats, at which "
                             "halving the grid's spacing stops [0.001]")
    parser.add_argument("--posterior", type=_nonneg_int, metavar="I",
                        help="for a latent of size 1 or 2: draw the true posterior p(z|x) of test image I (by "
                             "quadrature) beside the encoder's q(z|x) into -o FILE.png, and print their gap")
    parser.add_argument("-o", "--output", metavar="FILE.png", help="the picture of --posterior")


def cmd_evaluate(args) -> int:
    """Under ``mpiexec -n N`` the ranks share the test set's batches (the figures are one process's)."""
    from ..distributed import world
    from ..inference.exact import check_latent

    if (args.posterior is None) != (args.output is None):
        raise ValueError("--posterior I and -o FILE.png go together: the picture of test image I's posterior")
    if args.output is not None and Path(args.output).suffix != ".png":
        raise ValueError(f"-o must end in .png, got {args.output}")
    run = _open_run(args.checkpoint, args.data_dir, args.dataset)
    n = len(run.x_test)
    if args.exact or args.posterior is not None:
        check_latent(run.vae, q_density=args.posterior is not None)
    if args.posterior is not None and args.posterior >= n:
        raise ValueError(f"--posterior must lie in [0, {n - 1}] (the test set has {n:,} images), "
                         f"got {args.posterior}")
    rng, comm = np.random.default_rng(args.seed), world()
    elbo = _report_elbo(run, args.samples, rng, comm)
    k = args.iw_samples or (1000 if args.exact else None)
    iw = _report_iw_bound(run, k, rng, comm) if k else None
    if args.exact:
        _report_exact(run, elbo, iw, k, args.tol, comm)
    if args.posterior is not None and comm.rank == 0:
        _draw_posterior(run, args.posterior, np.random.default_rng(args.seed), args.tol, args.output)
    return 0


def _report_elbo(run, samples, rng, comm=None) -> float:
    """Print the test set's -ELBO with its two terms, and the active units; return the ELBO."""
    from ..inference.evaluate import active_units, elbo

    model, x_test, c_test = run.vae, run.x_test, run.c_test
    r = elbo(model, x_test, rng, n_samples=samples, c=c_test, comm=comm)
    print(f"{run.data.name} test set ({len(x_test):,} examples), nats per example:")
    estimated = "" if model.analytic_kl else " (estimated at the drawn z: no closed form)"
    print(f"  -ELBO {r['total']:.3f}   reconstruction {r['nll']:.3f}   KL {r['kl']:.3f}{estimated}")
    count, _ = active_units(model, x_test, c=c_test)
    print(f"  active units {count} of {model.latent_dim} (variance of E[z|x] over the data > 0.01)")
    return -r["total"]


def _report_iw_bound(run, k, rng, comm=None) -> np.ndarray:
    """Print the mean importance-weighted bound on log p(x) with ``k`` samples; return it per image."""
    from ..inference.evaluate import log_likelihood
    from .progress import Progress

    progress = Progress(len(run.x_test), f"log p(x), k={k}")
    iw = log_likelihood(run.vae, run.x_test, k, rng, progress=lambda done, total: progress.update(done),
                        c=run.c_test, comm=comm)
    progress.close()
    print(f"  log p(x) >= {iw.mean():.3f} (importance-weighted, k = {k})")
    return iw


def _report_exact(run, elbo, iw, k, tol, comm=None) -> None:
    """Print log p(x) by quadrature beside the ``elbo`` and the bound ``iw`` (k samples), with the
    gaps between the three and the images the bound misses most."""
    from ..inference.exact import log_marginal
    from .progress import Progress

    progress = Progress(len(run.x_test), "log p(x) by quadrature")
    q = log_marginal(run.vae, run.x_test, run.c_test, tol=tol, progress=lambda done, total: progress.update(done),
                     comm=comm)
    progress.close()
    exact = q.log_px.mean()
    print(f"  log p(x) = {exact:.3f} (exact: quadrature over z in [-{q.radius:g}, {q.radius:g}]^"
          f"{run.vae.latent_dim}, spacing down to {q.spacing:.3g}, {q.points:,} decoded points; the last "
          f"halving changed no log p(x) by more than {q.change:.2g})")
    print(f"  ELBO {elbo:.3f} <= IW bound (k = {k}) {iw.mean():.3f} <= exact log p(x) {exact:.3f}")
    print(f"  gaps: IW - ELBO {iw.mean() - elbo:.3f}, exact - IW {exact - iw.mean():.3f}, "
          f"exact - ELBO = KL(q(z|x) || p(z|x)) {exact - elbo:.3f} nats per example")
    missed = q.log_px - iw
    worst = int(np.argmax(missed))
    print(f"  exact - IW per image: median {np.median(missed):.3f}, more than 1 nat for {int((missed > 1).sum()):,} "
          f"of {len(missed):,} images, largest {missed[worst]:.2f} at test image {worst} (see it with "
          f"--posterior {worst} -o FILE.png)")
    if not elbo <= iw.mean() <= exact:
        print("  (the bounds hold in expectation; an estimate on the wrong side of one is the sampling noise "
              "of its z draws: raise --samples or --iw-samples)")


def _draw_posterior(run, i, rng, tol, path) -> None:
    """Draw test image ``i``'s true posterior beside the encoder's into ``path``, and print their gap."""
    from ..inference.exact import posterior_grid
    from . import plots

    x_i, c_i = run.x_test[i], None if run.c_test is None else run.c_test[i]
    grid = posterior_grid(run.vae, x_i, c_i, rng, tol=tol)
    gap = grid["log_px"] - grid["elbo"]
    print(f"  test image {i}: log p(x) = {grid['log_px']:.3f}, ELBO {grid['elbo']:.3f} (10,000 samples), "
          f"KL(q(z|x) || p(z|x)) = {gap:.3f} nats")
    plots.posterior(grid, x_i, run.image_shape, path,
                    f"test image {i}: log p(x) {grid['log_px']:.2f}, ELBO {grid['elbo']:.2f}, "
                    f"KL(q || p(z|x)) {gap:.3f} nats")
    print(path)


def add_sample_arguments(parser) -> None:
    """The checkpoint, how many samples of which class, where z comes from, and the output file."""
    from ..inference.gmm import parse_sampler

    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("-n", type=_positive_int, default=64, help="number of samples [64] (per class for a "
                                                                     "conditional model without --label)")
    parser.add_argument("--label", type=_nonneg_int, help="class to draw, for a model trained with --conditional label")
    parser.add_argument("-o", "--output", required=True, help="FILE.png (a grid) or FILE.npy (array (n, d))")
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="seed of z (and of the mixture's fit) [0]")
    parser.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of its mean")
    parser.add_argument("--sampler", type=_parsed(parse_sampler), default="prior", metavar="prior|gmm:N",
                        help="where z comes from: the model's prior, or gmm:N, a mixture of N full-covariance "
                             "Gaussians fitted by EM to the codes of the training set (needs the run's data; "
                             "not for a conditional model) [prior]")
    add_data_arguments(parser, "with --sampler gmm:N: ")


def cmd_sample(args) -> int:
    from ..inference.gmm import fit_bytes, fit_to_codes, parse_sampler
    from ..model import memory
    from ..model.layers import one_hot
    from .run import Run

    out = Path(args.output)
    if out.suffix not in (".png", ".npy"):
        raise ValueError(f"-o must end in .png or .npy, got {out}")
    components = parse_sampler(args.sampler)
    if not components and (args.dataset or args.data_dir):
        raise ValueError(f"{'--dataset' if args.dataset else '--data-dir'} points at the run's data, which only "
                         "--sampler gmm:N reads (to fit its mixture); sampling from the prior reads none: leave "
                         "it out")
    run = _open_run(args.checkpoint, args.data_dir, args.dataset) if components else Run.open(args.checkpoint)
    model = run.vae
    classes = model.context_dim
    sampler = None
    if args.label is not None and not classes:
        raise ValueError("--label needs a conditional model (trained with --conditional label)")
    if args.label is not None and args.label >= classes:
        raise ValueError(f"--label must lie in [0, {classes - 1}] for this model, got {args.label}")
    per_class = classes and args.label is None
    rows = args.n * classes if per_class else args.n
    cols = args.n if per_class else int(np.ceil(np.sqrt(rows)))
    if out.suffix == ".png":
        if run.image_shape is None:
            raise ValueError("this model's data are not images; write .npy instead")
        _require_picture(rows, run.image_shape, cols, "-n")
    # the labels, their one-hot contexts, the decoded rows and the finiteness check of each
    _require(rows * (8 + classes * model.dtype.itemsize + model.input_dim) + memory.decode_bytes(model, rows),
             f"sampling {rows:,} examples" + (f" ({args.n:,} for each of {classes} classes)" if per_class else ""),
             "-n")
    if components:        # fitted to the codes of the training set as the model trained on it
        rng = np.random.default_rng([args.seed, 1])
        codes = run.x_train_seen(rng)
        _require(fit_bytes(len(codes), model.latent_dim, components),
                 f"--sampler gmm:{components} (a mixture of {components:,} components fitted to {len(codes):,} "
                 "codes)", "N of gmm:N")
        sampler = fit_to_codes(model, codes, components, rng)
    labels = (None if not classes else np.full(args.n, args.label) if args.label is not None
              else np.repeat(np.arange(classes), args.n))
    c = None if labels is None else one_hot(labels, classes, model.dtype)
    x = model.sample(args.n if c is None else len(c), np.random.default_rng(args.seed), mean=not args.draw, c=c,
                     sampler=sampler)
    if not np.isfinite(x).all():
        raise ValueError(f"the samples are not finite (NaN or inf): the decoder overflows; {out} was not written")
    if out.suffix == ".npy":
        save_npy(out, x)
    else:
        from . import plots
        what = "" if labels is None else f" of class {args.label}" if args.label is not None else \
            ", one row per class"
        if components:
            what += f", z from a {components}-component mixture fitted to the training codes"
        plots.image_grid(x, run.image_shape, out, f"{len(x)} samples{what} from {args.checkpoint}",
                         cols=cols)
    print(out)
    return 0


def save_npy(path: Path, x: np.ndarray) -> None:
    """``np.save(path, x)``, atomically. The data go through Python's write (NumPy's
    own writes lose the error number of a full disk, and so the file's name)."""
    x = np.ascontiguousarray(x)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(x))
    with atomic_write(path, size=header.tell() + x.nbytes) as f:
        f.write(header.getvalue())
        f.write(x.data)


def _require(nbytes: int, what: str, lower: str) -> None:
    """Refuse, before allocating, what does not fit in the memory available
    (:func:`~scratchvae.model.memory.require`), naming the option to lower."""
    from ..model import memory
    try:
        memory.require(nbytes, what)
    except memory.NotEnoughMemoryError as e:
        raise memory.NotEnoughMemoryError(f"{e} (lower {lower})") from None


#: Matplotlib draws no picture wider or taller than this many pixels
MAX_PICTURE_SIDE = 2 ** 16
#: bytes drawing a grid takes per pixel of its canvas (see :func:`_require_picture`)
PICTURE_BYTES_PER_PIXEL = 640


def _require_picture(n: int, image_shape, cols: int, lower: str) -> None:
    """Refuse a grid of ``n`` images in ``cols`` columns that Matplotlib cannot draw or memory cannot hold:
    drawing takes about 600 bytes per pixel of the canvas (measured: its float64 copies, and the figure of
    2.5 x 2.5 RGBA pixels per canvas pixel with the renderer's buffers)."""
    h, w = image_shape
    rows = -(-n // cols)
    height, width = rows * (h + 1) + 1, cols * (w + 1) + 1
    side = int(max(height / 40 + 0.8, width / 40 + 0.5) * 100)          # plots._save_grid's figure at 100 dpi
    if side >= MAX_PICTURE_SIDE:
        raise ValueError(f"a picture of {n:,} images in {cols:,} columns would be {side:,} pixels a side, more "
                         f"than Matplotlib draws ({MAX_PICTURE_SIDE:,}); lower {lower}, or write an array (.npy)")
    _require(height * width * PICTURE_BYTES_PER_PIXEL, f"a picture of {n:,} images", lower)


def add_plot_arguments(parser) -> None:
    """The checkpoint, the folder for the pictures and the seed of the samples."""
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("-o", "--out", help="folder for the PNG files [the checkpoint's folder]")
    add_data_arguments(parser)
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the samples [0]")


def cmd_plot(args) -> int:
    run = _open_run(args.checkpoint, args.data_dir, args.dataset)
    out = Path(args.out) if args.out else run.out_dir
    make_dirs(out)
    _pictures(run, out, False, args.seed, required=True)
    print(out)
    return 0


def add_complete_arguments(parser) -> None:
    """The checkpoint, the mask, the images shown and scored, and the Gibbs chains' length."""
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("--mask", help="bottom-half, block or random:P (e.g. random:0.5) [the mask a "
                                       "--conditional mask:KIND model was trained with]")
    parser.add_argument("-o", "--output", required=True, help="FILE.png for the picture")
    parser.add_argument("-n", type=_positive_int, default=8, help="test images in the picture [8]")
    parser.add_argument("--score", type=_positive_int, default=1000,
                        help="test images the errors are measured on (the first N, at least -n) [1000]")
    parser.add_argument("--steps", type=_positive_int, default=200, help="Gibbs iterations [200]")
    parser.add_argument("--burn-in", type=_nonneg_int, default=50, help="iterations left out of the average [50]")
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the masks and the chains [0]")
    add_data_arguments(parser)


def cmd_complete(args) -> int:
    from ..inference.complete import Mask, compare

    out = Path(args.output)
    if out.suffix != ".png":
        raise ValueError(f"-o must end in .png, got {out}")
    run = _open_run(args.checkpoint, args.data_dir, args.dataset)
    model, context = run.vae, run.config.context
    trained_mask = context[5:] if context.startswith("mask:") else None
    if model.context_dim and trained_mask is None:
        raise ValueError("this conditional model takes labels, not observed pixels: complete with a plain "
                         "VAE or one trained with --conditional mask:KIND")
    if not (args.mask or trained_mask):
        raise ValueError("give --mask bottom-half, block or random:P: a plain VAE completes any mask")
    mask = Mask.parse(args.mask or trained_mask)
    data = run.data
    if data.image_shape is None or len(data.image_shape) != 2:
        raise ValueError(f"completion masks need images; {data.name} has none")
    x_train, x_test = run.x_train, run.x_test
    rng = np.random.default_rng(args.seed)
    n = min(max(args.n, args.score), len(x_test))
    x = x_test[:n]
    missing = mask.sample(rng, n, data.image_shape)
    results = compare(model, x_train, x, missing, rng, args.steps, args.burn_in)
    shown = min(args.n, n)
    print(f"{data.name}, mask {mask}: error on the missing pixels of {n:,} test images "
          f"(the first {shown} drawn in {out})")
    print(f"  {'method':26s} {'BCE nats/pixel':>15s} {'MSE':>8s}")
    for name, (_, e, note) in results.items():
        print(f"  {name:26s} {e['bce']:15.4f} {e['mse']:8.4f}  {note}")
    from . import plots
    rows = [x[:shown], np.where(missing[:shown], 0.5, x[:shown])] + [done[:shown] for done, _, _ in results.values()]
    plots.image_grid(np.concatenate(rows), data.image_shape, out,
                     "rows: original, masked (grey), " + ", ".join(results), cols=shown)
    print(out)
    return 0


def add_interpolate_arguments(parser) -> None:
    """The checkpoint, the two ends (test images or prior draws), the steps and the output files."""
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("--from", dest="start", type=_nonneg_int, metavar="I", help="index of the first test image")
    parser.add_argument("--to", dest="end", type=_nonneg_int, metavar="J", help="index of the last test image")
    parser.add_argument("--prior", action="store_true",
                        help="start and end at two draws from the model's prior (N(0, I), or its VampPrior; seeded "
                             "by --seed) instead of test images")
    parser.add_argument("--steps", type=_positive_int, default=10, help="codes per path, both ends included [10]")
    parser.add_argument("--label", type=_nonneg_int, help="for a model trained with --conditional label: the class to "
                                                    "hold fixed [the --from image's]")
    parser.add_argument("-o", "--output", help="FILE.png for the picture")
    parser.add_argument("--array", metavar="FILE.npy", help="also (or instead) write the images as an array of "
                                                             "shape (2, steps, d): linear path, then spherical")
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="seed of the prior draws [0]")
    add_data_arguments(parser)


def cmd_interpolate(args) -> int:
    from ..model.layers import one_hot
    from ..inference.interpolate import interpolate, interpolate_bytes

    out = Path(args.output) if args.output else None
    if out is None and not args.array:
        raise ValueError("give -o FILE.png for the picture, --array FILE.npy for the array, or both")
    if out is not None and out.suffix != ".png":
        raise ValueError(f"-o must end in .png, got {out}")
    if args.array and Path(args.array).suffix != ".npy":
        raise ValueError(f"--array must end in .npy, got {args.array}")
    if args.steps < 2:
        raise ValueError("--steps must be at least 2: the two ends are included")
    if args.prior == (args.start is not None or args.end is not None):
        raise ValueError("give either --from I --to J (two test images) or --prior (two draws from the prior)")
    run = _open_run(args.checkpoint, args.data_dir, args.dataset)
    model, context = run.vae, run.config.context
    if args.label is not None and context != "label":
        raise ValueError("--label needs a model trained with --conditional label")
    if args.prior:
        if context.startswith("mask:"):
            raise ValueError("this model's context is a test image's observed pixels: interpolate between "
                             "test images (--from I --to J)")
        if context == "label" and args.label is None:
            raise ValueError("this model is conditioned on the label: give --label to hold fixed")
        z_from, z_to = model.prior_sample(2, np.random.default_rng(args.seed))
        c, what = None, f"two draws from the prior, seed {args.seed}"
    else:
        if args.start is None or args.end is None:
            raise ValueError("give both --from I and --to J")
        n = len(run.x_test)
        for flag, index in (("--from", args.start), ("--to", args.end)):
            if index >= n:
                raise ValueError(f"{flag} must lie in [0, {n - 1}] (the test set has {n:,} images), got {index}")
        pair = [args.start, args.end]
        c_pair = None if run.c_test is None else run.c_test[pair]
        z_from, z_to = model.embed(run.x_test[pair], c_pair)          # each image with its own context
        c, what = (None if c_pair is None else c_pair[0]), f"test images {args.start} and {args.end}"
    if args.label is not None:
        if args.label >= model.context_dim:
            raise ValueError(f"--label must lie in [0, {model.context_dim - 1}] for this model, got {args.label}")
        c = one_hot(np.array([args.label]), model.context_dim, model.dtype)[0]
    if out is not None:
        if run.image_shape is None:
            raise ValueError("this model's data are not images; write --array FILE.npy instead")
        _require_picture(2 * args.steps, run.image_shape, args.steps, "--steps")
    _require(interpolate_bytes(model, args.steps), f"interpolating with --steps {args.steps:,}", "--steps")
    images = interpolate(model, z_from, z_to, args.steps, c)
    if args.array:
        save_npy(Path(args.array), images)
        print(args.array)
    if out is not None:
        from . import plots
        held = ("" if c is None else f", label {int(np.argmax(c))} held fixed" if context == "label"
                else f", the context of test image {args.start} held fixed")
        plots.image_grid(images.reshape(-1, images.shape[-1]), run.image_shape, out,
                         f"linear (top) and spherical (bottom) paths between {what}{held}", cols=args.steps)
        print(out)
    return 0


def add_export_arguments(parser) -> None:
    """The checkpoint and the directory and module name to write."""
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="directory to write into (made if missing)")
    parser.add_argument("--name", default="vae", help="module name: the files are NAME.py, NAME.npz, NAME.json [vae]")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export of that name")


def cmd_export(args) -> int:
    from ..model import M2
    from .export import export
    from .run import Run

    run = Run.open(args.checkpoint)
    context = "none" if run.config is None else run.config.context
    try:
        image_shape = None if run.config is None else run.image_shape
    except FileNotFoundError:            # not stored, and the data set is not on this machine to tell
        image_shape = None
    paths = export(run.vae, args.output, args.name, args.overwrite, context, source=str(args.checkpoint),
                   image_shape=image_shape)
    for path in paths:
        print(path)
    if isinstance(run.model, M2):
        print("note: the label-conditional VAE of this M2 run is exported, not its classifier q(y|x)",
              file=sys.stderr)
    return 0


def add_bench_arguments(parser) -> None:
    """The backend and products to time, the model's shape and how long to time it."""
    from ..kernels import BUILTIN_BACKENDS, GEMMS

    parser.add_argument("--backend", help=f"kernel backend ({', '.join(BUILTIN_BACKENDS)} or a module path) "
                                          "[the default]")
    parser.add_argument("--gemm", choices=tuple(GEMMS), help="where the products come from [the backend's own]")
    parser.add_argument("--batch-size", type=_positive_int, default=128, help="examples per step [128]")
    parser.add_argument("--input-dim", type=_positive_int, default=784, help="pixels per example [784]")
    parser.add_argument("--hidden", type=_hidden, default=[400], help="encoder hidden widths [400]")
    parser.add_argument("--latent", type=_positive_int, default=20, help="latent size [20]")
    parser.add_argument("--seconds", type=_positive_float, default=4.0,
                        help="seconds of steps to time, half alone and half profiled [4]")


def cmd_bench(args) -> int:
    from ..model import VAE, memory
    from .roofline import profile
    # its pool of four random batches (float32) and one training step, checked before either is made
    model = VAE(args.input_dim, args.hidden, args.latent)
    _require(16 * args.batch_size * args.input_dim + memory.step_bytes(model, args.batch_size),
             f"bench --batch-size {args.batch_size:,} --input-dim {args.input_dim:,}", "--batch-size")
    del model
    print(profile(args.backend, args.gemm, args.batch_size, args.input_dim, args.hidden, args.latent,
                  args.seconds))
    return 0


def add_download_arguments(parser) -> None:
    """The data set's name, the destination folder and a mirror."""
    parser.add_argument("name", help="mnist, fashion-mnist or kmnist")
    parser.add_argument("--dest", help="target folder [~/.cache/scratchvae/NAME]")
    parser.add_argument("--base-url", help="fetch from this mirror instead of the official sites")


def cmd_download(args) -> int:
    from ..data.download import download
    path = download(args.name, args.dest, base_url=args.base_url,
                    progress=lambda line: print(line, file=sys.stderr))
    print(path)
    return 0


def cmd_datasets(args) -> int:
    from ..data.datasets import DATASET_NAMES, SYNTHETIC, DatasetNotFoundError, find_dataset
    for name in DATASET_NAMES:
        if name == SYNTHETIC:
            where = "built in (generated on demand)"
        else:
            try:
                where = str(find_dataset(name))
            except DatasetNotFoundError:
                where = f"not found (scratchvae download {name})"
        print(f"{name:<18} {where}")
    return 0



class Command(NamedTuple):
    """A subcommand: its function, the function declaring its options (None: it has none), its line in
    ``scratchvae --help`` and the description atop ``scratchvae NAME --help``."""
    run: Callable[[argparse.Namespace], int]
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]]
    help: str
    description: Optional[str] = None


COMMANDS = {
    "train": Command(cmd_train, add_train_arguments, "train a VAE (default: on the built-in synthetic-digits)",
                     "Train a VAE, writing checkpoint.npz, history.csv/json and pictures into a run directory. "
                     "Defaults in brackets. Under mpiexec -n N (pip install 'scratchvae[mpi]') N ranks train the "
                     "run data-parallel: each takes its rows of every --batch-size batch, one allreduce sums "
                     "their gradients, rank 0 alone prints and writes (see the README's \"More than one "
                     "machine\")."),
    "evaluate": Command(cmd_evaluate, add_evaluate_arguments,
                        "test-set ELBO, active units and log-likelihood of a checkpoint",
                        "Negative ELBO (total = reconstruction + KL) of the test split, nats per example, with z "
                        "sampled from q(z|x); active units; with --iw-samples, the importance-weighted log p(x); "
                        "for a latent of size 1 or 2, with --exact, log p(x) itself by quadrature, and with "
                        "--posterior, the picture of one image's true posterior beside the encoder's. Under "
                        "mpiexec -n N the ranks share the test set's batches (and --exact's tiles) and print the "
                        "same figures."),
    "sample": Command(cmd_sample, add_sample_arguments, "draw samples from a trained model",
                      "Ancestral samples: z from the prior (N(0, I), or the VampPrior), or from a mixture fitted "
                      "to the training codes (--sampler gmm:N), then the decoder's mean. A conditional model "
                      "draws -n samples of class --label, or without --label -n samples of every class, one row "
                      "per class."),
    "plot": Command(cmd_plot, add_plot_arguments, "all pictures of a trained model",
                    "Reconstructions, samples, latent space, manifold (2-D latent) and training curves."),
    "complete": Command(cmd_complete, add_complete_arguments, "fill in missing pixels of test images",
                        "Hide part of each test image (--mask), fill it in with the model and draw originals, "
                        "masked inputs and completions, one row each. A plain VAE completes by pseudo-Gibbs and "
                        "by Metropolis-within-Gibbs; a VAE trained with --conditional mask:KIND from its context. "
                        "Prints the error on the missing pixels (binary cross-entropy and squared error per "
                        "pixel) against two baselines: the training set's mean image and the training image "
                        "nearest on the observed pixels."),
    "interpolate": Command(cmd_interpolate, add_interpolate_arguments, "decode the paths between two latent codes",
                           "Decoded means E[x | z] along a straight and a spherical (slerp) path between the codes "
                           "of two test images (--from, --to: the posterior means, through the flow if the model "
                           "has one) or two draws from the prior (--prior), the ends included: one row per path, "
                           "linear above spherical. A conditional model's context is held fixed along the path: "
                           "the --from image's (or --label)."),
    "export": Command(cmd_export, add_export_arguments,
                      "write a trained model as one Python module that needs NumPy only",
                      "Write DIR/NAME.py (encode, decode, sample and elbo of the trained VAE, importing nothing "
                      "but NumPy), DIR/NAME.npz (its weights as plain arrays) and DIR/NAME.json (its "
                      "architecture). Copy the three files anywhere and import NAME. Files of an earlier export "
                      "are replaced only with --overwrite."),
    "bench": Command(cmd_bench, add_bench_arguments, "a roofline report of one training step, kernel by kernel",
                     "Times every kernel call of training steps of a VAE on random data (float32, Bernoulli, "
                     "Adam): per kernel and GEMM shape, calls, time, GFLOP/s or GB/s against the measured "
                     "compute peak and memory bandwidth; then the whole step in examples/s and as a share of the "
                     "GEMM limit. Threads come from the environment (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, "
                     "NUMBA_NUM_THREADS)."),
    "download": Command(cmd_download, add_download_arguments, "fetch and verify a named data set",
                        "Download the official files, check each SHA-256, write atomically."),
    "datasets": Command(cmd_datasets, None, "which data sets are found where"),
}


class StdoutError(OSError):
    """Writing to standard output failed: the reader closed it (a pipe into ``head``) or it is full
    (``> /dev/full``); raised by :class:`_GuardedStdout` so that :func:`main` does not blame a file."""


class _GuardedStdout:
    """``sys.stdout`` during :func:`main`: every write or flush that fails raises :class:`StdoutError`."""

    def __init__(self, stream):
        self._stream = stream

    def _guard(self, method, *args):
        try:
            return method(*args)
        except OSError as e:
            raise StdoutError(e.errno, e.strerror) from None

    def write(self, text):
        return self._guard(self._stream.write, text)

    def flush(self):
        return self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _stdout_failed(e: OSError, stdout) -> int:
    """One line for a standard output that cannot be written, and the exit code.

    A reader that closed the pipe (``scratchvae datasets | head -1``) wanted no more: exit quietly
    with 141, the status the shell reports for a tool ended by SIGPIPE (``yes | head -1``), which
    is what a script with ``set -o pipefail`` expects.  Anything else (``> /dev/full``, a full file)
    is an error naming standard output, never a file of the command's own."""
    if stdout is sys.__stdout__:  # what is still buffered would fail again when Python flushes it on exit
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
            os.close(devnull)
        except (OSError, AttributeError, ValueError):
            pass
    if e.errno == errno.EPIPE:
        return EXIT_BROKEN_PIPE
    print(f"scratchvae: error: cannot write to standard output ({e.strerror or e}): it goes to a full "
          f"device or file, not to a file of the command's; redirect it elsewhere", file=sys.stderr)
    return EXIT_ERROR


def main(argv=None) -> int:
    stdout, sys.stdout = sys.stdout, _GuardedStdout(sys.stdout)
    try:
        return _main(argv)
    except StdoutError as e:
        return _stdout_failed(e, stdout)
    finally:
        sys.stdout = stdout


def _main(argv) -> int:
    from ..distributed.comm import launched_rank, launched_size
    rank, size = launched_rank(), launched_size()
    if rank == 0:
        return _command(argv, rank, size)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        return _command(argv, rank, size)       # rank 0 alone prints; a rank's own failure goes to sys.__stderr__


def _command(argv, rank: int, ranks: int) -> int:
    """Parse ``argv`` and run its command as rank ``rank`` of ``ranks`` MPI ranks (1: no MPI). An error every
    rank meets alike is reported once (by rank 0); one that a rank meets alone is reported with its
    rank, and ends every rank (MPI abort) rather than leave them waiting for it."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    finally:
        sys.stdout.flush()
    if args.command is None:
        parser.print_help()
        sys.stdout.flush()
        return 0
    try:
        if ranks > 1 and args.command not in RANKED_COMMANDS:
            raise _EveryRank(f"scratchvae {args.command} runs in one process; under mpiexec only "
                             f"{' and '.join(RANKED_COMMANDS)} share their work among ranks: run it without mpiexec")
        code = COMMANDS[args.command].run(args)
        sys.stdout.flush()
        return code
    except StdoutError:
        raise
    except KeyboardInterrupt:
        print("scratchvae: interrupted", file=sys.stderr)
        return _alone(ranks, EXIT_INTERRUPTED)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError, FloatingPointError, MemoryError) as e:
        if os.environ.get("SCRATCHVAE_DEBUG"):
            raise
        message = " ".join(line.strip() for line in str(e).strip().splitlines()) or (
            "out of memory" if isinstance(e, MemoryError) else type(e).__name__)
        if ranks == 1 or getattr(e, "every_rank", False):
            print(f"scratchvae: error: {message}", file=sys.stderr)
            return EXIT_ERROR
        print(f"scratchvae: error: rank {rank} of {ranks}: {message}", file=sys.__stderr__, flush=True)
        return _alone(ranks, EXIT_ERROR)


class _EveryRank(ValueError):
    every_rank = True


def _alone(ranks: int, code: int) -> int:
    """``code`` for this process; one of several MPI ranks takes every rank down with it."""
    if ranks > 1:
        from ..distributed import world
        world().abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
