"""The roofline report: it runs, times every kernel the step calls, and its table is well formed.
(Its figures are measurements: no test asserts a speed.)"""
import re

import pytest

import scratchvae as sv
from scratchvae import kernels
from scratchvae.run import cli


def test_profile_times_every_kernel_of_the_step_and_restores_the_backend():
    before = kernels.get_backend()
    report = sv.profile("numpy", batch_size=16, input_dim=36, hidden=[8], latent_dim=2, seconds=0.2)
    assert kernels.get_backend() == before and kernels.ops.gemm is not None
    used = {r.kernel for r in report.rows}
    # the training loop's step: its batches are not scanned again (no min_max)
    assert used == {"gemm", "bias_activation", "activation_backward", "bernoulli_nll", "gaussian_latent",
                    "gaussian_latent_backward", "adam_update"}
    gemms = {r.shape for r in report.rows if r.kernel == "gemm"}
    assert "16x36x8 NN" in gemms and "36x16x8 TN" in gemms          # x @ W and x.T @ d_a of enc.0
    assert all(r.calls > 0 and r.seconds > 0 and r.bytes > 0 for r in report.rows)
    # the products' FLOP per example: 2 k n for each of the 3 x 5 - 1 products of this model
    layers = [(36, 8), (8, 2), (8, 2), (2, 8), (8, 36)]
    want = sum(2 * k * n * (3 if i else 2) for i, (k, n) in enumerate(layers))
    assert report.gemm_flop_per_example == pytest.approx(want)
    assert report.peak_gflops > 0 and report.bandwidth_gbs > 0 and report.examples_per_s > 0


def test_the_report_prints_one_well_formed_row_per_kernel_and_shape(capsys):
    code = cli.main(["bench", "--backend", "numpy", "--batch-size", "8", "--input-dim", "16", "--hidden", "6",
                     "--latent", "2", "--seconds", "0.2"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("roofline of one training step: VAE 16-6-2, batch 8, backend numpy")
    header = out[3].split()
    assert header[:2] == ["kernel", "shape"]
    rows = [line for line in out[5:] if line and not line.startswith(("kernels ", "step alone", "note"))]
    assert len(rows) >= 12
    for line in rows:
        m = re.match(r"(\w+)\s+(\S+(?: \S+)*?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(-|[\d.]+)\s+([\d.]+)\s+"
                     r"(\d+)% (peak|bandwidth)$", line)
        assert m, line
        assert (m.group(6) == "-") == (m.group(1) not in ("gemm", "gemm_bias_activation"))   # products only
    assert re.search(r"step alone: \d+ us = [\d,]+ examples/s = [\d.]+% of the GEMM limit", "\n".join(out))


def test_a_fused_kernel_the_backend_runs_is_timed_as_one_call_with_its_product_counted():
    """numba_pool runs the layers' forward as gemm_bias_activation: the report times it (not its parts,
    which do not exist there) and counts its product, so the GEMM limit is the unfused step's."""
    pytest.importorskip("numba")
    small = dict(batch_size=16, input_dim=36, hidden=[8], latent_dim=2, seconds=0.2)
    fused, composed = sv.profile("numba_pool", **small), sv.profile("numpy", **small)
    rows = {(r.kernel, r.shape) for r in fused.rows}
    assert ("gemm_bias_activation", "16x36x8 NN + b, relu") in rows
    assert ("gemm_bias_activation", "16x8x36 NN + b, identity") in rows
    assert not any(kernel == "bias_activation" for kernel, _ in rows)   # every forward here is fused
    assert "gemm_bias_activation" not in {r.kernel for r in composed.rows}  # a composition: its parts are timed
    assert fused.gemm_flop_per_example == pytest.approx(composed.gemm_flop_per_example)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sv.profile(batch_size=0)
    with pytest.raises(ValueError, match="unknown kernel backend"):
        sv.profile("nope")
