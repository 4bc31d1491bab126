"""Communicators: what data-parallel training asks of the processes it runs in.

Four operations, all collective (every rank calls them, in the same order):

    allreduce_sum(buffer)   buffer <- the sum of every rank's buffer, in place;
                            every rank ends with the same bits
    allgather(obj)          [rank 0's obj, rank 1's obj, ...] on every rank
    broadcast(obj)          rank 0's obj on every rank
    abort(code)             end every rank now (a rank that failed alone calls it)

Three implementations:

- :class:`OneProcess`: rank 0 of 1; the sum of one buffer is the buffer. The
  training loop runs on it when no ``mpiexec`` started it, so that one process
  and N share the code path.
- :class:`Simulated`: N ranks as N threads of this process (:func:`simulate`),
  for tests: the data-parallel step checked without ``mpiexec``.
- :class:`MPI`: ``mpi4py``'s ``COMM_WORLD``, the one for real clusters.

:func:`world` picks: MPI when the environment says an MPI launcher started
this process as one of several ranks (or ``SCRATCHVAE_MPI=1`` asks for it),
else one process. mpi4py is imported there and nowhere else.
"""
from __future__ import annotations

import abc
import functools
import os
import sys
import threading
import time
from typing import Any, Callable, List, Optional

import numpy as np

#: environment variables in which MPI launchers give a process the size of its job and its rank:
#: MPICH and Intel MPI (``PMI_*``, also Slurm's ``srun --mpi=pmi2``), Open MPI, MVAPICH
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")

INSTALL_HINT = "pip install 'scratchvae[mpi]' (mpi4py and an MPI runtime)"


class MPIMissingError(ImportError):
    """An MPI launcher started this process as one of several ranks, and mpi4py is not installed
    (``every_rank``: each rank meets it alike, so rank 0 alone reports it)."""
    every_rank = True


class MPIMismatchError(RuntimeError):
    """The launcher's ranks are not one MPI job to mpi4py (each would train alone)."""
    every_rank = True


class Communicator(abc.ABC):
    """The collective operations of a group of ``size`` ranks; this process is ``rank``."""

    rank: int = 0
    size: int = 1

    @abc.abstractmethod
    def allreduce_sum(self, buffer: np.ndarray) -> None:
        """Replace ``buffer`` (a contiguous array) by the sum of every rank's, in place."""

    @abc.abstractmethod
    def allgather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""

    @abc.abstractmethod
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``."""

    @abc.abstractmethod
    def abort(self, code: int) -> None:
        """End every rank now with exit code ``code`` (does not return)."""

    @property
    def local_size(self) -> int:
        """Ranks on this machine (they share its cores)."""
        return self.size

    def __repr__(self):
        return f"{type(self).__name__}(rank {self.rank} of {self.size})"


class OneProcess(Communicator):
    """A group of one: every collective is the identity."""

    def allreduce_sum(self, buffer):
        pass

    def allgather(self, obj):
        return [obj]

    def broadcast(self, obj):
        return obj

    def abort(self, code):
        sys.exit(code)


class Simulated(Communicator):
    """Rank ``rank`` of ``size`` threads that share one :class:`_Meeting` (see :func:`simulate`).
    Sums add the ranks' buffers in rank order, as one reduction every rank reads."""

    def __init__(self, meeting: "_Meeting", rank: int):
        self.meeting, self.rank, self.size = meeting, rank, meeting.size

    def allreduce_sum(self, buffer):
        def total(buffers):
            out = buffers[0].copy()
            for b in buffers[1:]:
                out += b
            return out
        buffer[...] = self.meeting.exchange(self.rank, buffer, total)

    def allgather(self, obj):
        return self.meeting.exchange(self.rank, obj, list)

    def broadcast(self, obj):
        return self.meeting.exchange(self.rank, obj, lambda objs: objs[0])

    def abort(self, code):
        self.meeting.barrier.abort()
        raise SystemExit(code)


class _Meeting:
    """Where simulated ranks meet: each puts its part in, the last one in combines them."""

    def __init__(self, size: int):
        self.size = size
        self.parts: List[Any] = [None] * size
        self.result = None
        self.barrier = threading.Barrier(size)

    def exchange(self, rank: int, part, combine: Callable[[list], Any]):
        self.parts[rank] = part
        if self.barrier.wait() == 0:        # one thread combines, after every part is in
            self.result = combine(self.parts)
        self.barrier.wait()
        result = self.result
        self.barrier.wait()                 # nobody starts the next exchange before all have read
        return result


def simulate(size: int, work: Callable[[Communicator], Any]) -> list:
    """Run ``work(comm)`` as ``size`` ranks, each a thread of this process; returns their results
    in rank order. An exception in one rank breaks the others' next collective
    (``threading.BrokenBarrierError``) and the first one raised is raised here."""
    meeting = _Meeting(size)
    results: List[Any] = [None] * size
    errors: List[Optional[BaseException]] = [None] * size

    def rank_main(rank):
        try:
            results[rank] = work(Simulated(meeting, rank))
        except BaseException as e:          # noqa: B902 - handed to the caller below
            errors[rank] = e
            meeting.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,), name=f"rank {r}") for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)),
                 next((e for e in errors if e is not None), None))
    if first is not None:
        raise first
    return results


class MPI(Communicator):
    """``mpi4py``'s ``COMM_WORLD``. Sums are one ``MPI_Allreduce`` in place."""

    def __init__(self):
        from mpi4py import MPI as mpi
        self._mpi, self._comm = mpi, mpi.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self._local = self._comm.Split_type(mpi.COMM_TYPE_SHARED).Get_size()

    def allreduce_sum(self, buffer):
        self._comm.Allreduce(self._mpi.IN_PLACE, buffer, op=self._mpi.SUM)

    def allgather(self, obj):
        return self._comm.allgather(obj)

    def broadcast(self, obj):
        return self._comm.bcast(obj, root=0)

    def abort(self, code):
        sys.stderr.flush()
        time.sleep(0.5)             # let the launcher forward this rank's last words before it kills the job
        self._comm.Abort(code)

    @property
    def local_size(self):
        return self._local


def launched_size(environ=os.environ) -> int:
    """The number of ranks an MPI launcher started this job with (1 when none did)."""
    return _launcher_value(SIZE_VARIABLES, environ, 1)


def launched_rank(environ=os.environ) -> int:
    """This process's rank as the MPI launcher gave it (0 when none did)."""
    return _launcher_value(RANK_VARIABLES, environ, 0)


def _launcher_value(names, environ, default: int) -> int:
    """The first of the variables ``names`` that holds a whole number, else ``default``."""
    return next((int(environ[n]) for n in names if environ.get(n, "").isdigit()), default)


@functools.lru_cache(maxsize=None)
def world() -> Communicator:
    """This process's communicator: :class:`MPI` when a launcher started it as one of several ranks
    (or ``SCRATCHVAE_MPI=1`` asks), else :class:`OneProcess`. Raises :class:`MPIMissingError`
    when MPI is needed and mpi4py is not installed."""
    size = launched_size()
    if size <= 1 and os.environ.get("SCRATCHVAE_MPI") != "1":
        return OneProcess()
    try:
        comm = MPI()
    except ImportError as e:
        raise MPIMissingError(f"this process was started as one of {size} MPI ranks, but mpi4py cannot be "
                              f"imported ({e}); install the extra on every machine: {INSTALL_HINT}") from None
    if size > 1 and comm.size != size:
        raise MPIMismatchError(f"the launcher started {size} ranks, but mpi4py's MPI sees {comm.size}: this mpiexec "
                               "belongs to another MPI than the one mpi4py was built with; start the ranks with "
                               "the mpiexec of mpi4py's MPI (python -m mpi4py --mpi-library names it)")
    return comm


class RanksDisagree(ValueError):
    """Raised on every rank alike when the ranks cannot start together (one failed to set up, or
    their options, data or starting points differ); ``every_rank``: rank 0 alone reports it."""
    every_rank = True


def agree(comm: Communicator, failure: Optional[str], identity: dict) -> None:
    """Every rank calls this once set up, with the one-line error it met (or None) and what
    must be the same on every rank (options, data fingerprint, starting point, as JSON-like
    values). Raises :class:`RanksDisagree` on every rank unless all succeeded and agree."""
    everyone = comm.allgather((failure, identity))
    failed = {}
    for rank, (message, _) in enumerate(everyone):
        if message is not None:
            failed.setdefault(message, []).append(rank)
    if failed:
        raise RanksDisagree("; ".join(f"{_ranks(ranks, comm.size)}: {message}" for message, ranks in failed.items()))
    first = everyone[0][1]
    differ = [f"rank {rank}'s {key} {ident.get(key)!r} differs from rank 0's {first.get(key)!r}"
              for rank, (_, ident) in enumerate(everyone) for key in sorted(set(ident) | set(first))
              if ident.get(key) != first.get(key)]
    if differ:
        raise RanksDisagree("the ranks would not train the same run: " + "; ".join(differ[:4])
                            + (f"; and {len(differ) - 4} more" if len(differ) > 4 else "")
                            + "; start every rank with the same command, data and checkpoint")


def _ranks(ranks: List[int], size: int) -> str:
    if len(ranks) == size:
        return f"every rank of {size}"
    return f"rank {', '.join(map(str, ranks))} of {size}"


def threads_per_rank(comm: Communicator) -> int:
    """This machine's cores shared among its ranks (at least one each, no more than the rank may run on)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:                  # not on Linux
        allowed = os.cpu_count() or 1
    return max(1, min(allowed, (os.cpu_count() or 1) // comm.local_size))
