"""Steady-state training allocates no arrays: workspaces, scratch and flat buffers are reused."""
import importlib.util
import tracemalloc

import numpy as np
import pytest

import scratchvae as sv
from scratchvae import kernels

# The compiled backend's promise. The reference backend is the textbook and allocates by
# design; the numpy backend keeps its large temporaries in the caller's scratch, but NumPy's
# ufuncs still allocate their own iterator buffers (about 32 KB per broadcasting call).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="Numba is not installed")


def _peak_of_steps(step, steps=20):
    for _ in range(3):                        # the first steps make the workspace and scratch
        step()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(steps):
            step()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, now - start


@pytest.mark.parametrize("likelihood,context_dim", [("bernoulli", 0), ("gaussian_pixel", 0), ("bernoulli", 10)])
def test_training_steps_allocate_no_new_arrays(likelihood, context_dim):
    before = kernels.get_backend()
    kernels.set_backend("numba")
    try:
        model = sv.VAE(784, [400], 20, likelihood=likelihood, seed=0, context_dim=context_dim)
        opt = sv.Adam(model.params, max_grad_norm=100.0)
        rng = np.random.default_rng(0)
        x = rng.random((128, 784), dtype=np.float32)
        c = np.eye(context_dim, dtype=np.float32)[rng.integers(0, context_dim, 128)] if context_dim else None
        peak, left = _peak_of_steps(lambda: opt.step(model.loss_and_grads(x, rng=rng, c=c)[1]))
    finally:
        kernels.set_backend(before)
    # the smallest array of the step, one (128, 20) float32 block, is 10 KB; Python's own
    # bookkeeping (the losses dict, the caches' tuples) and the (128,) float32 vectors
    # NumPy's reductions hand back stay near 2 KB
    assert peak < 8_000, f"a step allocated {peak} bytes at its peak"
    assert left < 4_000                      # what the last step left alive, not growth
