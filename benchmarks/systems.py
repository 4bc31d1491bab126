"""The systems the training-throughput benchmark compares, and the worker that runs one.

Every system trains the same reference VAE, one step at a time:

    encoder  784 -> 400 ReLU -> (mu: 400 -> 20, logvar: 400 -> 20)
    z = mu + exp(logvar / 2) * eps,   eps ~ N(0, I) drawn by the system itself
    decoder  20 -> 400 ReLU -> 400 -> 784 logits
    loss = mean over the batch of [ BCE-with-logits summed over pixels
                                    + KL(q(z|x) || N(0, I)) summed over latent dims ]
    Adam, lr 1e-3, betas (0.9, 0.999), eps 1e-8; float32;
    PyTorch's default Linear init (W and b uniform in +-1/sqrt(fan_in)).

One step = forward, backward and the Adam update on one (batch, 784) float32
batch in [0, 1]. A system is a class with

    setup(batch_size, seed)     build the model and optimizer (not timed)
    prepare(pool)               split a NumPy pool of examples into per-step
                                batches in the system's own array type (not timed)
    begin_block()               called before every timed block
    step(x)                     one training step
    sync()                      wait until all queued work is done (JAX dispatches
                                asynchronously; the others are synchronous)
    describe()                  versions and settings, for the JSON record
    load_params(p), check_step(x, eps)
                                the correctness check: start from given weights
                                (scratchvae's layout, W of shape (fan_in, fan_out))
                                and take one step with given noise

Names: ``scratchvae-numpy``, ``scratchvae-numba`` (Numba kernels, BLAS
products), ``scratchvae-onepool`` (Numba kernels and the hand-written GEMM,
one thread pool for the whole step), ``torch-eager``, ``torch-compile``,
``jax-jit``. A system whose package (or scratchvae
backend) is missing raises :class:`Unavailable` and the benchmark skips it.

The benchmark runs each system in its own worker process
(``python systems.py --serve NAME``, one JSON request and one JSON reply per
line on stdin/stdout), so that no framework's thread pool, OpenMP runtime or
BLAS shares a process with another's, and each sees the thread settings of
the environment before it is imported.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import select
import subprocess
import sys
import time
import traceback
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

INPUT_DIM, HIDDEN_DIM, LATENT_DIM = 784, 400, 20
#: the five Linear layers, in scratchvae's parameter names: (name, fan_in, fan_out)
LAYERS = (
    ("enc.0", INPUT_DIM, HIDDEN_DIM),
    ("enc.mu", HIDDEN_DIM, LATENT_DIM),
    ("enc.logvar", HIDDEN_DIM, LATENT_DIM),
    ("dec.0", LATENT_DIM, HIDDEN_DIM),
    ("dec.1", HIDDEN_DIM, INPUT_DIM),
)
LR, BETA1, BETA2, ADAM_EPS = 1e-3, 0.9, 0.999, 1e-8

SYSTEMS = ("scratchvae-numpy", "scratchvae-numba", "scratchvae-onepool", "scratchvae-tuned", "torch-eager",
           "torch-compile", "jax-jit")

#: knobs of the PyTorch systems (the benchmark's --torch-* options set them)
TORCH_DEFAULTS = {"adam": "fused", "compile_mode": "default", "compile_optimizer": False}

#: what the jax-jit worker puts in XLA_FLAGS unless the user set XLA_FLAGS.
#: XLA's CPU client has no thread-count flag: its intra-op pool has one thread
#: per CPU the process may run on, so the benchmark limits the CPUs with the
#: process's affinity when --threads is below the CPU count.
XLA_FLAGS_DEFAULT = "--xla_cpu_multi_thread_eigen=true"


class Unavailable(Exception):
    """The system cannot run here (package not installed, backend not built)."""


def make_pool(n_examples: int, seed: int):
    """The data every system trains on: float32 grey levels uniform in [0, 1].

    Made with NumPy from ``seed`` so that all workers hold the same examples.
    """
    import numpy as np
    return np.random.default_rng([seed, 7]).random((n_examples, INPUT_DIM), dtype=np.float32)


def _jsonable(obj):
    """``obj`` made JSON-safe (unknown types become their str)."""
    return json.loads(json.dumps(obj, default=str))


class System:
    name = "?"

    def __init__(self, threads: int, options: dict):
        self.threads = threads
        self.options = options
        self.batch_size = None

    def setup(self, batch_size: int, seed: int) -> None:
        raise NotImplementedError

    def prepare(self, pool):
        n = len(pool) // self.batch_size
        if n < 1:
            raise ValueError(f"the pool holds {len(pool)} examples, fewer than one batch of {self.batch_size}")
        return [pool[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n)]

    def begin_block(self) -> None:
        pass

    def step(self, x) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def describe(self) -> dict:
        return {}

    def load_params(self, params) -> None:
        raise NotImplementedError

    def check_step(self, x, eps) -> dict:
        """One step from the loaded weights with noise ``eps``.

        Returns NumPy arrays in scratchvae's layout: ``loss`` (the batch loss
        before the update), ``grads`` and ``params`` (after the Adam update)
        as dicts keyed like scratchvae's parameters, and ``loss_after`` (the
        loss of the same x and eps with the updated weights).
        """
        raise NotImplementedError


# --------------------------------------------------------------------------
# scratchvae
# --------------------------------------------------------------------------

class ScratchVAE(System):
    """``sv.VAE(784, [400], 20)`` with ``sv.Adam`` on the backend ``numpy`` or ``numba``;
    ``gemm="numba"``: the products from the hand-written GEMM, the whole step in Numba's pool;
    ``tuned``: each step under the thread tuner, as the training loop runs it (kernels/threads.py:
    the thread count is then at most the benchmark's, chosen by timing steps)."""

    def __init__(self, threads, options, backend, gemm=None, name=None, tuned=False):
        super().__init__(threads, options)
        self.tuned = tuned
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)          # run from a checkout without installing
        import numpy as np

        import scratchvae as sv
        self.np, self.sv, self.backend, self.gemm = np, sv, backend, gemm
        self.name = name or f"scratchvae-{backend}"
        self.begin_block()

    def begin_block(self):
        # set_backend is global to the library: set it before every block
        try:
            self.sv.set_backend(self.backend, gemm=self.gemm)
        except (ValueError, ImportError) as e:
            raise Unavailable(f"scratchvae backend {self.backend!r} is not available: {e}") from None

    def setup(self, batch_size, seed):
        self.begin_block()
        self.batch_size = batch_size
        self.model = self.sv.VAE(INPUT_DIM, [HIDDEN_DIM], LATENT_DIM, seed=seed)
        self.opt = self.sv.Adam(self.model.params, lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS)
        self.rng = self.np.random.default_rng(seed)
        self.tuner = self.sv.kernels.thread_tuner() if self.tuned else None
        if self.tuned and self.tuner is None:
            raise Unavailable(f"the scratchvae backend {self.backend!r} cannot change its thread count mid-run")

    def step(self, x):
        # as the training loop steps: the pool was checked when it was made, so no step rescans it
        if self.tuner is None:
            self._step(x)
        else:
            with self.tuner.step(len(x)):
                self._step(x)

    def _step(self, x):
        _losses, grads = self.model.loss_and_grads(x, rng=self.rng, checked=True)
        self.opt.step(grads)

    def describe(self):
        sv = self.sv
        info = {"scratchvae": getattr(sv, "__version__", None), "backend": sv.get_backend(),
                "model": repr(getattr(self, "model", None))}
        describe = getattr(sv.kernels, "describe", None)
        if callable(describe):
            try:
                info["kernels_describe"] = _jsonable(describe())
            except Exception as e:                      # report, do not fail the run
                info["kernels_describe"] = f"describe() failed: {e!r}"
        if self.backend == "numba":
            info["numba"] = numba_info()
        tuner = getattr(self, "tuner", None)
        if tuner is not None:
            info["thread_tuner"] = {"threads": tuner.threads, "max_threads": tuner.max_threads,
                                    "measurements": len(tuner.log), "last": _jsonable(tuner.log[-1:])}
        return info

    def load_params(self, params):
        for k, v in params.items():
            self.model.params[k][...] = v           # in place: the optimizer holds these arrays

    def check_step(self, x, eps):
        np = self.np
        self.begin_block()
        losses, grads = self.model.loss_and_grads(x, eps=eps)
        grads = {k: np.array(g, copy=True) for k, g in grads.items()}   # may be reused buffers
        self.opt.step(grads)
        params = {k: np.array(p, copy=True) for k, p in self.model.params.items()}
        after = self.model.loss(x, eps=eps)["total"]
        return {"loss": float(losses["total"]), "grads": grads, "params": params, "loss_after": float(after)}


def numba_info() -> dict:
    """Numba's version, thread count and threading layer.

    ``numba.threading_layer()`` only answers once a parallel kernel has run;
    if the library has not run one, a one-line ``prange`` kernel is run here
    first, and ``probed`` says so.
    """
    import numba
    info = {"version": numba.__version__, "num_threads": numba.config.NUMBA_NUM_THREADS,
            "threading_layer_requested": numba.config.THREADING_LAYER, "probed": False}
    try:
        info["threading_layer"] = numba.threading_layer()
    except ValueError:
        import numpy as np

        @numba.njit(parallel=True)
        def _probe(a):
            s = 0.0
            for i in numba.prange(a.size):
                s += a[i]
            return s

        _probe(np.ones(64))
        info["threading_layer"] = numba.threading_layer()
        info["probed"] = True
    return info


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------

def _torch_module(torch):
    nn, F = torch.nn, torch.nn.functional

    class TorchVAE(nn.Module):
        """The reference model; ``forward(x, eps)`` returns the batch loss."""

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(INPUT_DIM, HIDDEN_DIM)      # enc.0
            self.fc21 = nn.Linear(HIDDEN_DIM, LATENT_DIM)    # enc.mu
            self.fc22 = nn.Linear(HIDDEN_DIM, LATENT_DIM)    # enc.logvar
            self.fc3 = nn.Linear(LATENT_DIM, HIDDEN_DIM)     # dec.0
            self.fc4 = nn.Linear(HIDDEN_DIM, INPUT_DIM)      # dec.1

        def forward(self, x, eps):
            h = F.relu(self.fc1(x))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + torch.exp(0.5 * logvar) * eps
            logits = self.fc4(F.relu(self.fc3(z)))
            bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar)
            return (bce + kl) / x.shape[0]

    return TorchVAE()


def _inductor_cache_dir(torch):
    """Where Inductor keeps compiled kernels (a warm cache shortens the first step)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        return cache_dir()
    except Exception:
        return os.environ.get("TORCHINDUCTOR_CACHE_DIR")


TORCH_NAMES = {"enc.0": "fc1", "enc.mu": "fc21", "enc.logvar": "fc22", "dec.0": "fc3", "dec.1": "fc4"}


class TorchSystem(System):
    """PyTorch eager, or with ``torch.compile`` of the model and loss.

    Compiling the model+loss lets AOTAutograd compile the backward as well;
    ``loss.backward()`` and the optimizer stay outside the compiled region
    (the optimizer is compiled too with ``compile_optimizer``). The Adam
    implementation is ``options["adam"]``: ``fused`` (one kernel per
    parameter; the fastest on this project's CPU), ``foreach`` or
    ``forloop`` (PyTorch's CPU default).
    """

    def __init__(self, threads, options, compiled):
        super().__init__(threads, options)
        try:
            import torch
        except ImportError:
            raise Unavailable("torch is not installed (pip install torch==2.13.0)") from None
        self.torch = torch
        self.compiled = compiled
        self.name = "torch-compile" if compiled else "torch-eager"
        torch.set_num_threads(threads)
        self.opts = {**TORCH_DEFAULTS, **{k: v for k, v in options.items() if k in TORCH_DEFAULTS}}

    def setup(self, batch_size, seed):
        torch = self.torch
        self.batch_size = batch_size
        torch.manual_seed(seed)
        self.model = _torch_module(torch)
        adam = self.opts["adam"]
        kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[adam]
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=ADAM_EPS, **kw)
        self.loss_fn, self.opt_step = self.model, self.opt.step
        if self.compiled:
            mode = self.opts["compile_mode"]
            self.loss_fn = torch.compile(self.model, mode=None if mode == "default" else mode, dynamic=False)
            if self.opts["compile_optimizer"]:
                opt = self.opt

                @torch.compile(fullgraph=False)
                def opt_step():
                    opt.step()

                self.opt_step = opt_step

    def prepare(self, pool):
        # from_numpy shares the pool's memory: no copy inside the timed steps
        return [self.torch.from_numpy(b) for b in super().prepare(pool)]

    def _step(self, x, eps):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(x, eps)
        loss.backward()
        self.opt_step()
        return loss

    def step(self, x):
        self._step(x, self.torch.randn(x.shape[0], LATENT_DIM))

    def describe(self):
        torch = self.torch
        par = torch.__config__.parallel_info()
        keep = [ln.strip() for ln in par.splitlines()
                if any(s in ln for s in ("get_num_threads", "ATen parallel backend", "Math Kernel", "MKL-DNN",
                                         "OpenMP", "mkl_get_max_threads"))]
        return {"torch": torch.__version__, "num_threads": torch.get_num_threads(),
                "interop_threads": torch.get_num_interop_threads(), "parallel_info": keep,
                "mkldnn": torch.backends.mkldnn.is_available(), "adam": self.opts["adam"],
                "compiled": self.compiled,
                "compile_mode": self.opts["compile_mode"] if self.compiled else None,
                "compile_optimizer": bool(self.compiled and self.opts["compile_optimizer"]),
                "eps": "torch.randn outside the compiled region, one (batch, 20) draw per step",
                "inductor_cache_dir": _inductor_cache_dir(torch) if self.compiled else None}

    def load_params(self, params):
        torch = self.torch
        with torch.no_grad():
            for name, mod in TORCH_NAMES.items():
                layer = getattr(self.model, mod)
                layer.weight.copy_(torch.from_numpy(params[name + ".W"].T.copy()))   # (out, in)
                layer.bias.copy_(torch.from_numpy(params[name + ".b"]))

    def check_step(self, x, eps):
        torch = self.torch
        x_t, eps_t = torch.from_numpy(x), torch.from_numpy(eps)
        loss = self._step(x_t, eps_t)
        grads, params = {}, {}
        for name, mod in TORCH_NAMES.items():
            layer = getattr(self.model, mod)
            grads[name + ".W"] = layer.weight.grad.detach().numpy().T.copy()
            grads[name + ".b"] = layer.bias.grad.detach().numpy().copy()
            params[name + ".W"] = layer.weight.detach().numpy().T.copy()
            params[name + ".b"] = layer.bias.detach().numpy().copy()
        with torch.no_grad():
            after = self.loss_fn(x_t, eps_t)
        return {"loss": float(loss.detach()), "grads": grads, "params": params, "loss_after": float(after)}


# --------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------

def _jax_functions(jax):
    """Pure functions of the model, loss and a hand-written Adam."""
    jnp = jax.numpy

    def init_params(key):
        params = {}
        for name, fan_in, fan_out in LAYERS:
            key, kw, kb = jax.random.split(key, 3)
            bound = 1.0 / math.sqrt(fan_in)
            params[name + ".W"] = jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound)
            params[name + ".b"] = jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)
        return params

    def loss_fn(p, x, eps):
        h = jax.nn.relu(x @ p["enc.0.W"] + p["enc.0.b"])
        mu = h @ p["enc.mu.W"] + p["enc.mu.b"]
        logvar = h @ p["enc.logvar.W"] + p["enc.logvar.b"]
        z = mu + jnp.exp(0.5 * logvar) * eps
        logits = jax.nn.relu(z @ p["dec.0.W"] + p["dec.0.b"]) @ p["dec.1.W"] + p["dec.1.b"]
        # BCE with logits, stable for any sign: max(l, 0) - x l + log(1 + exp(-|l|))
        bce = jnp.sum(jnp.maximum(logits, 0) - x * logits + jnp.log1p(jnp.exp(-jnp.abs(logits))))
        kl = 0.5 * jnp.sum(mu * mu + jnp.exp(logvar) - 1.0 - logvar)
        return (bce + kl) / x.shape[0]

    def adam(params, grads, m, v, t):
        t = t + 1
        tf = t.astype(jnp.float32)
        c1, c2 = 1.0 - BETA1 ** tf, 1.0 - BETA2 ** tf
        m = jax.tree_util.tree_map(lambda m_, g: BETA1 * m_ + (1.0 - BETA1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: BETA2 * v_ + (1.0 - BETA2) * g * g, v, grads)
        params = jax.tree_util.tree_map(
            lambda p, m_, v_: p - LR * (m_ / c1) / (jnp.sqrt(v_ / c2) + ADAM_EPS), params, m, v)
        return params, m, v, t

    def update(params, m, v, t, x, eps):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, eps)
        params, m, v, t = adam(params, grads, m, v, t)
        return params, m, v, t, loss, grads

    def train_step(state, x):
        params, m, v, t, key = state
        key, sub = jax.random.split(key)
        eps = jax.random.normal(sub, (x.shape[0], LATENT_DIM), jnp.float32)
        params, m, v, t, loss, _ = update(params, m, v, t, x, eps)
        return (params, m, v, t, key), loss

    return init_params, loss_fn, update, train_step


class JaxSystem(System):
    """The step as one ``jax.jit`` function: model, ``value_and_grad``, Adam and
    the eps draw (``jax.random``); the state (params, moments, step, key) is
    donated so XLA updates it in place."""

    name = "jax-jit"

    def __init__(self, threads, options):
        super().__init__(threads, options)
        try:
            import jax
            import jax.numpy
        except ImportError:
            raise Unavailable("jax is not installed (pip install jax jaxlib)") from None
        self.jax = jax
        self.init_params, self.loss_fn, self.update, train_step = _jax_functions(jax)
        self._train_step = jax.jit(train_step, donate_argnums=(0,))

    def _fresh_state(self, params, key):
        def zeros():
            return self.jax.tree_util.tree_map(self.jax.numpy.zeros_like, params)

        return (params, zeros(), zeros(), self.jax.numpy.zeros((), self.jax.numpy.int32), key)

    def setup(self, batch_size, seed):
        self.batch_size = batch_size
        key, sub = self.jax.random.split(self.jax.random.PRNGKey(seed))
        self.state = self._fresh_state(self.init_params(sub), key)
        self.loss = None

    def prepare(self, pool):
        return [self.jax.device_put(b) for b in super().prepare(pool)]

    def step(self, x):
        self.state, self.loss = self._train_step(self.state, x)

    def sync(self):
        self.jax.block_until_ready((self.state, self.loss))

    def describe(self):
        jax = self.jax
        import jaxlib
        return {"jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", None),
                "devices": [str(d) for d in jax.devices()], "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
                "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                "adam": "hand-written in jax.numpy", "donate_argnums": [0],
                "eps": "jax.random.normal inside the jitted step"}

    def load_params(self, params):
        jnp = self.jax.numpy
        p = {k: jnp.asarray(v) for k, v in params.items()}
        self.state = self._fresh_state(p, self.state[4])

    def check_step(self, x, eps):
        import numpy as np
        jax = self.jax
        params, m, v, t, key = self.state
        update = jax.jit(self.update)
        new_params, m, v, t, loss, grads = update(params, m, v, t, x, eps)
        self.state = (new_params, m, v, t, key)
        after = jax.jit(self.loss_fn)(new_params, x, eps)
        def to_np(d):
            return {k: np.asarray(a) for k, a in d.items()}

        return {"loss": float(loss), "grads": to_np(grads), "params": to_np(new_params),
                "loss_after": float(after)}


def make_system(name: str, threads: int, options: Optional[dict] = None) -> System:
    options = options or {}
    if name == "scratchvae-numpy":
        return ScratchVAE(threads, options, "numpy")
    if name == "scratchvae-numba":
        return ScratchVAE(threads, options, "numba", gemm="blas")
    if name in ("scratchvae-onepool", "scratchvae-tuned"):
        return ScratchVAE(threads, options, "numba", gemm="numba", name=name, tuned=name == "scratchvae-tuned")
    if name in ("torch-eager", "torch-compile"):
        return TorchSystem(threads, options, compiled=name == "torch-compile")
    if name == "jax-jit":
        return JaxSystem(threads, options)
    raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")


# --------------------------------------------------------------------------
# the worker process
# --------------------------------------------------------------------------

def serve(name: str, threads: int, options: dict) -> None:
    """Answer requests on stdin, one JSON object per line, until ``quit`` or EOF.

    Requests: ``setup`` (batch_size, seed, pool_examples), ``warmup``
    (min_time, min_steps), ``run`` (steps), ``describe``, ``quit``. Replies
    carry ``status``: ``ok``, ``unavailable`` (with ``reason``) or ``error``
    (with the traceback). Anything a library prints goes to stderr: the
    protocol owns the real stdout.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    system = batches = None
    index = 0
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        try:
            if cmd == "quit":
                reply = {"status": "ok"}
            elif cmd == "setup":
                t0 = time.perf_counter()
                system = make_system(name, threads, options)
                system.setup(req["batch_size"], req["seed"])
                batches = system.prepare(make_pool(req["pool_examples"], req["seed"]))
                reply = {"status": "ok", "setup_s": time.perf_counter() - t0, "pool_batches": len(batches)}
            elif cmd == "warmup":
                reply = _warmup(system, batches, req["min_time"], req["min_steps"])
                index = reply.pop("index")
            elif cmd == "run":
                steps = int(req["steps"])
                system.begin_block()
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(steps):
                    system.step(batches[index % len(batches)])
                    index += 1
                system.sync()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                reply = {"status": "ok", "wall_s": wall, "cpu_s": cpu}
            elif cmd == "describe":
                reply = {"status": "ok", "info": _jsonable(system.describe())}
            else:
                reply = {"status": "error", "error": f"unknown request {cmd!r}"}
        except Unavailable as e:
            reply = {"status": "unavailable", "reason": str(e)}
        except Exception:
            reply = {"status": "error", "error": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        if cmd == "quit":
            break


def _warmup(system, batches, min_time, min_steps):
    """The first step alone (it includes any compilation), then steps until
    ``min_time`` seconds and ``min_steps`` steps have passed. ``step_s`` is
    the fastest of the later half of the steps (other load on the machine
    only makes steps slower, so the minimum is the stable estimate), and
    ``median_step_s`` their median."""
    system.begin_block()
    t0 = time.perf_counter()
    system.step(batches[0])
    system.sync()
    first = time.perf_counter() - t0
    times, index, start = [], 1, time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        system.step(batches[index % len(batches)])
        system.sync()
        times.append(time.perf_counter() - t)
        index += 1
    tail = sorted(times[len(times) // 2:]) or [first]
    return {"status": "ok", "first_step_s": first, "steps": len(times), "time_s": time.perf_counter() - start,
            "step_s": tail[0], "median_step_s": tail[len(tail) // 2], "index": index}


class WorkerError(RuntimeError):
    pass


class Worker:
    """The benchmark's handle on one ``serve`` process."""

    def __init__(self, name: str, threads: int, env: dict, options: dict, cpus=None):
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", name, "--threads", str(threads),
               "--options", json.dumps(options)]
        if cpus:
            cmd += ["--cpus", ",".join(map(str, cpus))]
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True, bufsize=1)

    def call(self, cmd: str, timeout: float = 600.0, **kw) -> dict:
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError(f"{self.name}: the worker has exited (code {self.proc.poll()})") from None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"{self.name}: no answer to {cmd!r} within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"{self.name}: the worker exited (code {self.proc.wait()}) during {cmd!r}")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit", timeout=30)
            except (WorkerError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Worker process of benchmarks/train_throughput.py "
                                 "(not meant to be run by hand).")
    ap.add_argument("--serve", required=True, choices=SYSTEMS, help="the system this worker runs")
    ap.add_argument("--threads", type=int, required=True,
                    help="torch.set_num_threads; the parent sets the thread variables")
    ap.add_argument("--options", default="{}", help="JSON dict of system options")
    ap.add_argument("--cpus", default=None, help="comma-separated CPUs to run on")
    args = ap.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, [int(c) for c in args.cpus.split(",")])
    serve(args.serve, args.threads, json.loads(args.options))


if __name__ == "__main__":
    main()
