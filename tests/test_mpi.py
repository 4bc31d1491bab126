"""``mpiexec -n 2 scratchvae ...`` for real: two processes, MPICH, mpi4py.

They need the MPI extra (``pip install -e '.[mpi]'``; the test extra has it). In CI
(``CI=true``) a missing MPI fails them; elsewhere they are skipped, saying what to install.
Each run trains a 64-16-2 model on 180 images of 8x8 in batches of 60 (3 steps an epoch).
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scratchvae.run import Run

SMALL = ["--hidden", "16", "--latent", "2", "--batch-size", "60", "--no-plots"]
LIMIT = 120                         # seconds: every run here ends well within it, or it hangs
FAULTY = '''
import os, signal, sys
from scratchvae.distributed import data_parallel
if os.environ.get("PMI_RANK") == "1":
    step, calls = data_parallel.DataParallelStep.__call__, []
    def failing(self, *args):
        calls.append(1)
        if len(calls) == 5:                 # the second step of epoch 2
            if sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(28, "No space left on device (injected)")
        return step(self, *args)
    data_parallel.DataParallelStep.__call__ = failing
from scratchvae.run.cli import main
sys.exit(main(sys.argv[2:]))
'''


def mpiexec():
    """The mpiexec beside this Python (the mpich wheel puts it there) or on PATH."""
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if found is None or importlib.util.find_spec("mpi4py") is None:
        message = "needs mpi4py and an MPI runtime: pip install -e '.[mpi]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (the test extra installs them)")
        pytest.skip(message)
    return found


def ranks(n, *argv, cwd, script=None, **kw):
    """``mpiexec -n n python -m scratchvae argv`` (or ``python -c script argv``): the finished process."""
    command = [sys.executable, "-m", "scratchvae"] if script is None else [sys.executable, "-c", script]
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_DEBUG"}
    return subprocess.run([mpiexec(), "-n", str(n), *command, *map(str, argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=LIMIT, env=env, **kw)


def one(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "scratchvae", *map(str, argv)], cwd=cwd, capture_output=True,
                          text=True, timeout=LIMIT)


def params(run_dir):
    return Run.open(run_dir).model.params.buffer.copy()


def train(n, out, data_file, tmp_path, *extra):
    done = ranks(n, "train", "--dataset", data_file, *SMALL, "--out", out, *extra, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


def test_two_ranks_train_the_one_process_run_to_rounding_and_repeat_bit_for_bit(data_file, tmp_path):
    done = train(2, "a", data_file, tmp_path, "--epochs", "2", "--binarize", "dynamic")
    assert "2 ranks x 1 thread" in done.stderr
    assert done.stderr.count("epoch ") == 2                     # rank 0 alone prints
    assert len(done.stderr.split("ranks (host:pid): ")[1].split("\n")[0].split(", ")) == 2
    train(2, "b", data_file, tmp_path, "--epochs", "2", "--binarize", "dynamic")
    single = one("train", "--dataset", data_file, *SMALL, "--out", "c", "--epochs", "2", "--binarize", "dynamic",
                 cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    np.testing.assert_array_equal(params(tmp_path / "a"), params(tmp_path / "b"))
    a, c = Run.open(tmp_path / "a"), Run.open(tmp_path / "c")
    assert a.step == c.step == 6
    assert np.array_equal(a.rng.random(9, dtype=np.float32), c.rng.random(9, dtype=np.float32))
    assert np.array_equal(a.rng.standard_normal(5), c.rng.standard_normal(5))
    # six Adam steps apart only in the order the gradient's float32 terms were added
    assert np.abs(a.model.params.buffer - c.model.params.buffer).max() < 1e-3
    for x, y in zip(a.history, c.history):
        assert x["train_total"] == pytest.approx(y["train_total"], rel=1e-4)


def test_resume_under_mpi_with_the_same_ranks_is_bit_for_bit_and_with_other_counts_continues(data_file, tmp_path):
    train(2, "straight", data_file, tmp_path, "--epochs", "2")
    train(2, "halves", data_file, tmp_path, "--epochs", "1")
    shutil.copytree(tmp_path / "halves", tmp_path / "alone")
    resumed = ranks(2, "train", "--resume", "halves", "--epochs", "2", "--no-plots", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_array_equal(params(tmp_path / "halves"), params(tmp_path / "straight"))
    alone = one("train", "--resume", "alone", "--epochs", "2", "--no-plots", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert Run.open(tmp_path / "alone").epoch == 2


@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_rank_that_fails_ends_every_rank_quickly_and_the_last_checkpoint_stays_whole(how, data_file,
                                                                                      tmp_path):
    start = time.monotonic()
    done = ranks(2, how, "train", "--dataset", data_file, *SMALL, "--out", "r", "--epochs", "3", cwd=tmp_path,
                 script=FAULTY)
    assert done.returncode != 0
    assert time.monotonic() - start < 60
    if how == "raise":
        assert "scratchvae: error: rank 1 of 2: [Errno 28] No space left on device (injected)" in done.stderr, (
            done.stdout + done.stderr)
    else:       # the launcher reports the killed process (on stdout) by its pid, which rank 0 listed
        rank_1 = done.stderr.split("ranks (host:pid): ")[1].split("\n")[0].split(", ")[1]
        pid = rank_1.split(":")[-1]
        assert f"PID {pid}" in done.stdout and "Killed (signal 9)" in done.stdout, done.stdout
    assert Run.open(tmp_path / "r").epoch == 1                    # epoch 1's checkpoint, whole


def test_ctrl_c_on_mpiexec_saves_one_checkpoint_and_ends_every_rank(data_file, tmp_path):
    command = [mpiexec(), "-n", "2", sys.executable, "-m", "scratchvae", "train", "--dataset", str(data_file),
               *SMALL, "--out", "r", "--epochs", "100000", "-q"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + LIMIT
        while not (tmp_path / "r" / "history.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)                                         # until epoch 1 is saved: training runs
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted: checkpoint saved" in err
    run = Run.open(tmp_path / "r")
    assert run.epoch >= 1 and run.step == run.epoch * 3 + run.batch


def test_ranks_given_different_options_refuse_to_start_and_say_what_differs(data_file, tmp_path):
    base = [sys.executable, "-m", "scratchvae", "train", "--dataset", str(data_file), *SMALL, "--out", "r"]
    done = subprocess.run([mpiexec(), "-n", "1", *base, "--seed", "0", ":", "-n", "1", *base, "--seed", "1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "rank 1's option seed 1 differs from rank 0's 0" in lines[0]
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


def test_two_ranks_evaluate_with_one_processs_figures(data_file, tmp_path):
    train(2, "r", data_file, tmp_path, "--epochs", "1")
    shared = ranks(2, "evaluate", "r", "--iw-samples", "7", "--exact", cwd=tmp_path)
    alone = one("evaluate", "r", "--iw-samples", "7", "--exact", cwd=tmp_path)
    assert shared.returncode == alone.returncode == 0, shared.stderr
    assert "log p(x) >=" in shared.stdout and "(exact: quadrature" in shared.stdout
    assert shared.stdout == alone.stdout


def test_a_command_that_does_not_share_its_work_refuses_ranks_in_one_line(data_file, tmp_path):
    train(2, "r", data_file, tmp_path, "--epochs", "1")
    done = ranks(2, "sample", "r", "-n", "4", "-o", "s.png", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "scratchvae: error: scratchvae sample runs in one process; under mpiexec only train and evaluate "
        "share their work among ranks: run it without mpiexec"]
    assert not (tmp_path / "s.png").exists()


def test_ranks_without_mpi4py_say_how_to_install_the_extra(tmp_path):
    script = ("import sys; sys.modules['mpi4py'] = None\n"
              "from scratchvae.run.cli import main; sys.exit(main(['train', '--epochs', '1']))")
    env = {**os.environ, "PMI_SIZE": "2", "PMI_RANK": "0"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=LIMIT, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "scratchvae: error: this process was started as one of 2 MPI ranks, but mpi4py cannot be imported "
        "(import of mpi4py halted; None in sys.modules); install the extra on every machine: "
        "pip install 'scratchvae[mpi]' (mpi4py and an MPI runtime)"]


def test_ranks_that_mpi4pys_mpi_does_not_see_as_one_job_are_refused(tmp_path):
    mpiexec()
    env = {**os.environ, "OMPI_COMM_WORLD_SIZE": "2"}       # Open MPI's launcher, MPICH's mpi4py: a singleton
    done = subprocess.run([sys.executable, "-m", "scratchvae", "train", "--epochs", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=LIMIT, env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "scratchvae: error: the launcher started 2 ranks, but mpi4py's MPI sees 1: this mpiexec belongs to "
        "another MPI than the one mpi4py was built with; start the ranks with the mpiexec of mpi4py's MPI "
        "(python -m mpi4py --mpi-library names it)")
    assert not (tmp_path / "runs").exists()
