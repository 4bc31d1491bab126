"""The Numba backend: choosing it, its on-disk cache and fallbacks, parity of a whole step,
and the hand-written GEMM serving the step."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from blockers import block_imports

import scratchvae as sv
from scratchvae import kernels

pytest.importorskip("numba")


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_BACKEND"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=full_env)


def test_environment_variable_and_default_choose_the_backend():
    for name in ("numpy", "numba"):
        out = _run("import scratchvae as sv; print(sv.get_backend())", SCRATCHVAE_BACKEND=name)
        assert out.stdout.strip() == name, out.stderr
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHVAE_BACKEND"}
    out = subprocess.run([sys.executable, "-c", "import scratchvae as sv, sys; "
                          "assert 'numba' not in sys.modules; print(sv.get_backend())"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.stdout.strip() == "numba", out.stderr


def test_numba_backend_without_numba_says_how_to_install():
    out = _run(block_imports("numba") + textwrap.dedent("""
        import scratchvae as sv
        assert sv.get_backend() == "numpy"
        try:
            sv.set_backend("numba")
        except ImportError as e:
            print(e)
    """))
    assert "pip install 'scratchvae[fast]'" in out.stdout, out.stderr


def test_kernels_compile_in_memory_when_no_cache_location_is_writable():
    out = _run("""
        import numba.core.caching as caching
        def refuse(self):
            raise PermissionError("read-only file system")
        caching._CacheLocator.ensure_cache_path = refuse
        import numpy as np
        from scratchvae.kernels import numba as backend
        z, kl, _ = backend.gaussian_latent(*(np.ones((3, 2), np.float32) for _ in range(3)))
        print(backend.CACHE_ENABLED, float(kl[0]))
    """)
    assert out.returncode == 0, out.stderr
    enabled, kl = out.stdout.split()
    assert enabled == "False"
    assert float(kl) == pytest.approx(0.5 * 2 * (1 + np.e - 1 - 1), rel=1e-6)   # mu=1, logvar=1, k=2


def test_a_read_only_package_falls_back_to_the_user_cache(tmp_path):
    out = _run("""
        import numba.core.caching as caching
        def refuse(self):
            raise PermissionError("read-only package directory")
        caching.InTreeCacheLocator.ensure_cache_path = refuse
        import numpy as np
        from scratchvae.kernels import numba as backend
        backend.gaussian_latent(*(np.ones((3, 2)) for _ in range(3)))
        print(backend.CACHE_ENABLED)
    """, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / ".cache"), NUMBA_CACHE_DIR="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    cached = [p.name for p in tmp_path.rglob("*.nbi")]
    assert any("gaussian_latent" in name or "_latent" in name for name in cached), cached


def test_warmup_and_describe():
    kernels.set_backend("numba")
    try:
        assert sv.warmup() >= 0
        info = sv.describe()
        assert info["backend"] == "numba" and "gemm" in info and info["numba_threads"] >= 1
    finally:
        kernels.set_backend(kernels.default_backend())


def _train(backend, steps=5):
    kernels.set_backend(backend)
    try:
        model = sv.VAE(784, [400], 20, seed=0)
        opt = sv.Adam(model.params)
        data = np.random.default_rng(1).random((256, 784), dtype=np.float32)
        rng = np.random.default_rng(2)
        losses = []
        for i in range(steps):
            l, g = model.loss_and_grads(data[(i % 2) * 128:(i % 2 + 1) * 128], rng=rng)
            opt.step(g)
            losses.append(l["total"])
        return model, losses
    finally:
        kernels.set_backend(kernels.default_backend())


def test_training_steps_agree_across_backends():
    a, la = _train("numpy")
    b, lb = _train("numba")
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for k in a.params:
        np.testing.assert_allclose(a.params[k], b.params[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_the_numba_gemm_can_serve_the_training_step():
    code = """
        import numpy as np, scratchvae as sv
        sv.set_backend("numba")
        m = sv.VAE(784, [400], 20, seed=0)
        x = np.random.default_rng(0).random((128, 784), dtype=np.float32)
        losses, grads = m.loss_and_grads(x, rng=np.random.default_rng(1))
        print(sv.describe()["gemm"], losses["total"], float(grads["enc.0.W"].sum()))
    """
    ours = _run(code, SCRATCHVAE_GEMM="numba")
    blas = _run(code, SCRATCHVAE_GEMM="blas")
    assert ours.returncode == 0 and blas.returncode == 0, ours.stderr + blas.stderr
    assert "gemm_numba" in ours.stdout and "BLAS" in blas.stdout
    np.testing.assert_allclose([float(v) for v in ours.stdout.split()[-2:]],
                               [float(v) for v in blas.stdout.split()[-2:]], rtol=1e-4)
    bad = _run(code, SCRATCHVAE_GEMM="mkl")
    assert "unknown GEMM 'mkl'; choose one of blas, numba, reference" in bad.stderr


def test_the_gemm_is_chosen_when_the_backend_is_set_not_at_import(monkeypatch):
    before = kernels.get_backend()
    try:
        monkeypatch.setenv("SCRATCHVAE_GEMM", "numba")
        kernels.set_backend("numba")
        assert "gemm_numba" in sv.describe()["gemm"]
        monkeypatch.delenv("SCRATCHVAE_GEMM")
        kernels.set_backend("numba")
        assert "BLAS" in sv.describe()["gemm"]
    finally:
        kernels.set_backend(before)


def _params_after_steps(gemm, threads, steps=3):
    import numba
    before = (kernels.get_backend(), kernels.get_gemm(), numba.get_num_threads())
    kernels.set_backend("numba", gemm=gemm)
    numba.set_num_threads(threads)
    try:
        model = sv.VAE(784, [400], 20, seed=0)
        opt = sv.Adam(model.params, max_grad_norm=50.0)
        rng = np.random.default_rng(0)
        x = rng.random((128, 784), dtype=np.float32)
        for _ in range(steps):
            opt.step(model.loss_and_grads(x, rng=rng)[1])
        return model.flat_params.copy(), sv.describe()
    finally:
        numba.set_num_threads(before[2])
        kernels.set_backend(*before[:2])


def test_one_pool_for_the_whole_step_gives_the_same_bits_for_any_thread_count():
    """With the hand-written GEMM every large kernel runs in Numba's pool; each splits
    its work so that every number is computed as the serial kernel computes it."""
    one, info = _params_after_steps("numba", 1)
    two, _ = _params_after_steps("numba", 2)
    again, _ = _params_after_steps("numba", 2)
    assert info["kernels_parallel"] is True and "gemm_numba" in info["gemm"]
    from scratchvae.kernels import gemm_numba
    tile = gemm_numba.tiling(np.float32)
    assert info["gemm_isa"] == gemm_numba.ISA in ("avx512", "avx2", "sse")
    assert info["gemm_tile_float32"] == f"6x{tile['NR']} ({tile['lanes']} lanes)"
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(two, again)


def test_one_pool_gives_the_same_bits_on_1_2_4_and_16_threads():
    """The issue's counts, on any machine: a pool of 16 threads runs on 2 cores too (oversubscribed,
    slower, the same arithmetic). Batches of 256, 219 and 182 rows: strips and chunks that do not
    divide evenly by any of the counts."""
    code = """
        import hashlib, numpy as np, numba, scratchvae as sv
        sv.set_backend("numba", gemm="numba")
        for threads in (1, 2, 4, 16):
            numba.set_num_threads(threads)
            m = sv.VAE(784, [400], 20, seed=0); opt = sv.Adam(m.params, max_grad_norm=50.0)
            rng = np.random.default_rng(0)
            x = rng.random((1024, 784), dtype=np.float32)
            for s in range(3):
                opt.step(m.loss_and_grads(x[s * 256:(s + 1) * 256 - 37 * s], rng=rng)[1])
            print(threads, numba.get_num_threads(), hashlib.sha256(m.flat_params.tobytes()).hexdigest())
    """
    out = _run(code, NUMBA_NUM_THREADS="16")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [r[:2] for r in rows] == [["1", "1"], ["2", "2"], ["4", "4"], ["16", "16"]], out.stdout
    assert len({r[2] for r in rows}) == 1, out.stdout


def test_the_pool_kernels_conform_to_the_reference():
    report = sv.check_backend("numba_pool", verbose=False)
    assert report.ok, str(report)


def test_the_numba_gemm_selects_the_one_pool_backend_and_switches_nothing_in_a_module():
    """``set_backend("numba", gemm="numba")`` is the numba_pool backend; ``set_backend("numba")``
    the serial kernels. Choosing either rebinds ``ops`` and nothing else: no module changes."""
    from scratchvae.kernels import gemm_numba, numba_pool
    from scratchvae.kernels import numba as serial
    before = (kernels.get_backend(), kernels.get_gemm())
    state = {m: dict(vars(m)) for m in (serial, numba_pool, gemm_numba)}
    try:
        kernels.set_backend("numba", gemm="numba")
        assert (kernels.get_backend(), kernels.get_gemm()) == ("numba_pool", "numba")
        assert kernels.ops.bias_activation is serial.bias_activation_pool is numba_pool.bias_activation
        assert kernels.ops.adam_update is serial.adam_update_pool and kernels.ops.gemm is gemm_numba.gemm
        assert sv.describe()["kernels_parallel"] is True
        kernels.set_backend("numba")
        assert kernels.ops.bias_activation is serial.bias_activation and kernels.ops.gemm is serial.gemm
        assert sv.describe()["kernels_parallel"] is False
        kernels.set_backend("numba_pool")                 # by its name: its own GEMM is the hand-written one
        assert kernels.ops.gemm is gemm_numba.gemm and "gemm_numba" in sv.describe()["gemm"]
    finally:
        kernels.set_backend(*before)
    for m, names in state.items():
        assert vars(m).keys() == names.keys() and all(vars(m)[k] is v for k, v in names.items()), m.__name__


def test_with_blas_the_same_thread_count_gives_the_same_bits():
    code = """
        import numpy as np, scratchvae as sv
        sv.set_backend("numba")
        m = sv.VAE(784, [400], 20, seed=0); opt = sv.Adam(m.params); rng = np.random.default_rng(0)
        x = rng.random((128, 784), dtype=np.float32)
        for _ in range(3):
            opt.step(m.loss_and_grads(x, rng=rng)[1])
        print(sv.describe()["kernels_parallel"], m.flat_params.astype(np.float64).sum().hex(),
              float(np.abs(m.flat_params).max()))
    """
    runs = [_run(code, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", SCRATCHVAE_GEMM="blas") for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout.split()[0] == "False"
    assert runs[0].stdout == runs[1].stdout


def _fresh_asm(dispatcher, *args, parallel=True):
    """The machine code of a fresh, uncached compile of ``dispatcher``'s function for ``args``,
    with the flags of the backend's kernels (the cache would hide it)."""
    import numba
    fresh = numba.njit(parallel=parallel, fastmath=set(kernels.FASTMATH), error_model="numpy", cache=False)(
        dispatcher.py_func)
    fresh(*args)
    return "\n".join(fresh.inspect_asm().values())


def _packed_float32_ops(asm):
    """How many packed float32 arithmetic instructions (vaddps, vfmadd231ps, ... on xmm/ymm/zmm) ``asm`` holds."""
    import re
    return len(re.findall(r"\bv(?:add|sub|mul|div|max|min|sqrt|fn?m(?:add|sub)\d+)ps\s[^\n]*[xyz]mm", asm))


def test_the_pool_kernels_bodies_are_vectorised_in_the_generated_code():
    """Inside a parallel region LLVM vectorised a loop over a view of the chunk, not one over
    bounds computed there (4-25x slower on 2 threads): every pool body must come out packed."""
    from scratchvae.kernels import numba as nbk
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 48)).astype(np.float32)
    out, d_b, bias = np.empty_like(a), np.empty(48, np.float32), np.zeros(48, np.float32)
    flat = rng.random(4096).astype(np.float32)
    relu, leaky = nbk._KERNELS[nbk.RELU], nbk._KERNELS[nbk.LEAKY_RELU]     # (leaky's backward serves all three)
    zero, rows = np.float32(0), np.zeros(1, np.float32)
    cases = {
        "bias_act_pool": (relu.bias_act_pool, a, bias, zero, out, 2),
        "backward_pool": (leaky.backward_pool, a, a, zero, out, d_b, True, rows, False, np.empty((4, 48), np.float32)),
        "bernoulli_pool": (nbk._bernoulli_pool, a, np.abs(a) / 4, d_b[:1].repeat(64), out, True, 2),
        "adam_pool": (nbk._adam_pool, flat.copy(), flat, flat.copy(), flat.copy(), *map(np.float32, (1e-3, 0.9,
                      0.999, 1e-8, 1.0, 1.0, 1.0)), 2),
    }
    for name, (kernel, *args) in cases.items():
        assert _packed_float32_ops(_fresh_asm(kernel, *args)) >= 4, f"{name}: its loop body is not vectorised"


def test_the_bernoulli_loss_is_one_vectorised_pass_without_libm_calls():
    """exp and log1p come from numba_math, in arithmetic LLVM vectorises: the float32 loss kernels,
    serial and pool, hold packed instructions and call neither libm's expf nor its log1pf."""
    import re

    from scratchvae.kernels import numba as nbk
    a = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    args = (a, np.abs(a) / 4, np.empty(64, np.float32), np.empty_like(a), True)
    for kernel, extra in ((nbk._bernoulli, ()), (nbk._bernoulli_pool, (2,))):
        asm = _fresh_asm(kernel, *args, *extra, parallel=bool(extra))
        calls = set(re.findall(r"\$(expf|exp|log1pf|log1p|logf|log)\b", asm))
        assert not calls, f"{kernel.py_func.__name__} calls libm: {calls}"
        assert _packed_float32_ops(asm) >= 4, f"{kernel.py_func.__name__} is not vectorised"


@pytest.mark.parametrize("pool", [False, True], ids=["serial", "pool"])
def test_in_place_calls_read_and_write_one_array_and_give_the_same_numbers(pool):
    """The training step calls bias_activation with out=a and activation_backward with out=d_y.
    Under two names LLVM cannot know the arrays are one and runs the loop unvectorised (3-5x
    slower), so the wrappers pass None for the second name: the kernels compiled for None are the
    ones that run, and they give the numbers of the out-of-place call."""
    from scratchvae.kernels import numba as nbk
    forward, backward = ((nbk.bias_activation_pool, nbk.activation_backward_pool) if pool
                         else (nbk.bias_activation, nbk.activation_backward))
    rng = np.random.default_rng(5)
    for shape in ((3, 7), (300, 129)):          # serial and pool variants alike (see POOL_MIN_ELEMENTS)
        a = rng.standard_normal(shape).astype(np.float32)
        b = rng.standard_normal(shape[1]).astype(np.float32)
        for activation in ("relu", "identity", "leaky_relu"):
            want = forward(a, b, activation, 0.1)
            in_place = a.copy()
            assert forward(in_place, b, activation, 0.1, out=in_place) is in_place
            assert np.array_equal(in_place, want)
            d_y = rng.standard_normal(shape).astype(np.float32)
            d_b, d_b_in_place = np.empty(shape[1], np.float32), np.empty(shape[1], np.float32)
            want = backward(want, d_y, activation, 0.1, d_b=d_b)
            d = d_y.copy()
            assert backward(in_place, d, activation, 0.1, out=d, d_b=d_b_in_place) is d
            assert np.array_equal(d, want) and np.array_equal(d_b_in_place, d_b)
    kernels = [nbk._KERNELS[nbk.RELU], nbk._KERNELS[nbk.LEAKY_RELU]]
    names = ("bias_act_pool", "backward_pool") if pool else ("bias_act", "backward")
    for kernel, name, position in ((kernels[0], names[0], 3), (kernels[1], names[1], 1)):
        signatures = getattr(kernel, name).signatures
        assert any(str(sig[position]) == "none" for sig in signatures), (name, signatures)


def test_the_piecewise_linear_activations_share_one_backward_kernel():
    """ReLU's and the identity's backward passes run leaky ReLU's kernel with their slope below zero
    (0 and 1): one compiled kernel, not three, and the numbers of their own derivatives."""
    from scratchvae.kernels import numba as nbk
    rng = np.random.default_rng(4)
    y = rng.standard_normal((19, 23)).astype(np.float32)
    y[0, :3] = (0.0, -0.0, np.nan)
    d_y = rng.standard_normal((19, 23)).astype(np.float32)
    for activation, derivative in (("relu", (y > 0).astype(np.float32)), ("identity", np.ones_like(y))):
        d_b = np.empty(23, np.float32)
        d_a = nbk.activation_backward(y, d_y, activation, 0.5, d_b=d_b)
        assert np.array_equal(d_a, d_y * derivative)
        assert np.allclose(d_b, (d_y * derivative).sum(axis=0), rtol=1e-6, atol=1e-6)
    assert nbk._KERNELS[nbk.RELU].backward is None and nbk._KERNELS[nbk.IDENTITY].backward is None
    assert nbk._KERNELS[nbk.LEAKY_RELU].backward.signatures


@pytest.mark.parametrize("shape", [(1, 5), (17, 31), (33, 784), (1024, 400)])
def test_activation_backward_gives_the_same_bits_serial_and_in_the_pool_on_any_thread_count(shape):
    """The bias gradient's column sums go through blocks of ROWS_PER_BLOCK rows, added in block order,
    in both variants: so the serial kernel, the pool's on 1 thread and on 2 agree to the bit."""
    import numba
    from scratchvae.kernels import numba as nbk
    rng = np.random.default_rng(3)
    y = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    d_y = rng.standard_normal(shape).astype(np.float32)
    w = rng.random(shape[0]).astype(np.float32)
    results = []
    for kernel, threads in ((nbk.activation_backward, 1), (nbk.activation_backward_pool, 1),
                            (nbk.activation_backward_pool, min(2, numba.config.NUMBA_NUM_THREADS))):
        numba.set_num_threads(threads)
        d_b = np.empty(shape[1], np.float32)
        results.append((kernel(y, d_y, "relu", 0.0, d_b=d_b, row_scale=w), d_b))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for d_a, d_b in results[1:]:
        assert np.array_equal(d_a, results[0][0]) and np.array_equal(d_b, results[0][1])
    assert np.allclose(results[0][1], (d_y * (y > 0) * w[:, None]).sum(axis=0), rtol=1e-5, atol=1e-5)


def test_the_pool_runs_its_own_fused_layer_forward_and_the_checker_holds_it_to_the_composition():
    from scratchvae.kernels import numba_pool
    report = sv.check_backend("numba_pool", verbose=False, quick=True)
    assert "gemm_bias_activation" in [r.name for r in report.results] and report.ok, str(report)
    before = (kernels.get_backend(), kernels.get_gemm())
    try:
        kernels.set_backend("numba_pool")
        assert kernels.ops.gemm_bias_activation is numba_pool.gemm_bias_activation
        assert sv.describe()["fused"] == "gemm_bias_activation"
        kernels.set_backend("numba_pool", gemm="reference")      # other products: its epilogue would skip them
        assert kernels.ops.gemm_bias_activation is not numba_pool.gemm_bias_activation
        assert sv.describe()["fused"].startswith("none")
    finally:
        kernels.set_backend(*before)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 13, 5), (130, 777, 401), (1024, 400, 784), (1024, 20, 400)])
def test_the_gemm_epilogue_gives_the_compositions_bits_on_any_thread_count(m, k, n):
    """Bias and activation applied to each thread's strip of C are the same additions and
    selections as bias_activation's pass after the product: the same numbers, so a pool run
    with the fused forward trains exactly as it did with two calls."""
    import numba
    from scratchvae.kernels import numba_pool
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        x, W = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        b = rng.standard_normal(n).astype(dtype)
        for activation in ("identity", "relu", "leaky_relu", "tanh"):
            want = numba_pool.bias_activation(numba_pool.gemm(x, W), b, activation, 0.2)
            for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
                numba.set_num_threads(threads)
                got = numba_pool.gemm_bias_activation(x, W, b, activation, 0.2, out=np.empty((m, n), dtype))
                assert np.array_equal(got, want), (dtype, activation, threads)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_the_gemm_epilogue_is_vectorised_in_the_generated_code():
    from scratchvae.kernels import gemm_numba
    c = np.ones((8, 48), np.float32)
    for code in gemm_numba.EPILOGUE_CODES.values():
        asm = _fresh_asm(gemm_numba._epilogue, c, np.ones(48, np.float32), code, np.float32(0.1), 0, 8, 0, 48,
                         parallel=False)
        assert _packed_float32_ops(asm) >= 3


def test_the_gemm_epilogue_refuses_what_it_cannot_apply_by_name():
    from scratchvae.kernels import gemm_numba
    x, W = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="the epilogue applies identity, relu, leaky_relu, not 'tanh'"):
        gemm_numba.gemm_bias_activation(x, W, np.zeros(5, np.float32), "tanh", 0.0)
    with pytest.raises(ValueError, match=r"the bias must be a \(5,\) float32 array, got float32 of shape \(4,\)"):
        gemm_numba.gemm_bias_activation(x, W, np.zeros(4, np.float32), "relu", 0.0)
