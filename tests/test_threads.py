"""The thread tuner (kernels/threads.py): it keeps the fastest thread count as the load changes,
and the training loop uses it only where the thread count changes no number."""
import numpy as np
import pytest

from scratchvae import kernels
from scratchvae.kernels.threads import ThreadTuner


class FakeMachine:
    """A clock and a thread setting: a step takes ``seconds[threads]`` of fake time per example
    (10 examples a step: a step at 1.0 s per example advances the clock 10 s)."""

    def __init__(self, seconds):
        self.seconds, self.now, self.threads, self.calls = dict(seconds), 0.0, None, []

    def clock(self):
        return self.now

    def set_threads(self, n):
        self.threads = n
        self.calls.append(n)

    def train(self, tuner, steps, examples=10):
        for _ in range(steps):
            with tuner.step(examples):
                self.now += self.seconds[self.threads] * examples


def tuner_on(machine, max_threads=2, **options):
    options = dict(dict(warmup=0, probe_steps=3, period=1e9, slowdown=1.25), **options)
    return ThreadTuner(max_threads, machine.set_threads, clock=machine.clock, **options)


def test_on_a_quiet_machine_it_keeps_every_thread():
    m = FakeMachine({2: 1.0, 1: 1.8})
    t = tuner_on(m)
    m.train(t, 50)
    assert t.threads == 2 and m.threads == 2
    assert len(t.log) == 1 and t.log[0] == (2, {2: 1.0, 1: 1.8})


def test_a_busy_neighbour_makes_it_drop_to_the_faster_count_and_return_when_it_leaves():
    m = FakeMachine({2: 1.0, 1: 1.8})
    t = tuner_on(m, period=200.0)
    m.train(t, 10)
    assert t.threads == 2
    m.seconds = {2: 3.0, 1: 1.9}            # a neighbour takes half of one core: 2 threads wait for it
    m.train(t, 10)
    assert t.threads == 1 and m.threads == 1, t.log
    assert t.log[-1][1] == {2: 3.0, 1: 1.9}
    m.seconds = {2: 1.0, 1: 1.8}            # it leaves: 1 thread is no slower, only the period re-measures
    m.train(t, 10)
    assert t.threads == 1
    m.train(t, 40)
    assert t.threads == 2 and t.log[-1] == (2, {2: 1.0, 1: 1.8}), t.log


def test_only_time_in_steps_counts_toward_the_period():
    m = FakeMachine({2: 1.0, 1: 1.8})
    t = tuner_on(m, period=100.0)
    m.train(t, 6)                           # the first measurement
    calls = len(m.calls)
    m.now += 10_000.0                       # an evaluation between epochs
    m.train(t, 5)                           # 50 s of steps: half a period
    assert len(t.log) == 1 and len(m.calls) == calls
    m.train(t, 5 + 6)                       # the other half, then a measurement
    assert len(t.log) == 2


def test_warmup_steps_and_steps_that_raise_are_not_timed():
    m = FakeMachine({2: 1.0, 1: 1.8})
    t = tuner_on(m, warmup=2)
    m.seconds[2] = 1000.0                    # compiling: the first two steps are slow
    m.train(t, 2)
    m.seconds[2] = 1.0
    with pytest.raises(FloatingPointError):
        with t.step(10):
            m.now += 5000.0
            raise FloatingPointError("nan")
    m.train(t, 10)
    assert t.log[0] == (2, {2: 1.0, 1: 1.8})


def test_it_compares_a_count_with_its_half_and_its_double_only():
    m = FakeMachine({16: 1.0, 8: 0.8, 4: 0.7, 2: 0.9, 1: 2.0})
    t = tuner_on(m, max_threads=16, period=0.0)
    assert t.candidates() == [16, 8]
    m.train(t, 6)
    assert t.threads == 8 and t.candidates() == [16, 8, 4]
    m.train(t, 9)
    assert t.threads == 4
    m.train(t, 9)
    assert t.threads == 4 and set(m.calls) == {16, 8, 4, 2}     # 1 thread was never worth a try


def test_one_thread_is_never_measured():
    m = FakeMachine({1: 1.0})
    t = tuner_on(m, max_threads=1, period=0.0)
    m.train(t, 20)
    assert m.calls == [1] and t.log == []


def test_a_bad_maximum_is_refused():
    with pytest.raises(ValueError, match="max_threads must be >= 1"):
        ThreadTuner(0, lambda n: None)


def test_only_a_backend_whose_numbers_do_not_depend_on_threads_is_tuned():
    before = (kernels.get_backend(), kernels.get_gemm())
    try:
        for name, gemm in (("numpy", None), ("numba", None), ("numba_pool", "blas")):
            kernels.set_backend(name, gemm=gemm)
            assert kernels.thread_tuner() is None, (name, gemm)
        kernels.set_backend("numba", gemm="numba")
        tuner = kernels.thread_tuner()
        assert isinstance(tuner, ThreadTuner) and tuner.max_threads == kernels.active_module().max_threads()
    finally:
        kernels.set_backend(*before)


def _train(tmp_path, monkeypatch, tuner_factory, name):
    from scratchvae.run import Run, TrainConfig, Trainer
    from scratchvae.run import train as train_module
    monkeypatch.setattr(train_module, "thread_tuner", tuner_factory)
    rng = np.random.default_rng(0)
    x = (rng.random((1000, 784)) < 0.3).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    # products and kernels large enough to be split over the threads
    cfg = TrainConfig(dataset=str(path), epochs=2, batch_size=100, hidden=[256], latent_dim=8, seed=3)
    run = Run(cfg, out_dir=tmp_path / name)
    trainer = Trainer(run, quiet=True)
    trainer.fit()
    return run.model.flat_params.copy(), trainer.tuner


def test_switching_threads_every_step_changes_no_number_of_a_training_run(tmp_path, monkeypatch):
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 CPUs to switch between 1 and 2 threads")
    before = (kernels.get_backend(), kernels.get_gemm())
    kernels.set_backend("numba_pool")
    seen = []
    module = kernels.active_module()

    def restless():              # measures all the time: 1 and 2 threads take turns step by step
        def set_threads(n):
            seen.append(n)
            module.set_threads(n)
        return ThreadTuner(2, set_threads, warmup=0, probe_steps=1, period=0.0)

    def one_thread():
        module.set_threads(1)
        return None

    try:
        switching, tuner = _train(tmp_path, monkeypatch, restless, "switching")
        fixed, _ = _train(tmp_path, monkeypatch, one_thread, "fixed")
    finally:
        module.set_threads(numba.config.NUMBA_NUM_THREADS)
        kernels.set_backend(*before)
    assert {1, 2} <= set(seen) and len(tuner.log) >= 5
    np.testing.assert_array_equal(switching, fixed)


def test_describe_says_what_was_chosen():
    m = FakeMachine({2: 1.0, 1: 1.8})
    t = tuner_on(m)
    assert t.describe() == "2 of 2, not measured"
    m.train(t, 6)
    assert t.describe() == "2 of 2, chosen by timing steps (1 measurement)"


def test_the_train_command_says_how_many_threads_it_chose(capsys, data_file, tmp_path):
    from cli_helpers import SMALL, run
    before = (kernels.get_backend(), kernels.get_gemm())
    try:
        kernels.set_backend("numba_pool")
        code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "3", "--no-plots",
                           "--out", tmp_path / "pool")          # 18 steps: 2 to compile, 6 to measure
        assert code == 0, err
        assert "threads: " in err and "chosen by timing steps" in err, err
        kernels.set_backend("numba")                 # its products may not change threads: no such line
        code, _, err = run(capsys, "train", "--dataset", data_file, *SMALL, "--epochs", "1", "--no-plots",
                           "--out", tmp_path / "blas")
        assert code == 0 and "threads: " not in err, err
    finally:
        kernels.set_backend(*before)
