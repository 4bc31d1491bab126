"""Training and evaluation over several processes: data parallelism by hand, over MPI.

``comm`` says what the processes must be able to do together (a sum of buffers,
a gather, a broadcast, an abort), with one process, simulated ranks for tests,
and MPI through mpi4py; ``data_parallel`` is the training step that splits each
batch's rows among them. ``mpiexec -n N scratchvae train ...`` runs it: see
the README's "More than one machine". mpi4py is imported only when an MPI
launcher started the process as one of several ranks.
"""
from .comm import Communicator, MPIMissingError, OneProcess, simulate, world
from .data_parallel import DataParallelStep, rows_of

__all__ = ["Communicator", "OneProcess", "simulate", "world", "MPIMissingError", "DataParallelStep", "rows_of"]
