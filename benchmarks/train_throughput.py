#!/usr/bin/env python3
"""Training throughput of the reference VAE: scratchvae against PyTorch and JAX.

Measures examples per second of full training steps (forward, backward,
Adam) of the 784-400-20 VAE in float32, for each system of
``benchmarks/systems.py`` and each batch size, and compares them with each
other and with what the machine's sgemm speed allows. A system whose
package is not installed is skipped with a note.

    python benchmarks/train_throughput.py                  # the full run (~2 min on a quiet machine)
    python benchmarks/train_throughput.py --quick          # smoke run, seconds
    python benchmarks/train_throughput.py --check          # same loss, gradients and update?

How it measures: every system runs in its own worker process with the same
thread settings. Per batch size, each worker builds its model, splits a
pre-generated pool of examples into batches in its own array type, and
warms up (the first step, which includes any compilation, is timed on its
own and reported). Then come R rounds; in each round every system runs one
block of S steps, each step on the next batch of the pool, and the order of
the systems rotates from round to round so slow drifts of the machine hit
every system alike. One block gives one examples/s figure; the table shows
the median over rounds with the min-max range. During each block the
machine-wide CPU time of other processes is recorded (``other CPU``): a
value near 0 means the block ran on a quiet machine.

The GEMM limit: one training step costs a known number of FLOP per example
in its matrix products (computed from the layer shapes below); at the
measured sgemm peak of this machine (``np.matmul`` of 2048 x 2048 float32,
same threads) no implementation can train faster than peak / (FLOP per
example). ``% GEMM limit`` is the fraction of that bound a system reaches.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The thread environment must be in place before NumPy (or anything that
# loads a BLAS) is imported, so the imports that need it happen in main().
sys.path.insert(0, HERE)
import common  # noqa: E402  (light: imports nothing heavy)
import systems as S  # noqa: E402  (idem: frameworks are imported in the workers)


def log(msg):
    """Progress goes to stderr; stdout carries only the report."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# FLOP count of one training step
# --------------------------------------------------------------------------

def step_gemms(input_dim=S.INPUT_DIM, hidden=S.HIDDEN_DIM, latent=S.LATENT_DIM):
    """Every matrix product of one training step, per example, as (what, k, n).

    A Linear layer (fan_in k, fan_out n) costs, per example, one k x n
    product forward (``x @ W``), one for its weight gradient (``x.T @ d_a``)
    and one for its input gradient (``d_a @ W.T``), except the encoder's
    first layer, whose input (the data) needs no gradient.
    """
    layers = [(name, k, n) for name, k, n in S.LAYERS]
    assert layers[0][1:] == (input_dim, hidden) and layers[1][2] == latent
    out = []
    for name, k, n in layers:
        out.append((f"forward {name}: x @ W", k, n))
    for name, k, n in layers:
        out.append((f"backward {name}: x.T @ d_a (weight gradient)", k, n))
        if name != "enc.0":
            out.append((f"backward {name}: d_a @ W.T (input gradient)", k, n))
    return out


def step_flops():
    """FLOP per example of one step's GEMMs: 2 k n for each product of :func:`step_gemms`."""
    gemms = step_gemms()
    fwd = sum(2 * k * n for what, k, n in gemms if what.startswith("forward"))
    bwd = sum(2 * k * n for what, k, n in gemms if what.startswith("backward"))
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd,
            "gemms": [{"what": w, "k": k, "n": n, "flop_per_example": 2 * k * n} for w, k, n in gemms],
            "note": "matrix products only; elementwise work, reductions and the Adam update "
                    "(about 20 FLOP per parameter per step) are not counted"}


# --------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------

def build_parser():
    ap = common.parser(
        __doc__, "train_throughput",
        threads="threads for every system: sets OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS and friends, "
                "torch.set_num_threads; JAX gets it through CPU affinity when below the CPU count",
        quick="smoke run: 1 round of 3 steps, batch 128 only, short warm-up, small sgemm; "
              "checks that everything runs, the numbers mean little")
    ap.add_argument("--systems", default=",".join(S.SYSTEMS),
                    help="comma-separated systems to run, from: " + ", ".join(S.SYSTEMS) + " [all]")
    ap.add_argument("--batch-sizes", type=common.integers(1), default="128,1024",
                    help="comma-separated batch sizes [128,1024]")
    ap.add_argument("--check", action="store_true",
                    help="instead of timing, check that every system computes the same first step as "
                         "scratchvae-numpy from the same weights and noise: prints the largest absolute "
                         "differences of loss, gradients and updated parameters; exit code 1 if any "
                         "exceeds float32 tolerance")
    _timing_options(ap.add_argument_group("timing"))
    _guard_options(ap.add_argument_group("quiet-machine guard"))
    _torch_options(ap.add_argument_group("PyTorch"))
    return ap


def _timing_options(group):
    group.add_argument("--rounds", type=int, default=7,
                       help="timed rounds; each round runs one block of steps per system, in rotated order [7]")
    group.add_argument("--steps", type=int, default=None,
                       help="fixed steps per block for every system; without it each system's steps are "
                            "calibrated from its warm-up, then from each block, so that a block lasts about "
                            "--block-time")
    group.add_argument("--block-time", type=float, default=0.6,
                       help="target seconds of one timed block when --steps is not given [0.6]")
    group.add_argument("--warmup-time", type=float, default=1.0,
                       help="seconds of warm-up steps after the first step (which includes compilation) [1.0]")
    group.add_argument("--warmup-steps", type=int, default=5,
                       help="minimum number of warm-up steps after the first [5]")
    group.add_argument("--pool-examples", type=int, default=16384,
                       help="examples in the pre-generated data pool each step takes its batch from "
                            "(at least one batch) [16384]")
    group.add_argument("--seed", type=int, default=0, help="seed of the data pool, the weights and the noise [0]")
    group.add_argument("--sgemm-n", type=int, default=2048, help="matrix size of the sgemm peak measurement [2048]")
    group.add_argument("--sgemm-reps", type=int, default=7,
                       help="timed products for the sgemm peak, taken before and again after the systems [7]")
    group.add_argument("--timeout", type=float, default=900.0,
                       help="seconds to wait for a worker's answer (compilation included) before giving it up "
                            "[900]")


def _guard_options(group):
    group.add_argument("--neighbour", action="store_true",
                       help="measure under load: a process spinning on one CPU (python -c 'while True: pass', "
                            "placed by the OS) runs for the whole benchmark, as a busy browser or a shared "
                            "runner would; the guard then tolerates one more busy CPU")
    group.add_argument("--pause", type=float, default=0.2,
                       help="seconds of idle time before each timed block, so the previous system's "
                            "spinning BLAS/OpenMP threads have gone to sleep [0.2]")
    group.add_argument("--busy-threshold", type=float, default=0.25,
                       help="a timed block during which other processes used more than this many CPUs "
                            "(from /proc/stat, Linux only) is repeated, up to --busy-retries times; the "
                            "discarded blocks stay in the JSON record [0.25]")
    group.add_argument("--busy-budget", type=float, default=90.0,
                       help="total seconds the whole run may spend waiting for quiet and repeating disturbed "
                            "blocks; once spent, blocks are kept as measured [90]")
    group.add_argument("--wait-quiet", type=float, default=3.0,
                       help="before each block, wait up to this many seconds (in --pause slices) for a "
                            "slice in which other processes use at most --busy-threshold CPUs [3.0]")
    group.add_argument("--busy-retries", type=int, default=2,
                       help="repetitions of a disturbed block (0: keep every block as measured) [2]")


def _torch_options(group):
    group.add_argument("--torch-adam", choices=("fused", "foreach", "forloop"), default=S.TORCH_DEFAULTS["adam"],
                       help=f"torch.optim.Adam implementation for both PyTorch systems [{S.TORCH_DEFAULTS['adam']}]")
    group.add_argument("--torch-compile-mode", default=S.TORCH_DEFAULTS["compile_mode"],
                       choices=("default", "max-autotune-no-cudagraphs", "max-autotune"),
                       help=f"torch.compile mode of torch-compile [{S.TORCH_DEFAULTS['compile_mode']}]")
    group.add_argument("--torch-compile-optimizer", action="store_true",
                       help="torch-compile also wraps optimizer.step in torch.compile")


def parse_args(argv=None):
    """The options, checked, with --quick's settings applied."""
    ap = build_parser()
    args = ap.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in args.systems:
        if s not in S.SYSTEMS:
            ap.error(f"unknown system {s!r}; choose from {', '.join(S.SYSTEMS)}")
    if args.quick:
        args.batch_sizes, args.rounds, args.steps = [128], 1, args.steps or 3
        args.warmup_time, args.warmup_steps, args.pause, args.busy_retries = 0.0, 1, 0.0, 0
        args.pool_examples = min(args.pool_examples, 4 * 128)
        args.sgemm_n, args.sgemm_reps = min(args.sgemm_n, 1024), min(args.sgemm_reps, 2)
    for name in ("threads", "rounds", "warmup_steps", "pool_examples", "sgemm_n", "sgemm_reps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("busy_retries", "busy_threshold", "busy_budget", "wait_quiet", "pause", "warmup_time",
                 "block_time"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must not be negative")
    if args.steps is not None and args.steps < 1:
        ap.error("--steps must be at least 1")
    args.pool_examples = max(args.pool_examples, max(args.batch_sizes))
    return args


def torch_options(args):
    return {"adam": args.torch_adam, "compile_mode": args.torch_compile_mode,
            "compile_optimizer": args.torch_compile_optimizer}


def worker_env(args):
    """The environment every worker starts with; also returned for the record."""
    env = dict(os.environ)
    env.update(common.thread_env(args.threads))
    env.pop("SCRATCHVAE_BACKEND", None)          # each scratchvae system picks its own
    env.setdefault("XLA_FLAGS", S.XLA_FLAGS_DEFAULT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_cpus(args):
    """Pin workers to the first --threads CPUs when fewer than available (JAX sizes its pool by them)."""
    cpus = common.cpu_affinity()
    if cpus and args.threads < len(cpus):
        return cpus[:args.threads]
    return None


# --------------------------------------------------------------------------
# the timed run
# --------------------------------------------------------------------------

class Measurement:
    """What every timed block shares: the options, the workers' environment and CPUs,
    the CPU monitor, and the seconds spent so far waiting for a quiet machine and
    repeating disturbed blocks (``busy_spent``, over all batch sizes)."""

    def __init__(self, args, env, cpus):
        self.args, self.env, self.cpus = args, env, cpus
        self.monitor = common.CpuMonitor(cpus)
        self.busy_spent = 0.0

    def sgemm(self):
        args = self.args
        return common.sgemm_peak(args.sgemm_n, args.sgemm_reps, monitor=self.monitor,
                                 busy_threshold=args.busy_threshold, retries=args.busy_retries)

    def batch_size(self, batch):
        """Start one worker per system, warm them up, run the alternating rounds.
        Returns one record per requested system."""
        records, workers = {}, {}
        try:
            for name in self.args.systems:
                records[name] = self.start(name, batch, workers)
            self.rounds(records, workers)
            self.tuners_after_rounds(records, workers)
        finally:
            for w in workers.values():
                w.close()
        for rec in records.values():
            if rec["status"] == "ok":
                _summarize_rounds(rec)
        return [records[n] for n in self.args.systems]

    def start(self, name, batch, workers):
        """Start system ``name``'s worker into ``workers``, set it up and warm it up.
        Returns its record; a system that cannot run is marked so and its worker is gone."""
        args = self.args
        rec = {"system": name, "batch_size": batch, "status": "ok"}
        log(f"  {name}: starting")
        w = workers[name] = S.Worker(name, args.threads, self.env, torch_options(args), self.cpus)
        try:
            rep = w.call("setup", timeout=args.timeout, batch_size=batch, seed=args.seed,
                         pool_examples=args.pool_examples)
            if rep["status"] == "ok":
                rec["setup_s"], rec["pool_batches"] = rep["setup_s"], rep["pool_batches"]
                rep = w.call("warmup", timeout=args.timeout, min_time=args.warmup_time, min_steps=args.warmup_steps)
            if rep["status"] == "ok":
                rec["first_step_s"] = rep["first_step_s"]
                rec["warmup"] = {k: rep[k] for k in ("steps", "time_s", "step_s", "median_step_s")}
                rec["steps_per_round"] = args.steps or max(1, round(args.block_time / rep["step_s"]))
                rep = w.call("describe", timeout=args.timeout)
            if rep["status"] == "ok":
                rec["info"] = rep["info"]
        except S.WorkerError as e:
            rep = {"status": "error", "error": str(e)}
        if rep["status"] != "ok":
            _fail(rec, rep)
            workers.pop(name).kill()
        else:
            log(f"  {name}: first step {rec['first_step_s']:.2f} s, then {rec['warmup']['step_s'] * 1e3:.2f} ms"
                f"/step; {rec['steps_per_round']} steps per block")
        return rec

    def tuners_after_rounds(self, records, workers):
        """What each thread tuner chose and how often it measured, by the end of the rounds (``info``
        holds its state after the warm-up only)."""
        for name, w in workers.items():
            if records[name]["status"] == "ok" and "thread_tuner" in records[name].get("info", {}):
                try:
                    rep = w.call("describe", timeout=self.args.timeout)
                except S.WorkerError as e:          # the rounds are measured: keep them, note the gap
                    records[name]["thread_tuner_after_rounds"] = f"describe failed: {e}"
                    continue
                if rep["status"] == "ok" and "thread_tuner" in rep["info"]:
                    records[name]["thread_tuner_after_rounds"] = rep["info"]["thread_tuner"]

    def rounds(self, records, workers):
        """--rounds rounds of one block per running system, the order rotating each round."""
        args = self.args
        active = [n for n in args.systems if records[n]["status"] == "ok"]
        for r in range(args.rounds):
            for pos, name in enumerate(common.rotated(active, r)):
                rec = records[name]
                if rec["status"] != "ok":
                    continue
                rep, block = self.block(workers[name], rec, r, pos)
                if rep["status"] != "ok":
                    _fail(rec, rep)
                    continue
                rec.setdefault("rounds", []).append(block)
                if args.steps is None:
                    # keep blocks near --block-time even if the warm-up estimate was off
                    rec["steps_per_round"] = max(1, round(args.block_time * block["steps"] / block["wall_s"]))
            done = ", ".join(f"{n} {records[n]['rounds'][-1]['examples_per_s']:,.0f}"
                             for n in active if records[n]["status"] == "ok" and records[n].get("rounds"))
            log(f"  round {r + 1}/{args.rounds}: {done}")

    def block(self, worker, rec, r, pos):
        """One timed block of ``rec``'s steps, after waiting for quiet; repeated (up to
        --busy-retries times, within --busy-budget) while other processes were busy.
        Returns the worker's reply and the block kept."""
        args, monitor = self.args, self.monitor
        for attempt in range(args.busy_retries + 1):
            waited = 0.0
            if args.pause:
                budget = max(0.0, args.busy_budget - self.busy_spent)
                waited, _ = common.wait_quiet(monitor, args.busy_threshold, min(args.wait_quiet, budget), args.pause)
                self.busy_spent += waited - args.pause
            monitor.start()
            try:
                rep = worker.call("run", timeout=args.timeout, steps=rec["steps_per_round"])
            except S.WorkerError as e:
                rep = {"status": "error", "error": str(e)}
            if rep["status"] != "ok":
                return rep, None
            other = monitor.stop(rep["cpu_s"])
            block = {"round": r, "position": pos, "steps": rec["steps_per_round"], "wall_s": rep["wall_s"],
                     "cpu_s": rep["cpu_s"], "other_cpu": other, "waited_s": waited,
                     "examples_per_s": rec["steps_per_round"] * rec["batch_size"] / rep["wall_s"]}
            if (other is None or other <= args.busy_threshold or attempt == args.busy_retries
                    or self.busy_spent >= args.busy_budget):
                return rep, block
            self.busy_spent += rep["wall_s"]
            rec.setdefault("discarded_busy", []).append(block)
            log(f"  {rec['system']}: other processes used {other:.2f} CPUs during the block; repeating it")


def _summarize_rounds(rec):
    """A finished system's median and range over its rounds, in place of its per-round step count."""
    rounds = rec["rounds"]
    rec["examples_per_s"] = common.summarize([x["examples_per_s"] for x in rounds])
    rec["steps_per_block"] = common.summarize([x["steps"] for x in rounds])
    del rec["steps_per_round"]
    others = [x["other_cpu"] for x in rounds if x["other_cpu"] is not None]
    rec["other_cpu"] = common.summarize(others) if others else None


def _fail(rec, rep):
    if rep["status"] == "unavailable":
        rec["status"], rec["note"] = "skipped", rep["reason"]
        log(f"  {rec['system']}: skipped: {rep['reason']}")
    else:
        rec["status"], rec["note"] = "error", rep.get("error", "unknown error")
        log(f"  {rec['system']}: FAILED:\n{rec['note']}")
    rec.pop("rounds", None)


def add_comparisons(records, limit):
    """Ratios to torch-eager and jax-jit (same batch size) and % of the GEMM limit."""
    by = {(r["system"], r["batch_size"]): r for r in records}
    for r in records:
        med = (r.get("examples_per_s") or {}).get("median") if r["status"] == "ok" else None
        for ref in ("torch-eager", "jax-jit"):
            other = by.get((ref, r["batch_size"]))
            ref_med = (other.get("examples_per_s") or {}).get("median") if other and other["status"] == "ok" else None
            r[f"ratio_to_{ref.replace('-', '_')}"] = med / ref_med if med and ref_med else None
        r["percent_of_gemm_limit"] = 100.0 * med / limit if med and limit else None


def _ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def results_table(records, batch):
    rows = []
    for r in records:
        if r["batch_size"] != batch:
            continue
        if r["status"] != "ok":
            rows.append([r["system"], r["status"], "", "", "", "", "", "", ""])
            continue
        s, oc = r["examples_per_s"], r.get("other_cpu")
        rows.append([
            r["system"], common.fmt_rate(s["median"]), f"{common.fmt_rate(s['min'])}-{common.fmt_rate(s['max'])}",
            _ratio(r["ratio_to_torch_eager"]), _ratio(r["ratio_to_jax_jit"]),
            "-" if r["percent_of_gemm_limit"] is None else f"{r['percent_of_gemm_limit']:.1f}%",
            "-" if not oc else f"{oc['median']:.2f}", f"{s['n']} x {r['steps_per_block']['median']:.0f}",
            f"{r['first_step_s']:.2f}"])
    return common.markdown_table(
        ["system", "examples/s (median)", "min-max", "vs torch-eager", "vs jax-jit", "% GEMM limit",
         "other CPU", "rounds x steps", "first step (s)"], rows, "lrrrrrrrr")


# --------------------------------------------------------------------------
# the correctness check
# --------------------------------------------------------------------------

#: float32 tolerances of --check: |loss - ref| / |ref|, max |g - g_ref| / max |g_ref| per
#: parameter, and max |p - p_ref| after the first Adam step (see check())
CHECK_TOL = {"loss_rel": 1e-5, "grad_rel": 1e-4, "param_abs": 1e-5}


def check(args):
    """One step of every system from scratchvae-numpy's initial weights and one fixed eps.

    The first Adam step moves each weight by lr * g / (|g| + 1e-8), nearly
    lr * sign(g): a weight whose gradient is zero up to rounding may move by
    up to 2 * lr in one system and the other way in another. Such weights
    (|g_ref| below 1e-6 times the layer's largest gradient, unless both
    systems give exactly 0) are counted and left out of the parameter
    difference that decides the verdict; the difference over all weights is
    printed too.
    """
    import numpy as np
    batch = args.batch_sizes[0]
    x = S.make_pool(batch, args.seed)
    eps = np.random.default_rng([args.seed, 11]).standard_normal((batch, S.LATENT_DIM), dtype=np.float32)
    ref_sys = S.make_system("scratchvae-numpy", args.threads)
    ref_sys.setup(batch, args.seed)
    init = {k: np.array(v, copy=True) for k, v in ref_sys.model.params.items()}
    ref = ref_sys.check_step(x, eps)
    log(f"check: batch {batch}, seed {args.seed}; reference scratchvae-numpy: loss {ref['loss']:.6f}, "
        f"after one step {ref['loss_after']:.6f}")
    rows, ok, report = [], True, {}
    for name in args.systems:
        if name == "scratchvae-numpy":
            continue
        try:
            sys_ = S.make_system(name, args.threads, torch_options(args))
            sys_.setup(batch, args.seed)
            sys_.load_params(init)
            out = sys_.check_step(x, eps)
        except S.Unavailable as e:
            log(f"  {name}: skipped: {e}")
            report[name] = {"status": "skipped", "note": str(e)}
            continue
        d = compare_step(ref, out)
        report[name] = {"status": "ok", **d}
        bad = (d["loss_rel"] > CHECK_TOL["loss_rel"] or d["grad_rel"] > CHECK_TOL["grad_rel"]
               or d["param_abs"] > CHECK_TOL["param_abs"] or d["loss_after_rel"] > CHECK_TOL["loss_rel"])
        ok &= not bad
        rows.append([name, f"{out['loss']:.6f}", f"{d['loss_abs']:.2e}", f"{d['grad_abs']:.2e}",
                     f"{d['grad_rel']:.2e}", f"{d['param_abs']:.2e}", f"{d['param_abs_all']:.2e}",
                     str(d["sign_ties"]), f"{d['loss_after_abs']:.2e}", "FAIL" if bad else "ok"])
    print(common.markdown_table(
        ["system", "loss", "loss diff", "max grad diff", "max grad diff / max grad", "max param diff after Adam",
         "same, all weights", "near-zero grads left out", "loss diff after step", "verdict"], rows, "lrrrrrrrrl"))
    print(f"\nreference: scratchvae-numpy, loss {ref['loss']:.6f}; tolerances {CHECK_TOL}")
    return ok, report


def compare_step(ref, out):
    import numpy as np
    grad_abs = grad_rel = param_abs = param_all = 0.0
    ties = 0
    for k, g_ref in ref["grads"].items():
        g = np.asarray(out["grads"][k], dtype=np.float64).reshape(g_ref.shape)
        g_ref = g_ref.astype(np.float64)
        diff = np.abs(g - g_ref).max()
        scale = np.abs(g_ref).max()
        grad_abs = max(grad_abs, diff)
        grad_rel = max(grad_rel, diff / scale if scale > 0 else diff)
        tie = np.abs(g_ref) <= 1e-6 * scale
        ties += int((tie & ~((g_ref == 0) & (g == 0))).sum())      # equal zeros are no tie
        p = np.asarray(out["params"][k], dtype=np.float64).reshape(g_ref.shape)
        dp = np.abs(p - ref["params"][k].astype(np.float64))
        param_all = max(param_all, float(dp.max()))
        param_abs = max(param_abs, float(dp[~tie].max()) if (~tie).any() else 0.0)
    loss_abs = abs(out["loss"] - ref["loss"])
    after_abs = abs(out["loss_after"] - ref["loss_after"])
    return {"loss": out["loss"], "loss_abs": loss_abs, "loss_rel": loss_abs / abs(ref["loss"]),
            "grad_abs": float(grad_abs), "grad_rel": float(grad_rel), "param_abs": float(param_abs),
            "param_abs_all": float(param_all),
            "sign_ties": ties, "loss_after": out["loss_after"], "loss_after_abs": after_abs,
            "loss_after_rel": after_abs / abs(ref["loss_after"])}


def record_header(args, env, env_set, cpus, flops):
    """What the run is: options, machine, versions, threads, BLAS and the model's FLOP count."""
    return {
        "benchmark": "train_throughput",
        "schema": 1,
        "created": common.now_iso(),
        "command": [os.path.basename(sys.executable)] + sys.argv,
        "config": {k: getattr(args, k) for k in ("systems", "batch_sizes", "rounds", "steps", "block_time",
                                                 "warmup_time", "warmup_steps", "pause", "busy_threshold",
                                                 "wait_quiet", "busy_retries", "busy_budget", "pool_examples",
                                                 "seed", "quick", "neighbour")},
        "machine": common.machine_info(),
        "versions": common.package_versions(["numpy", "numba", "torch", "jax", "jaxlib", "scratchvae"]),
        "threads": {"requested": args.threads, "env": env_set, "torch_set_num_threads": args.threads,
                    "worker_cpus": cpus or common.cpu_affinity(),
                    "XLA_FLAGS": env["XLA_FLAGS"],
                    "jax_note": "XLA's CPU client sizes its intra-op pool by the CPUs the process may use; "
                                "the benchmark and its workers are pinned to --threads CPUs when fewer "
                                "than the machine has, and other CPU is then measured on those CPUs"},
        "blas": common.blas_info(),
        "torch_options": torch_options(args),
        "model": {"architecture": "784-400(ReLU)-[mu 20, logvar 20]; 20-400(ReLU)-784 logits; Bernoulli; "
                                  "Adam lr 1e-3; float32",
                  "data": "float32 grey levels uniform in [0, 1], a pre-generated pool; each step takes "
                          "the next batch",
                  "flop_per_example": flops},
    }


def add_results(record, args, results, peak_before, peak_after, busy_spent):
    """The sgemm peak and GEMM limit, each system's status and description, and the results."""
    peak = common.summarize(peak_before["gflops"] + peak_after["gflops"])
    limit = peak["median"] * 1e9 / record["model"]["flop_per_example"]["total"]
    add_comparisons(results, limit)
    try:
        load_end = list(os.getloadavg())
    except (AttributeError, OSError):
        load_end = None
    record["machine"]["load_average_at_end"] = load_end
    record["sgemm"] = {"n": args.sgemm_n, "threads": args.threads, "before": peak_before,
                       "after": peak_after, "gflops": peak, "gemm_limit_examples_per_s": limit}
    record["systems"] = {}
    for r in results:
        entry = record["systems"].setdefault(r["system"], {"status": r["status"]})
        if r.get("info"):
            entry["info"] = r["info"]
        if r["status"] != "ok":
            entry["status"], entry["note"] = r["status"], r.get("note")
    record["scratchvae"] = {r["system"]: {"backend": r["info"].get("backend"),
                                          "kernels_describe": r["info"].get("kernels_describe")}
                            for r in results if r["system"].startswith("scratchvae") and r.get("info")}
    record["results"] = results
    record["busy_seconds_spent"] = busy_spent


def report(args, record):
    """The machine, the sgemm peak, one table per batch size, skip notes and a warning on a busy machine."""
    results, flops, sgemm = record["results"], record["model"]["flop_per_example"], record["sgemm"]
    peak, limit = sgemm["gflops"], sgemm["gemm_limit_examples_per_s"]
    print(f"\n## Training throughput: 784-400-20 VAE, float32, Adam, {args.threads} threads\n")
    m = record["machine"]
    vers = ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v)
    print(f"{m['cpu_model']}, {m['logical_cpus']} CPUs; Python {m['python']}; {vers}")
    print(f"sgemm peak {peak['median']:.1f} GFLOP/s (np.matmul {args.sgemm_n}^2, min {peak['min']:.1f}, "
          f"max {peak['max']:.1f}); one step = {flops['total'] / 1e6:.2f} MFLOP/example of GEMM "
          f"-> GEMM limit {limit:,.0f} examples/s\n")
    for batch in args.batch_sizes:
        print(f"### batch {batch}\n")
        print(results_table(results, batch))
        print()
    notes = [f"- {r['system']} (batch {r['batch_size']}): {r['status']}: {r['note'].strip().splitlines()[-1]}"
             for r in results if r["status"] != "ok"]
    if notes:
        print("\n".join(notes) + "\n")
    busy = [r["other_cpu"]["median"] for r in results if r["status"] == "ok" and r.get("other_cpu")]
    if args.neighbour:
        print("Under load: a process spinning on one CPU ran beside every system (--neighbour).\n")
    if busy and max(busy) > 0.2 + args.neighbour:
        print(f"WARNING: other processes used up to {max(busy):.2f} CPUs (median over rounds) during the timed "
              f"blocks; the numbers are disturbed. Rerun on a quiet machine.\n")


def main(argv=None):
    args = parse_args(argv)
    env_set = common.apply_thread_env(args.threads)
    os.environ.setdefault("XLA_FLAGS", S.XLA_FLAGS_DEFAULT)
    if args.check:
        ok, _ = check(args)
        return 0 if ok else 1

    neighbour = None
    if args.neighbour:
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        args.busy_threshold += 1.0
    try:
        return _measure(args, env_set)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()


def _measure(args, env_set) -> int:
    t_start = time.perf_counter()
    import numpy as np  # noqa: F401  (after the thread settings: OpenBLAS reads them on load)
    env, cpus = worker_env(args), worker_cpus(args)
    if cpus:
        os.sched_setaffinity(0, cpus)    # the sgemm peak runs on the same CPUs as the workers
    flops = step_flops()
    record = record_header(args, env, env_set, cpus, flops)
    log(f"threads {args.threads}; FLOP per example of one step's GEMMs: forward {flops['forward'] / 1e6:.3f} M, "
        f"backward {flops['backward'] / 1e6:.3f} M, total {flops['total'] / 1e6:.3f} M")
    log(f"sgemm peak: np.matmul {args.sgemm_n}x{args.sgemm_n} float32 ...")
    measurement = Measurement(args, env, cpus)
    peak_before = measurement.sgemm()
    results = []
    for batch in args.batch_sizes:
        log(f"batch size {batch}:")
        results += measurement.batch_size(batch)
    add_results(record, args, results, peak_before, measurement.sgemm(), measurement.busy_spent)
    record["elapsed_s"] = time.perf_counter() - t_start
    report(args, record)
    json_path = common.output_path(args, "train_throughput")
    common.write_json(json_path, record)
    print(f"JSON record: {os.path.relpath(json_path)}")
    log(f"done in {record['elapsed_s']:.0f} s")
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
