"""scratchvae imports, loads and trains with NumPy alone: Numba and Matplotlib (and, for the command, mpi4py)
made unimportable."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from blockers import block_imports

DATA = Path(__file__).resolve().parent / "data" / "v0.1.0"


def test_loss_and_adam_step_run_without_numba_and_matplotlib():
    script = block_imports("numba", "llvmlite", "matplotlib") + textwrap.dedent("""
        import sys
        import numpy as np
        import scratchvae as sv
        model = sv.VAE(784, [400], 20, seed=0)
        rng = np.random.default_rng(0)
        x = rng.random((32, 784), dtype=np.float32)
        losses, grads = model.loss_and_grads(x, rng=rng)
        sv.Adam(model.params).step(grads)
        assert np.isfinite(losses["total"])
        assert not any(m.split(".")[0] in ("numba", "matplotlib") for m in sys.modules)
        print("ok", sv.get_backend())
    """)
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_BACKEND"}   # the default
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok numpy"


def test_load_and_the_train_command_run_without_numba_and_matplotlib(tmp_path):
    """The NumPy-only core: ``sv.load`` a checkpoint, ``scratchvae train`` a run (its first
    line names the kernels that run; the pictures are skipped with a note; no MPI in one process)."""
    script = block_imports("numba", "llvmlite", "matplotlib", "mpi4py") + textwrap.dedent(f"""
        import sys
        import numpy as np
        import scratchvae as sv
        from scratchvae.run import cli
        model = sv.load({str(DATA / "vae-checkpoint.npz")!r})
        mu, _ = model.encode(np.load({str(DATA / "bars.npy")!r})[:4].reshape(4, -1))
        assert mu.shape == (4, 2)
        code = cli.main(["train", "--dataset", {str(DATA / "bars.npy")!r}, "--hidden", "8", "--latent", "2",
                         "--epochs", "1", "--batch-size", "16", "--out", {str(tmp_path / "run")!r}])
        assert code == 0
        assert not any(m.split(".")[0] in ("numba", "matplotlib", "mpi4py") for m in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_BACKEND"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    first = out.stderr.splitlines()[0]
    assert first.startswith("training VAE(36-8-2") and first.endswith("kernels: numpy, gemm numpy.matmul (BLAS)")
    assert "no pictures: plots need Matplotlib" in out.stderr
    assert (tmp_path / "run" / "checkpoint.npz").is_file()
