"""A hand-written GEMM in Numba: cache blocking, a register-blocked micro-kernel, packing where it pays.

:func:`gemm` computes ``out = op(a) @ op(b)`` (or ``out += ...``) with the
contract of ``kernels.reference.gemm``; ``op`` transposes when asked, so one
function serves the model's three layouts: ``x @ W`` (forward),
``d_y @ W.T`` (input gradient) and ``x.T @ d_y`` (weight gradient). It
follows the loop structure of BLIS (Van Zee and van de Geijn, 2015), with the
"unpacked" shortcuts BLIS uses for small and skinny products:

* **Register blocking.** The micro-kernel computes a ``6 x 16`` tile of C
  (float64: ``6 x 8``) in twelve 8-lane vector accumulators that stay in
  registers for a whole block of ``k``: each step loads two vectors of B
  (a row of the tile's 16 columns), broadcasts six numbers of A and issues
  twelve fused multiply-adds. C is read and written once per tile and block.
  A second kernel, ``12 x 8`` (two A strips, one vector), takes the last
  strip of B when it is at most one vector wide: ``n = 20`` is 16 + 4, and a
  ``6 x 16`` tile would be three quarters empty.
* **Cache blocking.** ``k`` is cut into blocks of at most ``KC`` (balanced:
  784 is four blocks of 196) so that a B strip, ``KC x 16`` floats = 16 KiB,
  stays in the 32 KiB L1 while it meets every A strip of an ``MC``-row block
  of A (``MC x KC`` floats: 144 KiB, in the 512 KiB L2); ``n`` in blocks of
  at most ``NC`` columns.
* **Reading in place, packing where it pays.** The kernel broadcasts single
  numbers of A, so it reads A through any strides (rows of ``a`` or of
  ``a.T``); it needs 16 contiguous numbers per row of B, which rows of ``b``
  offer. Copying ("packing") an operand costs a pass over it per call;
  reading in place costs a split cache line and a TLB miss per strip row each
  time a strip is used. So B is packed when it is ``W.T`` (the input-gradient
  layout; the transpose is done 8 x 8 in registers), when its row stride
  would crowd a few L1 sets, or when ``m`` is large (each B strip then serves
  ``m / 6`` tiles); ``A = x.T`` (the weight-gradient layout) is packed when
  ``n`` is large enough to repay it. Packed buffers are 64-byte aligned.
* **Edges.** A tile that overhangs the last row or column of C is moved back
  to end on it, overlapping its neighbour, so it still reads in place; it is
  computed into a scratch tile and only its new part is copied to C. An
  operand smaller than one tile is packed with zero padding instead.
* **Epilogue.** :func:`gemm_bias_activation` (a layer's ``f(x @ W + b)``,
  the fused kernel of ``kernels/fused.py``) adds the bias and applies a
  piecewise-linear activation to each thread's strip of C right after
  computing it, while the strip is in that thread's cache, instead of a
  second pass over C: the same additions and selections, so the same bits.

Why the kernels are written as LLVM IR (Numba ``@intrinsic``) rather than in
Numba Python: the register tile needs the *outer-product* form, twelve
accumulators updated from one loop over ``k``. LLVM's loop vectoriser only
vectorises innermost loops, so plain Numba puts the vector lanes either along
``k`` (dot products, with a horizontal sum per output: fast for ``k = 784``,
slow for ``k = 20`` or ``128``) or along ``n`` with C kept in memory
(``C[i, :] += a * B[p, :]``: bound by loads and stores, 55-75 GFLOP/s in an
L1-resident test on this 94 GFLOP/s core). Spelling out 96 scalar
accumulators needs LLVM's SLP vectoriser, which Numba turns off by default,
and even with it on the result spilled to the stack (25-45 GFLOP/s, against
91 for this kernel in the same test). The same holds for the
copies: plain loops between two arrays that might overlap stay scalar or
become a ``memcpy`` call per row. So four small intrinsics state their vectors
directly -- the micro-kernel, an 8 x 8 transpose, a (masked) row copy and the
compile-time block sizes -- and everything else (blocking, packing loops,
edges, threads) is ordinary Numba code. The multiply-adds are ``fmul`` and
``fadd`` with the ``contract`` flag, fused into FMA instructions where the CPU
has them (``vfmadd231ps`` on ``ymm`` registers with AVX2; :func:`kernel_asm`
prints the machine code).

Threads: :func:`gemm_parallel` cuts C into one strip per thread, along ``n``
when ``n >= m`` and along ``m`` otherwise, and runs them with ``prange``;
each thread packs what its strip needs in its own buffers, so there is no
synchronisation inside a call. :func:`gemm` uses it from
:data:`PARALLEL_MIN_FLOP` floating-point operations on; :func:`gemm_serial`
never does. The serial and the parallel loop call the blocked product
through its address (:func:`_call_block`), so that it is compiled once, not
again inside each loop (Numba links a callee's code into its callers).

Packing buffers belong to the calling Python thread and the dtype; they are
allocated on first use and grown when a product needs more, so a training
loop allocates nothing here except ``out`` when it is not given.
"""
from __future__ import annotations

import os
import threading

import numba
import numpy as np
from llvmlite import binding
from llvmlite import ir as llir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .contract import FASTMATH
from .numba_math import IDENTITY, LEAKY_RELU, PIECEWISE_LINEAR, RELU, piecewise_linear

__all__ = ["gemm", "gemm_bias_activation", "gemm_parallel", "gemm_serial", "kernel_asm", "tiling", "describe", "ISA"]

# --------------------------------------------------------------------------
# The instruction set and the caches: the register tile and the block sizes
# --------------------------------------------------------------------------

#: vector register width in bits of each instruction set the micro-kernel targets
ISA_BITS = {"avx512": 512, "avx2": 256, "sse": 128}


def target_isa() -> str:
    """The widest vectors Numba compiles for here: ``avx512`` (avx512f), ``avx2``
    (avx2 and fma), else ``sse`` (128-bit vectors: SSE2 on x86-64, NEON on ARM).

    Read from the features Numba targets (``NUMBA_CPU_FEATURES`` if set, else
    the host's as LLVM sees them), so ``NUMBA_CPU_NAME=generic`` gives ``sse``.
    """
    if numba.config.CPU_FEATURES:
        features = {f[1:] for f in numba.config.CPU_FEATURES.split(",") if f.startswith("+")}
    elif numba.config.CPU_NAME in (None, "host"):
        features = {k for k, on in binding.get_host_cpu_features().items() if on}
    else:
        features = set()
    if "avx512f" in features:
        return "avx512"
    if {"avx2", "fma"} <= features:
        return "avx2"
    return "sse"


def _isa() -> str:
    forced = os.environ.get("SCRATCHVAE_GEMM_ISA")
    if forced and forced not in ISA_BITS:
        raise ValueError(f"SCRATCHVAE_GEMM_ISA must be one of {', '.join(ISA_BITS)}, got {forced!r}")
    return forced or target_isa()


#: the instruction set of the micro-kernel, fixed when this module is imported
#: (``$SCRATCHVAE_GEMM_ISA`` forces one: the tests compile every path here)
ISA = _isa()

# Numba's on-disk cache is keyed by the CPU it compiled for, not by the tile
# this module chose: a forced ISA compiles in memory, so that no later process
# loads code built for another tile.
_JIT = {"cache": ISA == target_isa(), "fastmath": set(FASTMATH), "boundscheck": False, "nogil": True,
        "error_model": "numpy"}

#: rows of the register tile (both dtypes)
MR = 6


def _cache_sizes() -> dict:
    """L1 data, L2 and L3 sizes in bytes of CPU 0 (Linux sysfs; typical sizes elsewhere)."""
    sizes = {"L1d": 32 << 10, "L2": 512 << 10, "L3": 8 << 20}
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(root)
    except OSError:
        return sizes
    for entry in entries:
        try:
            with open(os.path.join(root, entry, "level")) as f:
                level = int(f.read())
            with open(os.path.join(root, entry, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        size = int(text.rstrip("KM")) * scale
        if level == 1 and kind == "Data":
            sizes["L1d"] = size
        elif level in (2, 3) and kind == "Unified":
            sizes[f"L{level}"] = size
    return sizes


CACHE_SIZES = _cache_sizes()


def _tiling_for(dtype) -> tuple:
    """``(lanes, NR, MC, KC, NC)`` for ``dtype`` on this ISA and these caches.

    Register tile: MR x NR with NR = two vectors (6 x 16 float32 on AVX2,
    6 x 32 on AVX-512). Cache blocks: a KC x NR strip of B fills half the L1
    (KC at most 256); a packed MC x KC block of A about 2/7 of the L2 (144 KiB
    of 512 for float32 on AVX2), leaving room for the B strips and C tiles
    that stream through; KC x NC of B an eighth of the L3.
    """
    itemsize = np.dtype(dtype).itemsize
    lanes = ISA_BITS[ISA] // (8 * itemsize)
    nr = 2 * lanes
    kc = max(lanes, min(256, CACHE_SIZES["L1d"] // (2 * nr * itemsize)))
    mc = max(MR, int(CACHE_SIZES["L2"] / (3.5 * kc * itemsize)) // MR * MR)
    nc = max(nr, CACHE_SIZES["L3"] // (8 * kc * itemsize) // nr * nr)
    return lanes, nr, mc, kc, nc


#: per dtype: (vector lanes, NR columns of the register tile, MC, KC, NC)
_TILING = {np.dtype(t): _tiling_for(t) for t in (np.float32, np.float64)}

#: :func:`gemm` uses the threaded version from this many FLOP (2 m n k) on.
#: Measured on 2 cores: the split costs about 2 us (Numba's pool wakes up) and
#: pays from about 1-2 MFLOP on (128 x 200 x 20, 1 MFLOP: 1.3-1.45x; 128 x 400
#: x 20, 2 MFLOP: 1.65x; 64 x 64 x 64: 1.0x)
PARALLEL_MIN_FLOP = 2_000_000


def tiling(dtype) -> dict:
    """The block sizes used for ``dtype``: ``{"MR", "NR", "MC", "KC", "NC", "lanes"}``."""
    lanes, nr, mc, kc, nc = _TILING[np.dtype(dtype)]
    return {"MR": MR, "NR": nr, "MC": mc, "KC": kc, "NC": nc, "lanes": lanes}


def describe() -> dict:
    """What this GEMM runs with: instruction set, register tile, cache blocks, threads."""
    t = tiling(np.float32)
    return {"gemm": "scratchvae gemm_numba (Numba)", "gemm_isa": ISA, "gemm_target_isa": target_isa(),
            "gemm_tile_float32": f"{MR}x{t['NR']} ({t['lanes']} lanes)",
            "gemm_blocks_float32": {k: t[k] for k in ("MC", "KC", "NC")}, "cache_sizes": CACHE_SIZES,
            "gemm_threads": numba.get_num_threads(), "gemm_parallel_min_flop": PARALLEL_MIN_FLOP}


# --------------------------------------------------------------------------
# The micro-kernel (LLVM IR) and the compile-time register tile
# --------------------------------------------------------------------------

def _float_tiling(typingctx, dtype):
    if dtype == types.float32:
        return _TILING[np.dtype(np.float32)]
    if dtype == types.float64:
        return _TILING[np.dtype(np.float64)]
    return None


@intrinsic
def _register_tile(typingctx, arr):
    """``(lanes, NR)`` for the dtype of ``arr``, as compile-time constants (the
    cache blocks MC, KC, NC are run-time arguments)."""
    t = _float_tiling(typingctx, getattr(arr, "dtype", None))
    if t is None:
        return None
    sig = types.UniTuple(types.intp, 2)(arr)

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        vals = [intp(v) for v in t[:2]]
        return context.make_tuple(builder, signature.return_type, vals)

    return sig, codegen


def _make_microkernel(strips, wide):
    """The register-tile kernel for ``strips * MR`` rows of A and ``NR``
    (``wide``) or ``lanes`` columns of B, as a Numba intrinsic:

    ``kernel(kc, a, a_off, a_ss, a_rs, a_cs, b, b_off, b_rs, c, c_off, ldc, accumulate)``

    computes ``C_tile (+)= A_strip @ B_strip`` in registers. Element ``(i, p)``
    of A is ``a.flat[a_off + (i // MR)*a_ss + (i % MR)*a_rs + p*a_cs]`` (any
    strides: packed strips, rows of ``a`` or rows of ``a.T``); row ``p`` of
    B is the contiguous vector(s) at ``b.flat[b_off + p*b_rs]``. Row ``i`` of
    the tile goes to ``c.flat[c_off + i*ldc:]``, added to what is there when
    ``accumulate``. Needs ``kc >= 1``.

    Each step of the ``p`` loop loads the B vector(s), broadcasts one number
    of A per row and multiply-adds: the accumulators (``rows x vectors``:
    6 x 2 or 12 x 1, twelve in both) never leave registers.
    """

    def kernel(typingctx, kc, a, a_off, a_ss, a_rs, a_cs, b, b_off, b_rs, c, c_off, ldc, accumulate):
        dt = getattr(a, "dtype", None)
        t = _float_tiling(typingctx, dt)
        if t is None or getattr(b, "dtype", None) != dt or getattr(c, "dtype", None) != dt:
            return None
        lanes = t[0]
        nvec = t[1] // lanes if wide else 1
        rows = strips * MR
        ip = types.intp
        sig = types.void(ip, a, ip, ip, ip, ip, b, ip, ip, c, ip, ip, types.boolean)

        def codegen(context, builder, signature, args):
            kc, a, a_off, a_ss, a_rs, a_cs, b, b_off, b_rs, c, c_off, ldc, accumulate = args
            aty, bty, cty = signature.args[1], signature.args[6], signature.args[9]
            intp = context.get_value_type(types.intp)
            vty = llir.VectorType(context.get_value_type(dt), lanes)
            vptr = vty.as_pointer()
            zero = llir.Constant(vty, None)
            splat = llir.Constant(llir.VectorType(llir.IntType(32), lanes), [0] * lanes)
            contract = ("contract",)

            a_ptr = builder.gep(context.make_array(aty)(context, builder, a).data, [a_off])
            a_rows = [builder.gep(a_ptr, [builder.add(builder.mul(a_ss, intp(i // MR)),
                                                      builder.mul(a_rs, intp(i % MR)))])
                      for i in range(rows)]
            b_ptr = builder.gep(context.make_array(bty)(context, builder, b).data, [b_off])
            c_ptr = builder.gep(context.make_array(cty)(context, builder, c).data, [c_off])

            entry = builder.basic_block
            loop = builder.append_basic_block("ukernel.loop")
            done = builder.append_basic_block("ukernel.done")
            builder.branch(loop)

            # for p in range(kc): acc[i][v] += broadcast(A[i, p]) * B[p, v*lanes:(v+1)*lanes]
            builder.position_at_end(loop)
            p = builder.phi(intp, name="p")
            p.add_incoming(intp(0), entry)
            acc = []
            for _ in range(rows * nvec):
                phi = builder.phi(vty)
                phi.add_incoming(zero, entry)
                acc.append(phi)
            b_row = builder.gep(b_ptr, [builder.mul(p, b_rs)])
            b_vec = [builder.load(builder.bitcast(builder.gep(b_row, [intp(v * lanes)]), vptr), align=4)
                     for v in range(nvec)]
            a_col = builder.mul(p, a_cs)
            new = []
            for i in range(rows):
                a_i = builder.load(builder.gep(a_rows[i], [a_col]))
                a_i = builder.insert_element(llir.Constant(vty, llir.Undefined), a_i, llir.Constant(llir.IntType(32), 0))
                a_i = builder.shuffle_vector(a_i, llir.Constant(vty, llir.Undefined), splat)
                for v in range(nvec):
                    prod = builder.fmul(a_i, b_vec[v], flags=contract)
                    new.append(builder.fadd(acc[i * nvec + v], prod, flags=contract))
            p_next = builder.add(p, intp(1))
            p.add_incoming(p_next, loop)
            for phi, value in zip(acc, new):
                phi.add_incoming(value, loop)
            builder.cbranch(builder.icmp_signed("<", p_next, kc), loop, done)

            # write the tile: C[i, :] = acc[i] or C[i, :] += acc[i]
            builder.position_at_end(done)
            with builder.if_else(accumulate) as (add, overwrite):
                for branch, add_old in ((add, True), (overwrite, False)):
                    with branch:
                        for i in range(rows):
                            row = builder.gep(c_ptr, [builder.mul(ldc, intp(i))])
                            for v in range(nvec):
                                ptr = builder.bitcast(builder.gep(row, [intp(v * lanes)]), vptr)
                                value = new[i * nvec + v]
                                if add_old:
                                    value = builder.fadd(builder.load(ptr, align=4), value)
                                builder.store(value, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    kernel.__name__ = f"_kernel_{strips * MR}x{'nr' if wide else 'lanes'}"
    return intrinsic(kernel)


#: the main tile: MR x NR (6 x 16 float32, 6 x 8 float64)
_microkernel = _make_microkernel(1, True)
#: for a last strip of B at most one vector wide (n = 20 = 16 + 4):
#: two A strips at once, 2*MR x lanes (12 x 8 float32), instead of a 6 x 16
#: tile three quarters empty
_narrow_kernel = _make_microkernel(2, False)


@intrinsic
def _transpose_block(typingctx, src, s_off, lds, nrows, dst, d_off, ldd):
    """Transpose one ``L x L`` block (``L`` = vector lanes: 8 float32, 4 float64):
    ``dst.flat[d_off + j*ldd + r] = src.flat[s_off + r*lds + j]`` for rows
    ``r < nrows``, and 0 for the rows from ``nrows`` on (which are not read).

    ``log2(L)`` rounds of interleaving rows ``i`` and ``i + L/2`` (each round
    moves one bit of the column index into the row index), all in registers:
    L vector loads, ``L log2 L`` shuffles and L vector stores instead of
    ``L*L`` scalar copies.
    """
    dt = getattr(src, "dtype", None)
    t = _float_tiling(typingctx, dt)
    if t is None or getattr(dst, "dtype", None) != dt:
        return None
    lanes = t[0]
    ip = types.intp
    sig = types.void(src, ip, ip, ip, dst, ip, ip)

    def codegen(context, builder, signature, args):
        src, s_off, lds, nrows, dst, d_off, ldd = args
        intp = context.get_value_type(types.intp)
        vty = llir.VectorType(context.get_value_type(dt), lanes)
        vptr = vty.as_pointer()
        i32 = llir.IntType(32)
        half = lanes // 2
        lo = llir.Constant(llir.VectorType(i32, lanes), [x for j in range(half) for x in (j, j + lanes)])
        hi = llir.Constant(llir.VectorType(i32, lanes), [x for j in range(half, lanes) for x in (j, j + lanes)])
        s_ptr = builder.gep(context.make_array(signature.args[0])(context, builder, src).data, [s_off])
        d_ptr = builder.gep(context.make_array(signature.args[4])(context, builder, dst).data, [d_off])
        row_ptrs = [builder.gep(s_ptr, [builder.mul(lds, intp(r))]) for r in range(lanes)]
        masked_load = cgutils.get_or_insert_function(
            builder.module,
            llir.FunctionType(vty, [llir.PointerType(), i32, llir.VectorType(llir.IntType(1), lanes), vty]),
            f"llvm.masked.load.v{lanes}f{dt.bitwidth}.p0")

        def transpose_and_store(rows):
            for _ in range(lanes.bit_length() - 1):
                nxt = []
                for i in range(half):
                    nxt.append(builder.shuffle_vector(rows[i], rows[i + half], lo))
                    nxt.append(builder.shuffle_vector(rows[i], rows[i + half], hi))
                rows = nxt
            for j in range(lanes):
                builder.store(rows[j], builder.bitcast(builder.gep(d_ptr, [builder.mul(ldd, intp(j))]), vptr),
                              align=4)

        def masked_rows():
            """The rows, those from nrows on masked off entirely (not read, 0)."""
            rows = []
            for r, ptr in enumerate(row_ptrs):
                keep = builder.icmp_signed(">", nrows, intp(r))
                mask = builder.insert_element(llir.Constant(llir.VectorType(llir.IntType(1), lanes),
                                                            llir.Undefined), keep, i32(0))
                mask = builder.shuffle_vector(mask, llir.Constant(mask.type, llir.Undefined),
                                              llir.Constant(llir.VectorType(i32, lanes), [0] * lanes))
                rows.append(builder.call(masked_load, [builder.bitcast(ptr, llir.PointerType()), i32(4),
                                                       mask, llir.Constant(vty, None)]))
            return rows

        full = builder.icmp_signed(">=", nrows, intp(lanes))
        empty = builder.icmp_signed("<=", nrows, intp(0))
        with builder.if_else(full) as (whole, not_whole):
            with whole:
                transpose_and_store([builder.load(builder.bitcast(ptr, vptr), align=4) for ptr in row_ptrs])
            with not_whole:
                with builder.if_else(empty) as (nothing, some):
                    with nothing:                # no row to read: zeros
                        for j in range(lanes):
                            ptr = builder.bitcast(builder.gep(d_ptr, [builder.mul(ldd, intp(j))]), vptr)
                            builder.store(llir.Constant(vty, None), ptr, align=4)
                    with some:
                        transpose_and_store(masked_rows())
        return context.get_dummy_value()

    return sig, codegen


def _make_copy(which):
    """An intrinsic ``copy(src, s_off, dst, d_off, count)``: the first
    ``count`` of ``width`` elements (``width`` = ``NR`` for ``which="nr"``,
    ``MR`` for ``"mr"``) go from ``src.flat[s_off:]`` to ``dst.flat[d_off:]``
    and the rest of the ``width`` destination elements become zeros.

    Vector loads and stores; for ``count < width`` masked loads, which read
    nothing past ``count`` (so never past the end of ``src``). Plain Numba
    loops are no match for this: the two arrays might overlap, so LLVM keeps
    them scalar, or turns them into a ``memcpy`` call per row.
    """

    def copy(typingctx, src, s_off, dst, d_off, count):
        dt = getattr(src, "dtype", None)
        t = _float_tiling(typingctx, dt)
        if t is None or getattr(dst, "dtype", None) != dt:
            return None
        lanes = t[0]
        width = t[1] if which == "nr" else MR
        chunks = []                             # (offset, size): widest vectors first
        pos, size = 0, lanes
        while pos < width:
            while size > width - pos:
                size //= 2
            chunks.append((pos, size))
            pos += size
        sig = types.void(src, types.intp, dst, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            src, s_off, dst, d_off, count = args
            fty = context.get_value_type(dt)
            intp = context.get_value_type(types.intp)
            i32 = llir.IntType(32)
            s_ptr = builder.gep(context.make_array(signature.args[0])(context, builder, src).data, [s_off])
            d_ptr = builder.gep(context.make_array(signature.args[2])(context, builder, dst).data, [d_off])
            with builder.if_else(builder.icmp_signed(">=", count, intp(width))) as (whole, part):
                with whole:
                    for off, w in chunks:
                        ty = fty if w == 1 else llir.VectorType(fty, w)
                        value = builder.load(builder.bitcast(builder.gep(s_ptr, [intp(off)]), ty.as_pointer()),
                                             align=4)
                        builder.store(value, builder.bitcast(builder.gep(d_ptr, [intp(off)]), ty.as_pointer()),
                                      align=4)
                with part:
                    for off, w in chunks:
                        vty = llir.VectorType(fty, w)
                        ity = llir.VectorType(intp, w)
                        # lane l is loaded when off + l < count
                        lane = llir.Constant(ity, [off + l for l in range(w)])
                        limit = builder.insert_element(llir.Constant(ity, llir.Undefined), count, i32(0))
                        limit = builder.shuffle_vector(limit, llir.Constant(ity, llir.Undefined),
                                                       llir.Constant(llir.VectorType(i32, w), [0] * w))
                        mask = builder.icmp_signed("<", lane, limit)
                        fn = cgutils.get_or_insert_function(
                            builder.module,
                            llir.FunctionType(vty, [llir.PointerType(), i32, mask.type, vty]),
                            f"llvm.masked.load.v{w}f{dt.bitwidth}.p0")
                        src_vec = builder.bitcast(builder.gep(s_ptr, [intp(off)]), llir.PointerType())
                        value = builder.call(fn, [src_vec, i32(4), mask, llir.Constant(vty, None)])
                        builder.store(value, builder.bitcast(builder.gep(d_ptr, [intp(off)]), vty.as_pointer()),
                                      align=4)
            return context.get_dummy_value()

        return sig, codegen

    copy.__name__ = f"_copy_{which}"
    return intrinsic(copy)


_copy_nr = _make_copy("nr")
_copy_mr = _make_copy("mr")


# --------------------------------------------------------------------------
# Packing: only where reading in place costs more than copying
# --------------------------------------------------------------------------
# The micro-kernel broadcasts single numbers of A, so it can read A through
# any strides: in place, rows of op(a) or columns alike. B must offer NR
# contiguous numbers per row. Copying an operand costs one pass over it per
# call, reading it in place costs a cache line split and a TLB miss per row
# of a strip each time the strip is used; so
#
# * B is packed when op(b) = b.T (the input-gradient layout d_y @ W.T: the
#   transpose is done in registers by _transpose_block), when its row stride
#   is a multiple of 512 bytes (a strip would crowd a few L1 sets), and when
#   m is large (each B strip is then used m / MR times);
# * A is packed when op(a) = a.T (the weight-gradient layout x.T @ d_y: a
#   strip's rows are then MR numbers taken from k different rows of a) and n
#   is large enough to amortise the copy;
# * an operand smaller than one tile (m < MR, n < NR) is packed, zero-padded,
#   so that the kernel never reads past its end; larger ones are read in place
#   up to their edges (see _gemm_block).

#: pack B from this many rows of C on (B strips are reused m / MR times)
PACK_B_MIN_M = 256
#: pack op(a) = a.T from this many columns of C on
PACK_A_MIN_N = 64


@njit(**_JIT)
def _pack_a(a, trans_a, i0, mc, p0, kc, buf):
    """Copy ``op(a)[i0:i0+mc, p0:p0+kc]`` into ``MR``-row strips: strip ``s``
    holds ``A[s*MR + i, p]`` at ``buf[s*MR*kc + p*MR + i]``; rows past ``mc``
    are zeros."""
    lda = a.shape[1]
    for s in range((mc + MR - 1) // MR):
        base = s * MR * kc
        rows = min(MR, mc - s * MR)
        r0 = i0 + s * MR
        if trans_a:                          # op(a)[i, p] = a[p, i]: MR contiguous numbers per p
            for p in range(kc):
                _copy_mr(a, (p0 + p) * lda + r0, buf, base + p * MR, rows)
        else:                                # op(a)[i, p] = a[i, p]: a transpose, in scalars
            if rows < MR:
                for p in range(kc):          # zeros first (a masked copy of nothing)
                    _copy_mr(buf, 0, buf, base + p * MR, 0)
            for i in range(rows):
                src = a[r0 + i]
                for p in range(kc):
                    buf[base + p * MR + i] = src[p0 + p]


@njit(**_JIT)
def _pack_b(b, trans_b, p0, kc, j0, nc, buf, nr, lanes):
    """Copy ``op(b)[p0:p0+kc, j0:j0+nc]`` into ``nr``-column strips: strip
    ``s`` holds ``B[p, s*nr + j]`` at ``buf[s*nr*kc + p*nr + j]``; columns
    past ``nc`` are zeros."""
    ldb = b.shape[1]
    for s in range((nc + nr - 1) // nr):
        base = s * nr * kc
        cols = min(nr, nc - s * nr)
        c0 = j0 + s * nr
        p = 0
        if trans_b:                          # op(b)[p, j] = b[j, p]: transpose, L x L at a time
            while p + lanes <= kc:
                for v in range(0, nr, lanes):
                    _transpose_block(b, (c0 + v) * ldb + p0 + p, ldb, cols - v, buf, base + p * nr + v, nr)
                p += lanes
        else:                                # op(b)[p, j] = b[p, j]: copy rows
            for q in range(kc):
                _copy_nr(b, (p0 + q) * ldb + c0, buf, base + q * nr, cols)
            p = kc
        if p < kc:                           # the last k % lanes rows of a transpose
            if cols < nr:
                for q in range(p, kc):       # zeros first (a masked copy of nothing)
                    _copy_nr(buf, 0, buf, base + q * nr, 0)
            for j in range(cols):
                src = b[c0 + j]
                for q in range(p, kc):
                    buf[base + q * nr + j] = src[p0 + q]


# --------------------------------------------------------------------------
# The blocked product of one rectangle of C
# --------------------------------------------------------------------------

@njit(**_JIT)
def _gemm_block(a, b, c, ws, flags, i_lo, i_hi, j_lo, j_hi, blocks):
    """``c[i_lo:i_hi, j_lo:j_hi] (+)= op(a)[i_lo:i_hi, :] @ op(b)[:, j_lo:j_hi]``.

    ``flags``: bit 0 transposes a, bit 1 transposes b, bit 2 accumulates.
    ``blocks``: the cache blocks ``(MC, KC, NC)``.
    ``ws`` is this thread's workspace (:func:`_workspace_size` elements):
    the scratch tile, packed A, then packed B.

    Edges: a tile that overhangs the last row (column) of C is moved back to
    end on it, overlapping its neighbour, so it still reads A (B) in place;
    it goes to the scratch tile and only its new rows (columns) are copied
    to C. Only an operand smaller than one tile is packed, zero-padded.
    """
    trans_a = (flags & 1) != 0
    trans_b = (flags & 2) != 0
    accumulate = (flags & 4) != 0
    lanes, nr = _register_tile(c)
    mc_max, kc_max, nc_max = blocks
    k = a.shape[0] if trans_a else a.shape[1]
    m = i_hi - i_lo
    n = j_hi - j_lo
    if m <= 0 or n <= 0:
        return
    if k == 0:
        if not accumulate:
            c[i_lo:i_hi, j_lo:j_hi] = 0
        return
    lda = a.shape[1]
    ldb = b.shape[1]
    ldc = c.shape[1]
    pack_a = (trans_a and n >= PACK_A_MIN_N) or i_hi < MR
    pack_b = trans_b or m >= PACK_B_MIN_M or (ldb * b.itemsize) % 512 == 0 or j_hi < nr
    # A element (i, p) of the rows from r: a.flat[r*a_rs + p*a_cs]
    a_rs, a_cs = (1, lda) if trans_a else (lda, 1)
    # balanced blocks: k = 784 gives four blocks of 196, not 3 x 256 + 16
    nk = (k + kc_max - 1) // kc_max
    kc_blk = (k + nk - 1) // nk
    nm = (m + mc_max - 1) // mc_max
    mc_blk = ((m + nm - 1) // nm + MR - 1) // MR * MR
    nn = (n + nc_max - 1) // nc_max
    nc_blk = ((n + nn - 1) // nn + nr - 1) // nr * nr
    # the kernel sees every operand as a 2-D array of c's type
    ctile = ws[:2 * MR * nr].reshape((2 * MR, nr))
    apack = ws[2 * MR * nr:2 * MR * nr + mc_max * kc_max].reshape((mc_max, kc_max))
    bsize = ws.size - 2 * MR * nr - mc_max * kc_max
    bpack = ws[2 * MR * nr + mc_max * kc_max:].reshape((bsize // nr, nr))
    apack_flat = apack.reshape(mc_max * kc_max)
    bpack_flat = bpack.reshape(bsize // nr * nr)

    for jc in range(j_lo, j_hi, nc_blk):
        nc = min(nc_blk, j_hi - jc)
        for kb in range(nk):
            pc = kb * kc_blk
            kc = min(kc_blk, k - pc)
            if pack_b:
                _pack_b(b, trans_b, pc, kc, jc, nc, bpack_flat, nr, lanes)
            beta = accumulate or kb > 0
            for ic in range(i_lo, i_hi, mc_blk):
                mc = min(mc_blk, i_hi - ic)
                if pack_a:
                    _pack_a(a, trans_a, ic, mc, pc, kc, apack_flat)
                for jr in range(0, nc, nr):
                    ncols = min(nr, nc - jr)
                    j0 = jc + jr
                    ir0 = 0                     # first A strip left for the 6 x 16 kernel
                    if ncols <= lanes:
                        # a narrow last strip: two A strips at a time, 2*MR x lanes
                        if pack_b:
                            bsrc, b_off, b_rs, tj = bpack, jr * kc, nr, 0
                        else:                   # the last `lanes` columns, in place
                            bsrc, b_off, b_rs, tj = b, pc * ldb + j0 + ncols - lanes, ldb, lanes - ncols
                        while ir0 + 2 * MR <= mc:
                            if pack_a:
                                _narrow_kernel(kc, apack, ir0 * kc, MR * kc, 1, MR, bsrc, b_off, b_rs,
                                               ctile, 0, nr, False)
                            else:
                                _narrow_kernel(kc, a, (ic + ir0) * a_rs + pc * a_cs, MR * a_rs, a_rs, a_cs,
                                               bsrc, b_off, b_rs, ctile, 0, nr, False)
                            # (np.intp(0), not the literal 0: the literal would compile
                            # a second _tile_to_c, specialised to it)
                            _tile_to_c(ctile, np.intp(0), tj, c, ic + ir0, j0, 2 * MR, ncols, beta)
                            ir0 += 2 * MR
                    if pack_b:
                        bsrc, b_off, b_rs, tj = bpack, jr * kc, nr, 0
                    else:                       # the last nr columns, in place
                        bsrc, b_off, b_rs, tj = b, pc * ldb + j0 + ncols - nr, ldb, nr - ncols
                    for ir in range(ir0, mc, MR):
                        nrows = min(MR, mc - ir)
                        if pack_a:
                            asrc, a_off, ti = apack, ir * kc, 0
                            rs, cs = 1, MR
                        else:                   # the last MR rows, in place
                            asrc, a_off, ti = a, (ic + ir + nrows - MR) * a_rs + pc * a_cs, MR - nrows
                            rs, cs = a_rs, a_cs
                        # a whole tile goes straight to C, an edge tile through
                        # the scratch tile (one call site: one inlined kernel)
                        edge = nrows < MR or ncols < nr
                        if edge:
                            dst, off, ld, add = ctile, 0, nr, False
                        else:
                            dst, off, ld, add = c, (ic + ir) * ldc + j0, ldc, beta
                        _microkernel(kc, asrc, a_off, 0, rs, cs, bsrc, b_off, b_rs, dst, off, ld, add)
                        if edge:
                            _tile_to_c(ctile, ti, tj, c, ic + ir, j0, nrows, ncols, beta)


@njit(**_JIT)
def _tile_to_c(ctile, ti, tj, c, i0, j0, nrows, ncols, beta):
    """``c[i0:i0+nrows, j0:j0+ncols] (+)= ctile[ti:ti+nrows, tj:tj+ncols]``."""
    for i in range(nrows):
        src = ctile[ti + i]
        dst = c[i0 + i]
        for j in range(ncols):
            if beta:
                dst[j0 + j] += src[tj + j]
            else:
                dst[j0 + j] = src[tj + j]


# --------------------------------------------------------------------------
# The epilogue: bias and activation applied to each strip of C as it is done
# --------------------------------------------------------------------------

#: activations the epilogue applies, by their index in ``contract.ACTIVATIONS``
EPILOGUE_CODES = PIECEWISE_LINEAR
#: the code of a plain product
NO_EPILOGUE = -1


@njit(**_JIT)
def _epilogue(c, bias, code, alpha, i_lo, i_hi, j_lo, j_hi):
    """``c[i, j] = f(c[i, j] + bias[j])`` on the rectangle, f given by ``code``
    (:data:`EPILOGUE_CODES`), as ``bias_activation`` computes it. One loop per
    activation, each with its code a constant, so that each vectorises."""
    b = bias[j_lo:j_hi]
    for i in range(i_lo, i_hi):
        row = c[i, j_lo:j_hi]
        if code == RELU:
            for j in range(row.shape[0]):
                row[j] = piecewise_linear(row[j] + b[j], RELU, alpha)
        elif code == LEAKY_RELU:
            for j in range(row.shape[0]):
                row[j] = piecewise_linear(row[j] + b[j], LEAKY_RELU, alpha)
        else:
            for j in range(row.shape[0]):
                row[j] = piecewise_linear(row[j] + b[j], IDENTITY, alpha)


@njit(**_JIT)
def _strip_bounds(m, n, nr, t, nthreads, split_n):
    """``(i_lo, i_hi, j_lo, j_hi)`` of strip ``t`` of ``nthreads``: C cut in
    whole tiles along n (``split_n``) or along m."""
    unit = nr if split_n else MR
    total = n if split_n else m
    tiles = (total + unit - 1) // unit
    lo = min(total, (tiles * t // nthreads) * unit)
    hi = min(total, (tiles * (t + 1) // nthreads) * unit)
    if split_n:
        return 0, m, lo, hi
    return lo, hi, 0, n


@njit(**_JIT)
def _overlap(x, y):
    """Do the memory spans of two contiguous arrays intersect?"""
    x0 = x.ctypes.data
    y0 = y.ctypes.data
    return x0 < y0 + y.size * y.itemsize and y0 < x0 + x.size * x.itemsize


# Numba links a callee's code into each function that calls it and optimises
# and emits it again there; a parallel loop's body is outlined into a function
# and two wrappers, so _gemm_block, 0.9 s of LLVM work, was redone five times on
# a cold start. The loops below call it through its address instead (an
# argument, so the cached code holds none): it is compiled once.

#: the Numba types of _gemm_block's arguments after the arrays (flags, the strip's bounds, the cache blocks)
_BLOCK_SCALARS = (types.int64,) * 5 + (types.UniTuple(types.int64, 3),)


@intrinsic
def _call_block(typingctx, address, a, b, c, ws, flags, i_lo, i_hi, j_lo, j_hi, blocks):
    """``_gemm_block(a, b, c, ws, ...)`` called at ``address``, the compiled
    function of exactly these argument types (:func:`_block_address`)."""
    args = (a, b, c, ws, flags, i_lo, i_hi, j_lo, j_hi, blocks)
    if address != types.intp or args[4:] != _BLOCK_SCALARS:
        return None
    sig = types.none(address, *args)

    def codegen(context, builder, signature, values):
        fnty = context.call_conv.get_function_type(types.none, args)
        function = builder.inttoptr(values[0], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, function, types.none, args, values[1:])
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return sig, codegen


_addresses = {}
#: the bits of ``ndarray.flags.num`` a 2-D C-contiguous array's Numba type may depend on:
#: NPY_ARRAY_ALIGNED and NPY_ARRAY_WRITEABLE (one integer: a quarter of the time of reading both flags)
_TYPE_FLAGS = 0x0100 | 0x0400


def _block_address(a, b, c, ws):
    """The address of _gemm_block compiled (or loaded from the disk cache) for these arrays'
    Numba types, which differ by dtype and for read-only operands."""
    key = (a.dtype, a.flags.num & _TYPE_FLAGS, b.flags.num & _TYPE_FLAGS, c.flags.num & _TYPE_FLAGS)
    address = _addresses.get(key)
    if address is None:
        signature = (numba.typeof(a), numba.typeof(b), numba.typeof(c), numba.typeof(ws[0])) + _BLOCK_SCALARS
        _gemm_block.compile(signature)
        compiled = _gemm_block.overloads[signature]
        address = _addresses[key] = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
    return address


@njit(**_JIT)
def _gemm_serial(a, b, c, ws, flags, nthreads, split_n, blocks, bias, code, alpha, block):
    """The product on this thread, in ``nthreads`` strips, each followed by the
    epilogue ``code`` (:data:`NO_EPILOGUE`: none); 1 if ``c`` overlaps an input.
    ``block``: the address of :func:`_gemm_block` for these types."""
    if _overlap(c, a) or _overlap(c, b):
        return 1
    for t in range(nthreads):
        i_lo, i_hi, j_lo, j_hi = _strip_bounds(c.shape[0], c.shape[1], _register_tile(c)[1], t, nthreads, split_n)
        _call_block(block, a, b, c, ws[t], flags, i_lo, i_hi, j_lo, j_hi, blocks)
        if code != NO_EPILOGUE:
            _epilogue(c, bias, code, alpha, i_lo, i_hi, j_lo, j_hi)
    return 0


@njit(parallel=True, **_JIT)
def _gemm_parallel(a, b, c, ws, flags, nthreads, split_n, blocks, bias, code, alpha, block):
    """One strip per thread, each followed by the epilogue while it is in the
    thread's cache; 1 if ``c`` overlaps an input."""
    if _overlap(c, a) or _overlap(c, b):
        return 1
    for t in prange(nthreads):
        # (prange's index is unsigned: as int64 it takes the serial loop's compiled _strip_bounds)
        i_lo, i_hi, j_lo, j_hi = _strip_bounds(c.shape[0], c.shape[1], _register_tile(c)[1], np.int64(t), nthreads,
                                               split_n)
        _call_block(block, a, b, c, ws[t], flags, i_lo, i_hi, j_lo, j_hi, blocks)
        if code != NO_EPILOGUE:
            _epilogue(c, bias, code, alpha, i_lo, i_hi, j_lo, j_hi)
    return 0


# --------------------------------------------------------------------------
# Python entry points
# --------------------------------------------------------------------------

_local = threading.local()


def _workspace_size(dtype, n):
    _, nr, mc, kc, nc = _TILING[dtype]
    ncols = (min(n, nc) + nr - 1) // nr * nr
    size = 2 * MR * nr + mc * kc + kc * ncols
    return -(-size // 16) * 16                   # rows of whole 64-byte lines


def _workspace(dtype, nthreads, n):
    """This caller thread's packing buffers for ``dtype``: (nthreads, size),
    64-byte aligned, reused by later calls and grown when too small."""
    try:
        return _local.by_shape[dtype, nthreads, n]
    except (AttributeError, KeyError):
        pass
    if not hasattr(_local, "by_shape"):
        _local.by_shape, _local.buffers = {}, {}
    size = _workspace_size(dtype, n)
    ws = _local.buffers.get(dtype)
    if ws is None or ws.shape[0] < nthreads or ws.shape[1] < size:
        rows = nthreads if ws is None else max(nthreads, ws.shape[0])
        cols = size if ws is None else max(size, ws.shape[1])
        raw = np.empty(rows * cols * dtype.itemsize + 64, dtype=np.uint8)
        start = -raw.ctypes.data % 64
        ws = raw[start:start + rows * cols * dtype.itemsize].view(dtype).reshape(rows, cols)
        _local.buffers[dtype] = ws
        _local.by_shape.clear()                 # views of the old buffer: let it go
    if len(_local.by_shape) > 64:
        _local.by_shape.clear()
    _local.by_shape[dtype, nthreads, n] = ws
    return ws


def _operand(x, name):
    """``(array, transposed)`` with ``array`` 2-D and C-contiguous: an
    F-contiguous input is read as the transpose of its ``.T`` (no copy), any
    other layout is copied."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"gemm: {name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"gemm: {name} must be 2-D, got shape {x.shape}")
    flags = x.flags
    if flags.c_contiguous:
        return x, False
    if flags.f_contiguous:
        return x.T, True
    return np.ascontiguousarray(x), False


#: the bias of a product without an epilogue (never read)
_NO_BIAS = {np.dtype(t): np.zeros(1, t) for t in (np.float32, np.float64)}


def _run(a, b, out, trans_a, trans_b, accumulate, threads, epilogue=None):
    """The product; ``epilogue``: ``(bias, activation, alpha)`` to apply ``f(C + bias)`` to C."""
    a, flip = _operand(a, "a")
    trans_a = bool(trans_a) is not flip
    b, flip = _operand(b, "b")
    trans_b = bool(trans_b) is not flip
    dtype = a.dtype
    if dtype not in _TILING:
        raise TypeError(f"gemm: dtype must be float32 or float64, got {dtype}")
    if b.dtype != dtype:
        raise TypeError(f"gemm: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    m, k = a.shape
    if trans_a:
        m, k = k, m
    k2, n = b.shape
    if trans_b:
        k2, n = n, k2
    if k != k2:
        raise ValueError(f"gemm: inner dimensions differ: op(a) is ({m}, {k}), op(b) is ({k2}, {n})")
    if out is None:
        if accumulate:
            raise ValueError("gemm: accumulate=True needs out")
        out = np.empty((m, n), dtype=dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"gemm: out must be a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != dtype:
            raise TypeError(f"gemm: out has dtype {out.dtype}, expected {dtype}")
        if out.shape != (m, n):
            raise ValueError(f"gemm: out has shape {out.shape}, expected {(m, n)}")
        out_flags = out.flags
        if not out_flags.c_contiguous:
            raise ValueError("gemm: out must be C-contiguous")
        if not out_flags.writeable:
            raise ValueError("gemm: out is read-only")
    if m == 0 or n == 0:
        return out
    tail = (_NO_BIAS[dtype], NO_EPILOGUE, dtype.type(0))
    if epilogue is not None:
        bias, activation, alpha = epilogue
        tail = (_bias_operand(bias, n, dtype), EPILOGUE_CODES[activation], dtype.type(alpha))
    flags = (1 if trans_a else 0) | (2 if trans_b else 0) | (4 if accumulate else 0)
    if threads is None:
        threads = numba.get_num_threads() if 2 * m * n * k >= PARALLEL_MIN_FLOP else 1
    if threads > 1:
        # one strip per thread, along the longer side, at most one per tile
        split_n = n >= m
        nr = _TILING[dtype][1]
        threads = min(threads, -(-n // nr) if split_n else -(-m // MR))
    if threads > 1:
        # the widest strip (see _strip_bounds) sizes the packed B
        tiles = -(-n // nr)
        ws = _workspace(dtype, threads, -(-tiles // threads) * nr if split_n else n)
        status = _gemm_parallel(a, b, out, ws, flags, threads, split_n, _TILING[dtype][2:], *tail,
                                _block_address(a, b, out, ws))
    else:
        ws = _workspace(dtype, 1, n)
        status = _gemm_serial(a, b, out, ws, flags, 1, True, _TILING[dtype][2:], *tail, _block_address(a, b, out, ws))
    if status:
        raise ValueError("gemm: out must not overlap a or b")
    return out


def _bias_operand(bias, n, dtype):
    if not (isinstance(bias, np.ndarray) and bias.shape == (n,) and bias.dtype == dtype):
        raise ValueError(f"gemm: the bias must be a ({n},) {dtype} array, got "
                         f"{getattr(bias, 'dtype', type(bias).__name__)} of shape {np.shape(bias)}")
    return np.ascontiguousarray(bias)


def gemm(a, b, out=None, trans_a=False, trans_b=False, accumulate=False, scratch=None):
    """``out = op(a) @ op(b)``, or ``out += op(a) @ op(b)`` with ``accumulate``.

    ``op(x)`` is ``x.T`` when the matching ``trans_`` flag is set. Shapes:
    ``op(a)`` (m, k), ``op(b)`` (k, n), ``out`` (m, n). ``a`` and ``b`` are
    2-D float32 or float64 arrays of the same dtype (TypeError otherwise);
    C-contiguous is the fast path, an F-contiguous array is read as the
    transpose of its ``.T`` without copying, any other layout is copied first.
    ``out`` is allocated when None; when given it must be C-contiguous, of
    shape (m, n) and dtype of the inputs, writeable and not overlapping them
    (ValueError/TypeError otherwise). ``accumulate=True`` needs ``out``.
    Returns ``out``. All four layouts (NN, NT, TN, TT) are supported.

    Runs on all Numba threads when ``2*m*n*k >= PARALLEL_MIN_FLOP``, else on
    the calling thread. ``scratch`` is accepted for the contract; the packing
    buffers are the calling thread's own (see the module's docstring).
    """
    return _run(a, b, out, trans_a, trans_b, accumulate, None)


def gemm_bias_activation(x, W, b, activation, alpha, out=None):
    """``out = f(x @ W + b)`` for f in :data:`EPILOGUE_CODES`: each thread adds the bias and applies
    f to its strip of C right after computing it, while the strip is in its cache (the epilogue),
    instead of a second pass over C. Shapes and errors as :func:`gemm`; b: (n,)."""
    if activation not in EPILOGUE_CODES:
        raise ValueError(f"gemm: the epilogue applies {', '.join(EPILOGUE_CODES)}, not {activation!r}; "
                         "compose gemm and bias_activation for the others")
    return _run(x, W, out, False, False, False, None, epilogue=(b, activation, alpha))


def gemm_serial(a, b, out=None, trans_a=False, trans_b=False, accumulate=False):
    """:func:`gemm` on the calling thread only."""
    return _run(a, b, out, trans_a, trans_b, accumulate, 1)


def gemm_parallel(a, b, out=None, trans_a=False, trans_b=False, accumulate=False, *, threads=None):
    """:func:`gemm` split into ``threads`` strips (default
    ``numba.get_num_threads()``) run by Numba's thread pool, whatever the size."""
    return _run(a, b, out, trans_a, trans_b, accumulate, numba.get_num_threads() if threads is None else threads)


def kernel_asm(dtype=np.float32) -> str:
    """The machine code of the blocked product for ``dtype``, compiled afresh
    for the CPU Numba targets (Numba shows no code it loaded from its cache).

    The micro-kernel is a loop of broadcasts (``vbroadcastss``) and fused
    multiply-adds (``vfmadd231ps``) with twelve accumulators and no stack
    traffic: on ``zmm`` registers for :data:`ISA` ``avx512``, ``ymm`` for
    ``avx2``; ``sse`` has no FMA and multiplies and adds ``xmm`` registers.
    """
    dtype = np.dtype(dtype)
    opts = dict(_JIT, cache=False)
    fn = njit(**opts)(_gemm_block.py_func)
    arr2 = numba.from_dtype(dtype)[:, ::1]
    sig = (arr2, arr2, arr2, numba.from_dtype(dtype)[::1]) + (types.int64,) * 5 + (types.UniTuple(types.int64, 3),)
    fn.compile(sig)
    return fn.inspect_asm(sig)
