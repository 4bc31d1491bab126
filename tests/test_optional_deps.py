"""scratchvae imports and trains with NumPy alone: Numba and Matplotlib made unimportable."""
import os
import subprocess
import sys
import textwrap

from blockers import block_imports


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
