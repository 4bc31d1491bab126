"""Steady-state training allocates no arrays: workspaces and flat buffers are reused."""
import tracemalloc

import numpy as np
import pytest

import scratchvae as sv


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_pixel"])
def test_training_steps_allocate_no_new_arrays(backend, likelihood):
    if backend == "numpy":
        pytest.skip("the NumPy reference kernels are written for clarity and make temporaries")
    model = sv.VAE(784, [400], 20, likelihood=likelihood, seed=0)
    opt = sv.Adam(model.params, max_grad_norm=100.0)
    rng = np.random.default_rng(0)
    x = rng.random((128, 784), dtype=np.float32)
    for _ in range(3):                        # first steps make the workspace
        opt.step(model.loss_and_grads(x, rng=rng)[1])
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(20):
            opt.step(model.loss_and_grads(x, rng=rng)[1])
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the smallest array of the step, one (128, 20) float32 block, is 10 KB; Python's own
    # bookkeeping (the losses dict, the caches' tuples) stays near 2 KB
    assert peak - start < 8_000, f"a step allocated {peak - start} bytes at its peak"
    assert now - start < 4_000              # what the last step left alive, not growth
