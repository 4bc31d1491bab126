"""The hand-written Numba GEMM (kernels/gemm_numba.py) against np.matmul.

Every layout (NN, NT, TN, TT), both dtypes, shapes chosen to hit every edge
of the blocking: 1, odd and prime sizes, the register tile (6 x 16 float32,
6 x 8 float64) and the vector width (8, 4) plus or minus one, the narrow
12-row kernel (n = 16 + 4), the cache blocks (KC, MC) plus or minus one, the
model's own shapes and one large case; accumulate, out, other memory layouts,
NaN/inf, errors, per-thread buffers, and the vectorised kernel in the machine
code. Compiles four specialisations (serial and parallel, float32 and
float64): about 16 s the first time, then Numba's cache loads them in 0.4 s.
"""
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

pytest.importorskip("numba")

from scratchvae.kernels import gemm_numba as G  # noqa: E402


LAYOUTS = [(False, False), (False, True), (True, False), (True, True)]
LAYOUT_IDS = ["NN", "NT", "TN", "TT"]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}

T32, T64 = G.tiling(np.float32), G.tiling(np.float64)
# (m, k, n)
SHAPES = [
    (1, 1, 1), (1, 7, 13), (13, 7, 1), (7, 1, 13), (2, 3, 5), (5, 2, 3),
    (6, 8, 16), (5, 7, 15), (7, 9, 17),                     # MR, lanes, NR +- 1
    (11, 17, 20), (12, 16, 20), (13, 15, 4), (25, 33, 8),   # the 12-row narrow kernel
    (24, 9, 12), (18, 5, 28),
    (127, 61, 257), (31, 101, 37),                          # primes
    (T32["MC"] + 1, T32["KC"] + 1, 33), (T32["MC"] - 1, T32["KC"] - 1, 47),
    (T64["MC"] + 1, T64["KC"] + 1, 9), (50, 2 * T32["KC"] + 3, 19),
]
MODEL = [(128, 784, 400), (128, 400, 20), (128, 20, 400), (128, 400, 784),
         (784, 128, 400), (400, 128, 20), (20, 128, 400)]


def operands(rng, m, k, n, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def reference(a, b, trans_a, trans_b):
    """The product in float64, from the same (rounded) inputs."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def assert_close(got, want, dtype):
    """Error relative to the norm of the result (what a GEMM can promise)."""
    assert got.shape == want.shape
    err = np.linalg.norm(got - want)
    scale = max(np.linalg.norm(want), np.finfo(np.float64).tiny)
    assert err <= RTOL[dtype] * scale, f"relative error {err / scale:.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", LAYOUTS, ids=LAYOUT_IDS)
def test_every_layout_matches_matmul_on_awkward_shapes(dtype, trans_a, trans_b):
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES + MODEL:
        a, b = operands(rng, m, k, n, trans_a, trans_b, dtype)
        got = G.gemm_serial(a, b, trans_a=trans_a, trans_b=trans_b)
        assert got.dtype == dtype and got.flags.c_contiguous
        assert_close(got, reference(a, b, trans_a, trans_b), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", LAYOUTS, ids=LAYOUT_IDS)
def test_parallel_strips_match_matmul(dtype, trans_a, trans_b):
    """Strips along n (n >= m) and along m, 2 and 3 of them (more than Numba
    may have threads: prange then runs them in turn), and more strips than
    tiles."""
    rng = np.random.default_rng(1)
    for m, k, n in [(37, 29, 131), (131, 29, 37), (128, 400, 20), (20, 128, 400), (3, 5, 4), (300, 257, 50)]:
        a, b = operands(rng, m, k, n, trans_a, trans_b, dtype)
        want = reference(a, b, trans_a, trans_b)
        for threads in (2, 3):
            got = G.gemm_parallel(a, b, trans_a=trans_a, trans_b=trans_b, threads=threads)
            assert_close(got, want, dtype)


def test_one_large_product_every_layout_and_the_default_entry_point():
    rng = np.random.default_rng(2)
    m, k, n = 300, 800, 500
    for trans_a, trans_b in LAYOUTS:
        a, b = operands(rng, m, k, n, trans_a, trans_b, np.float32)
        assert_close(G.gemm(a, b, trans_a=trans_a, trans_b=trans_b), reference(a, b, trans_a, trans_b),
                     np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_accumulate_adds_to_out_and_out_is_returned(dtype):
    rng = np.random.default_rng(3)
    for (m, k, n), (trans_a, trans_b) in zip([(7, 300, 20), (64, 33, 17), (130, 600, 40), (5, 3, 2)],
                                             LAYOUTS):
        a, b = operands(rng, m, k, n, trans_a, trans_b, dtype)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        for fn in (G.gemm_serial, lambda *x, **kw: G.gemm_parallel(*x, threads=2, **kw)):
            out = c0.copy()
            got = fn(a, b, out, trans_a=trans_a, trans_b=trans_b, accumulate=True)
            assert got is out
            assert_close(out, c0 + reference(a, b, trans_a, trans_b), dtype)
            out = c0.copy()
            assert fn(a, b, out, trans_a=trans_a, trans_b=trans_b) is out     # overwrite
            assert_close(out, reference(a, b, trans_a, trans_b), dtype)


def test_empty_dimensions():
    a = np.ones((3, 0), np.float32)
    b = np.ones((0, 4), np.float32)
    np.testing.assert_array_equal(G.gemm(a, b), np.zeros((3, 4), np.float32))     # k = 0: zeros
    out = np.full((3, 4), 7, np.float32)
    G.gemm(a, b, out, accumulate=True)                                             # += nothing
    np.testing.assert_array_equal(out, 7)
    assert G.gemm(np.ones((0, 5)), np.ones((5, 4))).shape == (0, 4)
    assert G.gemm(np.ones((3, 5)), np.ones((5, 0))).shape == (3, 0)


def test_other_memory_layouts_give_the_right_product():
    """F-contiguous inputs (transposed views) are read without a copy,
    strided ones are copied: the product is right either way."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 30))
    w = rng.standard_normal((50, 30))
    want = x @ w.T
    assert_close(G.gemm(x, w.T), want, np.float64)                         # F-contiguous b
    assert_close(G.gemm(x, np.asfortranarray(w), trans_b=True), want, np.float64)
    assert_close(G.gemm(np.asfortranarray(x.T), w, trans_a=True, trans_b=True), want, np.float64)
    big = rng.standard_normal((80, 60))
    assert_close(G.gemm(big[::2, ::2], w.T), big[::2, ::2] @ w.T, np.float64)  # strided: copied
    assert_close(G.gemm(x[:, :20], big[:20, 1::3]), x[:, :20] @ big[:20, 1::3], np.float64)


def test_nan_and_inf_propagate():
    """fastmath without nnan/ninf: NaN and infinity reach the result as in NumPy."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((20, 30)).astype(np.float32)
    b = rng.standard_normal((30, 21)).astype(np.float32)
    a[3, 7] = np.nan
    a[11, 2] = np.inf
    got = G.gemm(a, b)
    with np.errstate(invalid="ignore"):         # the row with inf adds +inf and -inf: NaN, expected
        want = a @ b
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-4)


def test_invalid_arguments_raise_clear_errors():
    f32 = np.ones((4, 3), np.float32)
    b32 = np.ones((3, 5), np.float32)
    with pytest.raises(TypeError, match="same dtype"):
        G.gemm(f32, b32.astype(np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        G.gemm(np.ones((4, 3), np.int64), np.ones((3, 5), np.int64))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        G.gemm([[1.0]], b32)
    with pytest.raises(ValueError, match="2-D"):
        G.gemm(np.ones(3, np.float32), b32)
    with pytest.raises(ValueError, match="inner dimensions"):
        G.gemm(f32, b32, trans_a=True)
    with pytest.raises(ValueError, match=r"shape \(5, 4\), expected \(4, 5\)"):
        G.gemm(f32, b32, out=np.empty((5, 4), np.float32))
    with pytest.raises(TypeError, match="out has dtype float64"):
        G.gemm(f32, b32, out=np.empty((4, 5)))
    with pytest.raises(ValueError, match="C-contiguous"):
        G.gemm(f32, b32, out=np.empty((5, 4), np.float32).T)
    readonly = np.empty((4, 5), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        G.gemm(f32, b32, out=readonly)
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        G.gemm(f32, b32, accumulate=True)
    square = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        G.gemm(square, np.ones((4, 4), np.float32), out=square)


def test_out_overlapping_an_input_is_refused_in_both_variants():
    whole = np.ones((48, 48), np.float32)
    for fn in (G.gemm_serial, lambda *x, **kw: G.gemm_parallel(*x, threads=2, **kw)):
        with pytest.raises(ValueError, match="overlap"):
            fn(whole, np.ones((48, 48), np.float32), whole)
        with pytest.raises(ValueError, match="overlap"):
            fn(np.ones((48, 48), np.float32), whole, whole)


def test_buffers_are_reused_and_private_to_each_calling_thread():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal((96, 80)).astype(np.float32)
    G.gemm_serial(a, b)
    first = G._local.buffers[np.dtype(np.float32)]
    G.gemm_serial(a, b)
    assert G._local.buffers[np.dtype(np.float32)] is first       # no new allocation

    want = reference(a, b, False, False)
    errors = []

    def work():
        try:
            for _ in range(20):
                assert_close(G.gemm_serial(a, b), want, np.float32)
            assert G._local.buffers[np.dtype(np.float32)] is not first
        except AssertionError as e:       # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _vector_ops(asm):
    """(multiply-add lines, the register classes they use) of a float32 product's machine code."""
    ops = [line for line in asm.splitlines() if re.search(r"\b(vfmadd\w*ps|v?mulps|v?addps)\b", line)]
    return ops, {r for line in ops for r in re.findall(r"%([xyz]mm)\d+", line)}


def test_the_micro_kernel_is_vectorised_for_this_cpu():
    """The register tile compiles to packed FMAs on the vector registers of the ISA chosen
    here (a fresh compile of the blocked product, about 2 s)."""
    assert G.ISA == G.target_isa()
    assert T32["lanes"] == G.ISA_BITS[G.ISA] // 32 and T32["NR"] == 2 * T32["lanes"]
    ops, regs = _vector_ops(G.kernel_asm(np.float32))
    assert len(ops) >= 2 * 12, f"expected the 12-accumulator loops as packed FMAs, found {len(ops)}"
    assert regs == {{"avx512": "zmm", "avx2": "ymm", "sse": "xmm"}[G.ISA]}, regs


def test_the_blocked_product_is_compiled_once_and_called_through_its_address(monkeypatch):
    """The serial and parallel loops call _gemm_block through its address: their machine code holds
    none of the micro-kernel's multiply-adds (Numba would otherwise optimise and emit the block again
    in each of them); a read-only operand, another Numba type, gets its own compile, and an
    unaligned one is read right.
    The loops are compiled afresh here: Numba shows no code it loaded from its cache."""
    import numba
    fresh = {}
    for name, parallel in (("_gemm_serial", False), ("_gemm_parallel", True)):
        fresh[name] = numba.njit(parallel=parallel, **dict(G._JIT, cache=False))(getattr(G, name).py_func)
        monkeypatch.setattr(G, name, fresh[name])
    raw = np.zeros(64 * 65 * 4 + 1, np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(64, 65)
    unaligned[:] = np.random.default_rng(0).standard_normal((64, 65))
    read_only = np.random.default_rng(1).standard_normal((65, 96)).astype(np.float32)
    read_only.flags.writeable = False
    assert not unaligned.flags.aligned
    want = unaligned.astype(np.float64) @ read_only
    for entry in (G.gemm_serial, G.gemm_parallel):
        np.testing.assert_allclose(entry(unaligned, read_only), want, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(entry(unaligned, read_only.copy()), want, rtol=1e-5, atol=1e-4)
    assert len(set(G._addresses.values())) >= 2            # writeable and read-only B
    for name, loop in fresh.items():
        ops, _ = _vector_ops("\n".join(loop.inspect_asm().values()))
        assert ops and not [op for op in ops if "vfmadd" in op], f"{name} holds the block's code"


def test_the_block_is_called_only_with_the_types_it_was_compiled_for():
    """_call_block refuses, at compile time, scalar arguments of other types than _gemm_block's
    compiled signature: a call through an address with the wrong types would read garbage."""
    import numba
    from numba.core.errors import TypingError

    @numba.njit
    def wrong_flags(a, b, c, ws):
        G._call_block(0, a, b, c, ws[0], np.int32(0), 0, 1, 0, 1, (1, 1, 1))

    x = np.ones((2, 2), np.float32)
    with pytest.raises(TypingError):
        wrong_flags(x, x, x.copy(), x.copy())


# each path compiled for a CPU that has it (LLVM cross-compiles; nothing of it runs here):
# znver4 has AVX-512 without the 256-bit preference LLVM gives Intel's AVX-512 cores
PATHS = [("avx512", "znver4", "zmm", 32), ("avx2", "haswell", "ymm", 16), ("sse", "x86-64", "xmm", 8)]


@pytest.mark.parametrize("isa,cpu,register,nr", PATHS, ids=[p[0] for p in PATHS])
def test_each_isa_path_emits_its_vector_registers(isa, cpu, register, nr):
    code = textwrap.dedent("""
        import re, numpy as np
        from scratchvae.kernels import gemm_numba as G
        asm = G.kernel_asm(np.float32)
        ops = [l for l in asm.splitlines() if re.search(r"\\b(vfmadd\\w*ps|v?mulps|v?addps)\\b", l)]
        print(G.ISA, G.tiling(np.float32)["NR"], len(ops), " ".join(sorted({r for l in ops for r in re.findall(r"%([xyz]mm)\\d+", l)})))
    """)
    # an empty NUMBA_CPU_FEATURES takes the named CPU's own features, not the host's
    env = dict(os.environ, SCRATCHVAE_GEMM_ISA=isa, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES="")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    got_isa, got_nr, n_ops, regs = r.stdout.split(maxsplit=3)
    assert (got_isa, int(got_nr)) == (isa, nr)
    assert int(n_ops) >= 2 * 12 and regs.split() == [register], r.stdout


def test_a_narrower_forced_isa_computes_the_same_product():
    """SSE (128-bit) runs on every x86-64: the forced path is correct here, not only compiled."""
    code = textwrap.dedent("""
        import numpy as np
        from scratchvae.kernels import gemm_numba as G
        rng = np.random.default_rng(0)
        worst = 0.0
        for m, k, n in [(1, 1, 1), (7, 9, 17), (13, 15, 4), (128, 400, 20), (61, 257, 33)]:
            for ta in (False, True):
                for tb in (False, True):
                    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
                    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
                    want = (a.T if ta else a) @ (b.T if tb else b)
                    got = G.gemm(a, b, trans_a=ta, trans_b=tb)
                    worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
        print(G.ISA, G.tiling(np.float32)["NR"], worst)
    """)
    env = dict(os.environ, SCRATCHVAE_GEMM_ISA="sse")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    isa, nr, worst = r.stdout.split()
    assert (isa, nr) == ("sse", "8") and float(worst) < 1e-5


def test_a_bad_forced_isa_is_refused():
    env = dict(os.environ, SCRATCHVAE_GEMM_ISA="avx1024")
    r = subprocess.run([sys.executable, "-c", "import scratchvae.kernels.gemm_numba"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode != 0 and "SCRATCHVAE_GEMM_ISA must be one of avx512, avx2, sse" in r.stderr


def test_the_cache_blocks_follow_the_cache_sizes():
    sizes, lanes = G.CACHE_SIZES, T32["lanes"]
    assert T32["KC"] * T32["NR"] * 4 <= sizes["L1d"] // 2
    assert T32["MC"] * T32["KC"] * 4 <= sizes["L2"] // 3 and T32["MC"] % G.MR == 0
    assert T32["KC"] * T32["NC"] * 4 <= sizes["L3"] // 8 and T32["NC"] % T32["NR"] == 0
    assert lanes in (4, 8, 16)
