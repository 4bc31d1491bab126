"""Data-parallel training without mpiexec: the communicators, the split of a batch, and N ranks
simulated as N threads of this process (scratchvae.distributed.simulate) against one process.

The real ``mpiexec -n 2`` runs are in tests/test_mpi.py."""
import sys
import threading

import numpy as np
import pytest

from scratchvae import kernels
from scratchvae.distributed import OneProcess, rows_of, simulate
from scratchvae.distributed.data_parallel import skip_uniforms
from scratchvae.distributed import comm as comm_module
from scratchvae.distributed.comm import RanksDisagree, agree, launched_rank, launched_size
from scratchvae.inference.evaluate import elbo, log_likelihood
from scratchvae.inference.exact import log_marginal
from scratchvae.run import Run, TrainConfig, Trainer
from scratchvae.run.train import TrainingDiverged

SMALL = dict(hidden=[16], latent_dim=2, batch_size=50, epochs=1)


@pytest.mark.parametrize("n", [0, 1, 7, 50, 97, 128])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_the_ranks_rows_tile_the_batch_in_order_and_differ_by_one_at_most(n, size):
    parts = [rows_of(n, r, size) for r in range(size)]
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))
    counts = [p.stop - p.start for p in parts]
    assert max(counts) - min(counts) <= 1


def same_stream(a, b) -> bool:
    """Do generators ``a`` and ``b`` draw the same numbers from here on (float32, float64, normals)?"""
    return (np.array_equal(a.random(7, dtype=np.float32), b.random(7, dtype=np.float32))
            and np.array_equal(a.random(3), b.random(3)) and np.array_equal(a.standard_normal(5), b.standard_normal(5)))


@pytest.mark.parametrize("before", [0, 1, 2, 3])
def test_skipping_uniforms_lands_where_drawing_them_does(before):
    for skipped in range(7):
        for kept in range(5):
            drawn, jumped = np.random.default_rng(7), np.random.default_rng(7)
            drawn.random(before, dtype=np.float32)
            jumped.random(before, dtype=np.float32)
            whole = drawn.random(skipped + kept + 3, dtype=np.float32)
            skip_uniforms(jumped, skipped)
            np.testing.assert_array_equal(jumped.random(kept, dtype=np.float32), whole[skipped:skipped + kept])
            skip_uniforms(jumped, 3)
            assert same_stream(drawn, jumped), (before, skipped, kept)
    skip_uniforms(np.random.default_rng(0), 10 ** 12)            # a jump, not a loop
    with pytest.raises(TypeError, match="PCG64"):
        skip_uniforms(np.random.Generator(np.random.MT19937(0)), 4)


def test_a_simulated_sum_is_the_sum_with_the_same_bits_on_every_rank():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(1001).astype(np.float32) for _ in range(3)]

    def work(comm):
        buffer = parts[comm.rank].copy()
        comm.allreduce_sum(buffer)
        return buffer, comm.allgather(comm.rank * 10), comm.broadcast(f"from {comm.rank}")

    results = simulate(3, work)
    expected = parts[0] + parts[1] + parts[2]
    for buffer, gathered, told in results:
        np.testing.assert_array_equal(buffer, expected)
        assert gathered == [0, 10, 20] and told == "from 0"


def test_a_simulated_rank_that_fails_stops_the_others_instead_of_leaving_them_waiting():
    def work(comm):
        if comm.rank == 1:
            raise OSError("rank 1's disk is full")
        comm.allreduce_sum(np.zeros(3))         # would wait for rank 1 forever
        return "unreachable"

    with pytest.raises(OSError, match="rank 1's disk"):
        simulate(2, work)


def test_one_process_is_a_group_of_one():
    one = OneProcess()
    buffer = np.arange(4.0)
    one.allreduce_sum(buffer)
    np.testing.assert_array_equal(buffer, np.arange(4.0))
    assert (one.rank, one.size, one.allgather("x"), one.broadcast(3)) == (0, 1, ["x"], 3)


def test_the_launchers_variables_give_the_size_and_no_launcher_means_one_process(monkeypatch):
    assert launched_size({}) == 1
    assert launched_size({"PMI_SIZE": "4"}) == 4
    assert launched_size({"OMPI_COMM_WORLD_SIZE": "16"}) == 16
    assert launched_rank({}) == 0 and launched_rank({"PMI_RANK": "3"}) == 3
    assert launched_rank({"PMI_RANK": "", "OMPI_COMM_WORLD_RANK": "5"}) == 5
    for name in comm_module.SIZE_VARIABLES + ("SCRATCHVAE_MPI",):
        monkeypatch.delenv(name, raising=False)
    comm_module.world.cache_clear()
    try:
        assert isinstance(comm_module.world(), OneProcess)
    finally:
        comm_module.world.cache_clear()


def test_ranks_without_mpi4py_are_told_how_to_install_the_extra(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)         # import mpi4py now fails
    comm_module.world.cache_clear()
    try:
        with pytest.raises(comm_module.MPIMissingError, match=r"one of 2 MPI ranks.*scratchvae\[mpi\]"):
            comm_module.world()
    finally:
        comm_module.world.cache_clear()


def test_ranks_that_failed_or_differ_refuse_to_start_together_on_every_rank():
    def failing(comm):
        with pytest.raises(RanksDisagree, match="rank 1 of 2: no such file"):
            agree(comm, "no such file" if comm.rank == 1 else None, {"seed": 0})
        with pytest.raises(RanksDisagree, match="every rank of 2: bad option"):
            agree(comm, "bad option", {})
        with pytest.raises(RanksDisagree, match="rank 1's seed 1 differs from rank 0's 0"):
            agree(comm, None, {"seed": comm.rank, "data": "same"})
        agree(comm, None, {"seed": 0})                          # the same: no error
        return True

    assert simulate(2, failing) == [True, True]


def test_threads_per_rank_share_the_machine_and_give_each_rank_one_at_least():
    class Ranks(OneProcess):
        def __init__(self, local):
            self.local = local

        @property
        def local_size(self):
            return self.local

    cores = comm_module.threads_per_rank(Ranks(1))
    assert cores >= 1
    assert comm_module.threads_per_rank(Ranks(10 ** 6)) == 1


def test_set_threads_sets_the_blas_and_numba_pools_and_refuses_a_count_below_one():
    before = kernels.describe().get("numba_threads")
    try:
        done = kernels.set_threads(1)
        assert done.get("blas") == 1                # NumPy's wheels carry OpenBLAS
        if "numba" in sys.modules:
            assert done["numba"] == 1 == sys.modules["numba"].get_num_threads()
    finally:
        kernels.set_threads(before or 2)
    with pytest.raises(ValueError, match="integer >= 1"):
        kernels.set_threads(0)


# --------------------------------------------------------------------------
# N simulated ranks train the run one process trains
# --------------------------------------------------------------------------

def _train(config, data, ranks, tmp_path, on_batch=None):
    """``ranks`` simulated ranks (0: one process, no communicator) train ``config``; returns their runs."""
    out = tmp_path / f"run-{ranks}-{threading.get_ident()}-{np.random.default_rng().integers(1 << 30)}"
    if ranks == 0:
        run = Run(config, data, out_dir=out)
        Trainer(run, quiet=True, on_batch=on_batch).fit()
        return [run]

    def work(comm):
        run = Run(config, data, out_dir=out)
        Trainer(run, quiet=True, comm=comm, on_batch=on_batch).fit()
        return run
    return simulate(ranks, work)


def _first_gradient(config, data, ranks, tmp_path):
    """The gradient every rank applies in the first step (the model's buffer right after it)."""
    seen = []

    def grab(trainer):
        if trainer.run.step == 1:
            seen.append(np.concatenate([b.astype(np.float64) for b in trainer.run.model.grad_buffers]))
            trainer._stop = True
    _train(config, data, ranks, tmp_path, grab)
    return seen


VARIANTS = {"elbo": {}, "dynamic binarisation": {"binarize": "dynamic"},
            "iwae k=3": {"iw_samples": 3}, "dreg k=2": {"iw_samples": 2, "iw_gradient": "dreg"},
            "label context": {"conditional": "label", "binarize": "dynamic"},
            "mask context": {"conditional": "mask:bottom-half", "binarize": "dynamic"},
            "vampprior": {"prior": "vamp", "pseudo_inputs": 5}, "planar flow": {"flow": "planar:2"},
            # M2: 10 labelled rows a step (4 + 3 + 3) beside the 47 unlabelled ones
            "semi-supervised M2": {"semi_supervised": True, "labels_per_class": 5, "labelled_batch": 10,
                                   "binarize": "dynamic"}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_summed_gradient_of_the_ranks_rows_is_the_whole_batchs_to_float32_rounding(variant, tiny_data,
                                                                                       tmp_path):
    config = TrainConfig(**{**SMALL, "batch_size": 47, **VARIANTS[variant]})     # 47 rows: 16 + 16 + 15
    (one,) = _first_gradient(config, tiny_data, 0, tmp_path)
    ranks = _first_gradient(config, tiny_data, 3, tmp_path)
    assert len(ranks) == 3
    for g in ranks[1:]:
        np.testing.assert_array_equal(g, ranks[0])          # every rank applies the same bits
    scale = np.abs(one).max()
    assert np.abs(ranks[0] - one).max() <= 1e-5 * scale, np.abs(ranks[0] - one).max() / scale


def test_one_simulated_rank_trains_bit_for_bit_as_one_process(tiny_data, tmp_path):
    config = TrainConfig(**{**SMALL, "binarize": "dynamic", "epochs": 2})
    (one,) = _train(config, tiny_data, 0, tmp_path)
    (rank,) = _train(config, tiny_data, 1, tmp_path)
    np.testing.assert_array_equal(rank.model.params.buffer, one.model.params.buffer)
    assert [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for r in rank.history] == \
        [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for r in one.history]


def test_two_ranks_stay_equal_repeat_exactly_and_leave_the_generator_where_one_process_does(tiny_data, tmp_path):
    config = TrainConfig(**{**SMALL, "binarize": "dynamic", "epochs": 2})
    (one,) = _train(config, tiny_data, 0, tmp_path)
    first = _train(config, tiny_data, 2, tmp_path)
    again = _train(config, tiny_data, 2, tmp_path)
    for run in first[1:] + again:
        np.testing.assert_array_equal(run.model.params.buffer, first[0].model.params.buffer)
    assert same_stream(first[0].rng, one.rng)
    assert first[0].step == one.step
    # the same training to rounding: the epochs' mean losses agree closely
    for a, b in zip(first[0].history, one.history):
        assert a["train_total"] == pytest.approx(b["train_total"], rel=1e-3)


def test_a_loss_that_is_not_finite_on_one_rank_stops_every_rank_with_one_shared_error(tiny_data, tmp_path):
    config = TrainConfig(**SMALL)

    def work(comm):
        run = Run(config, tiny_data, out_dir=tmp_path / "diverged")
        if comm.rank == 1:
            run.model.params.buffer[:] = np.nan             # its weights make its rows' loss NaN
        with pytest.raises(TrainingDiverged, match="not finite on rank 1 of 2") as caught:
            Trainer(run, quiet=True, comm=comm).fit()
        return caught.value.every_rank

    assert simulate(2, work) == [True, True]


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step_and_rank_0_saves(tiny_data, tmp_path):
    config = TrainConfig(**{**SMALL, "epochs": 3})
    out = tmp_path / "stopped"

    def work(comm):
        def signal_rank_1(trainer):
            if comm.rank == 1 and trainer.run.step == 3:
                trainer._stop = True                        # as its handler does on Ctrl-C
        run = Run(config, tiny_data, out_dir=out)
        return Trainer(run, quiet=True, comm=comm, on_batch=signal_rank_1).fit(), run.step

    assert simulate(2, work) == [("interrupted", 4), ("interrupted", 4)]   # step 4 carried the signal
    assert Run.open(out, data=tiny_data).step == 4


def test_only_rank_0_writes(tiny_data, tmp_path):
    config = TrainConfig(**SMALL)
    out = tmp_path / "written"
    writes = []

    def work(comm):
        run = Run(config, tiny_data, out_dir=out)
        trainer = Trainer(run, quiet=True, comm=comm)
        trainer.write_history = lambda: writes.append(comm.rank)
        trainer.fit()
    simulate(2, work)
    assert writes == [0]
    assert (out / "checkpoint.npz").exists()


def test_m2_ranks_with_no_labelled_rows_still_train_the_one_process_run(tiny_data, tmp_path):
    """3 labelled rows a step over 4 ranks: one rank holds none of them (and the epoch's last
    unlabelled batch, 5 rows, leaves ranks with one or two)."""
    config = TrainConfig(**{**SMALL, "semi_supervised": True, "labels_per_class": 5, "labelled_batch": 3,
                            "batch_size": 23})
    (one,) = _train(config, tiny_data, 0, tmp_path)
    ranks = _train(config, tiny_data, 4, tmp_path)
    for run in ranks[1:]:
        assert all(np.array_equal(run.model.params[k], ranks[0].model.params[k]) for k in run.model.params)
    assert same_stream(ranks[0].rng, one.rng)
    assert ranks[0].history[0]["train_total"] == pytest.approx(one.history[0]["train_total"], rel=1e-3)


# --------------------------------------------------------------------------
# Evaluation split among ranks gives one process's figures, bit for bit
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ranks", [2, 3])
def test_the_ranks_elbo_and_importance_weighted_bound_are_one_processs(ranks, tiny_data, tmp_path):
    def estimates(comm):
        run = Run(TrainConfig(**SMALL), tiny_data)          # a model of each rank's own
        x = run.x_test
        return (elbo(run.vae, x, np.random.default_rng(1), batch_size=30, n_samples=2, comm=comm),
                log_likelihood(run.vae, x, 7, np.random.default_rng(2), batch_size=30, chunk=3, comm=comm))

    one_elbo, one_iw = estimates(None)
    for rank_elbo, rank_iw in simulate(ranks, estimates):
        assert rank_elbo == one_elbo
        np.testing.assert_array_equal(rank_iw, one_iw)


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_ranks_share_the_quadratures_tiles_and_get_one_processs_log_px(ranks, tiny_data):
    def exact(comm):
        run = Run(TrainConfig(**SMALL), tiny_data)          # a model of each rank's own
        return log_marginal(run.vae, run.x_test[:40], tol=1e-2, comm=comm)

    one = exact(None)
    for q in simulate(ranks, exact):
        np.testing.assert_array_equal(q.log_px, one.log_px)
        assert (q.points, q.levels, q.spacing, q.radius) == (one.points, one.levels, one.spacing, one.radius)
