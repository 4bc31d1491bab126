"""The model: encoder -> (mu, logvar) -> reparameterization -> decoder -> likelihood.

One forward gives, per example, the terms every objective is made of:

    nll       = -log p(x | z),                z = mu(x) + exp(logvar(x)/2) * eps
    kl        = KL(q(z|x) || N(0, I))          (analytic)
    kl_sample = log q(z|x) - log p(z)          (at the drawn z)

and one backward takes a weight per row for each of them and returns the
gradient of ``sum_r w_nll_r nll_r + sum_i w_kl_i kl_i + sum_r w_kl_sample_r kl_sample_r``.
The objectives are weightings of that one pair:

    ELBO (loss_and_grads)           w_nll = 1/n, w_kl = beta/n
    weighted (M2)                   w_nll = w, w_kl = beta w
    IWAE (iw_loss_and_grads)        w_nll = w_kl_sample = normalised importance weights / n
    DReG (iw_loss_and_grads(dreg=True))   the same, and path_scale = the normalised weights
    log p(x) (inference.evaluate)   the forward's log w = -(nll + kl_sample), no backward

Beyond the standard normal (each optional, each with its gradient by hand):

* ``prior="vamp"``: the VampPrior (Tomczak and Welling 2018),
  ``p(z) = 1/K sum_k q(z | u_k)`` with K learned pseudo-inputs ``prior.u``;
* ``flow="planar:L"``: L planar flows on q (Rezende and Mohamed 2015),
  ``z_L = f_L(... f_1(z_0))``, their parameters amortised (the head ``enc.flow``);
* ``path_scale`` in :meth:`backward` (DReG, Tucker et al. 2019): the encoder's
  gradient through z alone, without the score term of log q.

The prior and the flow are objects (``model.p_z``, ``model.q_flow``; see
``priors`` and ``flows``), so the model does not branch on which it holds.
With either of the first two the KL has no closed form: ``kl_sample`` is then
``log q(z_L|x) - log p(z_L)`` and ``kl`` is its mean over the samples (an
estimate, the same one the ELBO is trained on), and a weight on ``kl`` is a
weight on those samples (``latent.one_sample_kl``).

A conditional VAE (``context_dim > 0``) takes a context vector c with every
example (a one-hot label, an observed part of the image, any vector): the
encoder sees ``[x, c]`` and models q(z|x, c), the decoder sees ``[z, c]`` and
models p(x|z, c); the prior stays N(0, I). Every method then takes ``c``
(batch, context_dim).

Parameter names (``model.params``; gradients use the same keys):

    enc.0.W, enc.0.b, ... enc.{L-1}.*   encoder hidden layers, f(x @ W + b)
    enc.mu.W, enc.mu.b                   mean head (identity)
    enc.logvar.W, enc.logvar.b           log-variance head (identity)
    dec.0.W, ... dec.{L}.*               decoder layers; dec.{L} outputs the
                                         likelihood's parameters (identity)
    dec.log_sigma                        learned Gaussian sigma, if any
    enc.flow.W, enc.flow.b               the flow's parameters (u, w, b of each
                                         layer) per example, with flow="planar:L"
    prior.u                              the K pseudo-inputs (K, d), with prior="vamp"
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from .. import flat
from ..kernels import ops as K
from . import latent, layers, memory
from .workspace import Workspace
from .flows import NO_DENSITY_AT_Z, make_flow
from .likelihoods import make_likelihood
from .priors import make_prior


@dataclass
class Terms:
    """What one forward computes, per row.

    ``s`` samples of z per example; rows of the sampled quantities are
    sample-major (row ``t n + i`` is sample t of example i).
    """
    nll: np.ndarray         # (s n,) -log p(x | z), nats
    kl: np.ndarray          # (n,) analytic KL(q(z|x) || N(0, I)), nats; with a flow or a
                            # VampPrior the mean of kl_sample over the s samples
    kl_sample: np.ndarray   # (s n,) log q(z|x) - log p(z) at each z, nats
    mu: np.ndarray          # (n, k) posterior means (of q_0, before a flow)
    logvar: np.ndarray      # (n, k) posterior log-variances (of q_0)
    z: np.ndarray           # (s n, k) the drawn codes the decoder sees (z_L after a flow)
    eta: np.ndarray         # (s n, d) decoder outputs: the likelihood's parameters
    samples: int            # s

    @property
    def log_weight(self) -> np.ndarray:
        """``log w = log p(x, z) - log q(z|x) = -(nll + kl_sample)``, (s, n) float64."""
        return -(self.nll.astype(np.float64) + self.kl_sample).reshape(self.samples, -1)


class VAE:
    """A variational autoencoder with MLP encoder and decoder.

    Parameters
    ----------
    input_dim : size d of one flattened example.
    hidden : widths of the encoder's hidden layers; the decoder mirrors them
        (``hidden=[400]`` gives 784-400-(20, 20) and 20-400-784).
    latent_dim : size k of z.
    likelihood : ``bernoulli``, ``continuous_bernoulli``, ``gaussian_fixed``,
        ``gaussian_scalar`` or ``gaussian_pixel`` (see ``likelihoods``).
    activation : hidden-layer activation, one of ``kernels.ACTIVATIONS``.
    init : initialiser, one of ``layers.INITS`` (``torch`` = PyTorch's default).
    seed : seeds the initial weights.
    dtype : float32 (training) or float64 (gradient checks).
    sigma : fixed Gaussian sigma, or the starting value of a learned one.
    context_dim : size m of the context c of a conditional VAE (0: none).
    prior : ``standard`` (N(0, I)) or ``vamp`` (the VampPrior, with
        ``pseudo_inputs`` K >= 1 components; not with a context or a flow).
        The pseudo-inputs start as uniform noise in [0, 1] (drawn with
        ``seed``); :class:`~scratchvae.run.Run` starts them at K training images.
    flow : ``none`` or ``planar:L``, L planar flows on q with amortised parameters.

    No value is clamped: a logvar that overflows ``exp`` makes the loss
    non-finite, and :meth:`loss_and_grads` then raises ``FloatingPointError``.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int] = (400,), latent_dim: int = 20,
                 likelihood="bernoulli", activation: str = "relu", init: str = "torch",
                 seed: int = 0, dtype=np.float32, sigma: float = 1.0, context_dim: int = 0,
                 prior: str = "standard", pseudo_inputs: int = 0, flow: str = "none"):
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        for name, value in (("input_dim", input_dim), ("latent_dim", latent_dim)):
            if not (_whole(value) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Iterable):
            raise TypeError(f"hidden must be a list of positive integers, the encoder's layer widths "
                            f"(e.g. [400], or [] for none), got {hidden!r}")
        hidden = list(hidden)
        if not all(_whole(h) and h > 0 for h in hidden):
            raise ValueError(f"hidden must be a list of positive integers, the encoder's layer widths "
                             f"(e.g. [400], or [] for none), got {hidden!r}")
        if not (_whole(seed) and seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if not (isinstance(context_dim, (int, np.integer)) and context_dim >= 0):
            raise ValueError(f"context_dim must be an integer >= 0, got {context_dim!r}")
        self.context_dim = int(context_dim)
        #: the prior p(z) and the flow on q (see ``priors`` and ``flows``)
        self.p_z, self.q_flow = make_prior(prior, pseudo_inputs), make_flow(flow)
        check_variants(prior, flow, conditional=self.context_dim > 0)
        #: KL(q || p) in closed form: a prior the latent kernel's KL is against, and a Gaussian q (no flow)
        self.analytic_kl = self.p_z.closed_form_kl and not self.q_flow.layers
        self.activation = layers.check_activation(activation)
        self.likelihood = make_likelihood(likelihood, sigma)
        self.likelihood.check_dtype(self.dtype)
        # the decoder's sizes include every size the model has: MLP validates them
        self.decoder = layers.MLP("dec", [latent_dim + context_dim, *hidden[::-1], input_dim],
                                  [activation] * len(hidden) + ["identity"])
        self.encoder = layers.MLP("enc", [input_dim + context_dim, *hidden], [activation] * len(hidden))
        self.input_dim, self.hidden, self.latent_dim = int(input_dim), [int(h) for h in hidden], int(latent_dim)
        self.init, self.sigma = init, float(sigma)
        params = self._init_params(seed)
        # params and grads: plain dicts whose arrays are views into one flat buffer
        # each, so that an optimizer can update everything in one sweep
        self.params = flat.pack(params)
        self.grads = flat.zeros_like(params)
        self._workspaces: Dict[tuple, Workspace] = {}

    def _init_params(self, seed: int) -> Dict[str, np.ndarray]:
        """The initial parameters by name, after checking that they fit in memory;
        sets :attr:`likelihood_keys`.

        The variants' parameters (the flow's head, the pseudo-inputs) come
        from a generator of their own, so that every other weight is the
        standard VAE's of the same seed.
        """
        h_dim = self.hidden[-1] if self.hidden else self.input_dim + self.context_dim
        k, flow_width = self.latent_dim, self.q_flow.width(self.latent_dim)
        layer_shapes = [(layer.fan_in, layer.fan_out) for layer in self.encoder.layers + self.decoder.layers]
        layer_shapes += [(h_dim, k)] * 2 + ([(h_dim, flow_width)] if flow_width else [])
        memory.require(memory.init_bytes(layer_shapes, self.input_dim * (1 + self.pseudo_inputs),
                                         self.dtype.itemsize),
                       f"VAE({'-'.join(map(str, [self.input_dim, *self.hidden, k]))}): its "
                       "parameters and gradients")
        rng = np.random.default_rng(seed)
        params = self.encoder.init(rng, self.init, self.dtype)
        for head in ("mu", "logvar"):
            params[f"enc.{head}.W"], params[f"enc.{head}.b"] = layers.init_linear(
                rng, h_dim, k, self.init, self.dtype)
        params.update(self.decoder.init(rng, self.init, self.dtype))
        #: the likelihood's own parameters: their names for the likelihood -> keys of params
        self.likelihood_keys = {}
        for name, value in self.likelihood.init_params(self.input_dim, self.dtype).items():
            self.likelihood_keys[name] = "dec." + name
            params["dec." + name] = value
        variant_rng = np.random.default_rng([seed, 2])
        if flow_width:
            params["enc.flow.W"], params["enc.flow.b"] = layers.init_linear(
                variant_rng, h_dim, flow_width, self.init, self.dtype)
        if self.p_z.inputs is not None:
            params[self.p_z.inputs] = variant_rng.random((self.pseudo_inputs, self.input_dim)).astype(self.dtype)
        return params

    @property
    def prior(self) -> str:
        """The prior's name: ``standard`` or ``vamp``."""
        return self.p_z.name

    @property
    def pseudo_inputs(self) -> int:
        """The VampPrior's number of pseudo-inputs K (0 for N(0, I))."""
        return self.p_z.pseudo_inputs

    @property
    def flow(self) -> str:
        """The flow's spec: ``none`` or ``planar:L``."""
        return self.q_flow.spec

    @property
    def flow_layers(self) -> int:
        """The flow's number of layers L (0 without a flow)."""
        return self.q_flow.layers

    @property
    def flat_params(self) -> np.ndarray:
        """Every parameter in one 1-D buffer (``params`` are views into it)."""
        return self.params.buffer

    @property
    def flat_grads(self) -> np.ndarray:
        """Every gradient in one 1-D buffer (``grads`` are views into it)."""
        return self.grads.buffer

    @property
    def grad_buffers(self) -> tuple:
        """The 1-D buffers that hold every gradient: here one, :attr:`flat_grads`."""
        return (self.flat_grads,)

    @property
    def likelihood_params(self) -> Dict[str, np.ndarray]:
        """The likelihood's own parameters, by the likelihood's names (``{"log_sigma": ...}``)."""
        return {name: self.params[key] for name, key in self.likelihood_keys.items()}

    def config(self) -> dict:
        """The constructor arguments that fix the architecture (JSON-ready)."""
        return {"input_dim": self.input_dim, "hidden": list(self.hidden), "latent_dim": self.latent_dim,
                "likelihood": self.likelihood.name, "activation": self.activation, "init": self.init,
                "sigma": self.sigma, "dtype": self.dtype.name, "context_dim": self.context_dim,
                "prior": self.prior, "pseudo_inputs": self.pseudo_inputs, "flow": self.flow}

    @classmethod
    def from_config(cls, config: dict, seed: int = 0) -> "VAE":
        """A new model from :meth:`config`'s output (weights drawn with ``seed``)."""
        return cls(seed=seed, **config)

    # ------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------

    def _check_batch(self, x, name: str, dim: int, unit_interval: bool = False, scan: bool = True) -> np.ndarray:
        """x as (rows, dim) C-contiguous floats in the model's dtype; ``scan`` also reads
        every value (finite, in [0, 1] with ``unit_interval``)."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            hint = " (for 8-bit images: x.astype(np.float32) / 255)" if x.dtype == np.uint8 else ""
            raise TypeError(f"{name} must hold floats, got dtype {x.dtype}{hint}")
        if x.ndim != 2 or x.shape[1] != dim:
            hint = f"; flatten images with {name}.reshape(len({name}), -1)" if x.ndim > 2 else ""
            raise ValueError(f"{name} must have shape (batch, {dim}), got {x.shape}{hint}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {x.shape}); pass at least one example")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not scan:
            return x
        lo, hi = K.min_max(x)              # NaN propagates
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or inf; clean the data before training")
        if unit_interval and (lo < 0 or hi > 1):
            raise ValueError(f"{name} has values in [{lo:g}, {hi:g}] but the {self.likelihood.name} "
                             f"likelihood needs [0, 1]; scale the data (e.g. x / 255)")
        return x

    def check_x(self, x, scan: bool = True) -> np.ndarray:
        """x as the model computes with it: (batch, d) floats, C-contiguous, in the
        model's dtype, finite (and in [0, 1] for the Bernoulli likelihoods), or a
        ValueError/TypeError that says what is wrong. ``scan=False`` leaves the
        values unread: for rows of an array that was checked already."""
        return self._check_batch(x, "x", self.input_dim, self.likelihood.needs_unit_interval, scan)

    def check_c(self, c, n: int, scan: bool = True) -> Optional[np.ndarray]:
        """The context of n examples: None for a plain VAE, (n, m) floats for a
        conditional one (``scan`` as in :meth:`check_x`)."""
        if self.context_dim == 0:
            if c is not None:
                raise ValueError("this VAE has no context (context_dim=0): do not pass c")
            return None
        if c is None:
            raise ValueError(f"this conditional VAE needs its context c, shape (batch, {self.context_dim})")
        c = self._check_batch(c, "c", self.context_dim, scan=scan)
        if len(c) != n:
            raise ValueError(f"c has {len(c)} rows but the batch has {n}")
        return c

    def check_eps(self, eps, n: int) -> np.ndarray:
        """Fixed noise for n examples: (n, k) for one sample each or (s, n, k) for
        s; returned as (s n, k), sample-major."""
        shape = np.shape(eps)
        if len(shape) == 3 and shape[1:] == (n, self.latent_dim):
            eps = np.reshape(eps, (shape[0] * n, self.latent_dim))
        elif shape != (n, self.latent_dim):
            raise ValueError(f"eps must have shape ({n}, {self.latent_dim}) or (samples, {n}, "
                             f"{self.latent_dim}), got {shape}")
        return self._check_batch(eps, "eps", self.latent_dim)

    def _noise(self, n, samples, rng, eps, ws):
        if (rng is None) == (eps is None):
            raise ValueError("pass exactly one of rng (to draw eps) or eps (fixed noise)")
        if eps is None:
            return _check_rng(rng).standard_normal(dtype=self.dtype, out=ws.eps)
        eps = self.check_eps(eps, n)
        if len(eps) != samples * n:
            raise ValueError(f"eps has {len(eps) // n} samples per example, expected {samples}")
        return eps

    # ------------------------------------------------------------------
    # the model's maps
    # ------------------------------------------------------------------

    def _encode(self, x, c, ws, with_prior: bool = False):
        """The encoder's heads: ``(mu, logvar, lam, caches)``; lam (n, L (2k + 1)) is the
        flow's parameters (None without a flow).

        ``with_prior`` (the forward of a prior with inputs, the VampPrior's
        pseudo-inputs u): they are encoded in the same pass, as rows n.. of one
        batch ``[x; u]``, so that one backward adds the encoder's gradient at u
        to its gradient at x; mu and logvar then have n + K rows, the prior's
        components last.
        """
        p, scratch = self.params, ws.scratch
        if with_prior and self.p_z.inputs is not None:
            x = np.concatenate([x, p[self.p_z.inputs]], out=ws.x_enc)
        h, enc_cache = self.encoder.forward(p, x, ws.enc, c=c, scratch=scratch)
        head_c = None if self.encoder.layers else c   # no hidden layer: the heads see [x, c]
        mu, mu_cache = layers.linear_forward(h, p["enc.mu.W"], p["enc.mu.b"], out=ws.mu, c=head_c,
                                             scratch=scratch)
        logvar, lv_cache = layers.linear_forward(h, p["enc.logvar.W"], p["enc.logvar.b"], out=ws.logvar,
                                                 c=head_c, scratch=scratch)
        lam = lam_cache = None
        if self.q_flow.layers:
            lam, lam_cache = layers.linear_forward(h, p["enc.flow.W"], p["enc.flow.b"], out=ws.lam, c=head_c,
                                                   scratch=scratch)
        return mu, logvar, lam, (enc_cache, mu_cache, lv_cache, lam_cache)

    def _decode(self, z, c, ws):
        """Decoder output for the rows of z, each with its row of c."""
        return self.decoder.forward(self.params, z, ws.dec, c=c, scratch=ws.scratch)

    def encode(self, x, c=None):
        """x: (batch, d) -> (mu, logvar), each (batch, k): the posterior q(z|x) (or q(z|x, c));
        with a flow, those of q_0, the Gaussian the flow starts from."""
        x = self.check_x(x)
        c = self.check_c(c, len(x))
        mu, logvar, _, _ = self._encode(x, c, Workspace(self, len(x), 1, allocate=False))
        return mu, logvar

    def embed(self, x, c=None):
        """x: (batch, d) -> the code of each x for eps = 0, (batch, k): mu, or
        ``f_L(... f_1(mu))`` with a flow (what a sampler fitted to the codes sees)."""
        x = self.check_x(x)
        c = self.check_c(c, len(x))
        mu, _, lam, _ = self._encode(x, c, Workspace(self, len(x), 1, allocate=False))
        return self.q_flow.forward(mu, lam)[0]

    def pseudo_posteriors(self):
        """The VampPrior's components: ``(mu, logvar)``, each (K, k), the encoder at the pseudo-inputs."""
        if self.p_z.inputs is None:
            raise ValueError("this model's prior is N(0, I): it has no pseudo-inputs")
        mu, logvar, _, _ = self._encode(self.params[self.p_z.inputs], None,
                                        Workspace(self, self.pseudo_inputs, 1, allocate=False))
        return mu, logvar

    def _prior_components(self):
        """The prior's components, the encoder at its inputs (None for a prior without)."""
        return None if self.p_z.inputs is None else self.pseudo_posteriors()

    def prior_sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws of z from the prior, (n, k): N(0, I), or for the VampPrior a
        component k uniform in 1..K, then z ~ q(z | u_k)."""
        if not (_whole(n) and n >= 0):
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        return self.p_z.sample(n, self.latent_dim, _check_rng(rng), self.dtype, self._prior_components())

    def log_prior(self, z) -> np.ndarray:
        """``log p(z)`` per row of z (rows, k), float64: N(0, I) or the VampPrior."""
        return self.p_z.log_prob(z, self._prior_components())[0].astype(np.float64)

    def decode(self, z, c=None):
        """z: (batch, k) -> E[x | z] (or E[x | z, c]), (batch, d) (probabilities for Bernoulli)."""
        z = self._check_batch(z, "z", self.latent_dim)
        eta, _ = self._decode(z, self.check_c(c, len(z)), Workspace(self, len(z), 1, allocate=False))
        return self.likelihood.mean(eta, self.likelihood_params)

    def sample(self, n: int, rng: np.random.Generator, mean: bool = True, c=None, sampler=None):
        """Ancestral sampling: z from the prior, then the decoder (given c (n, m), if conditional).

        Returns (n, d): the likelihood's mean for each z (``mean=True``, the
        usual picture) or a draw x ~ p(x|z) (``mean=False``). ``sampler``:
        anything whose ``sample(n, rng)`` gives (n, k) codes (a fitted
        :class:`~scratchvae.inference.gmm.GaussianMixture`), used instead of the prior.
        """
        if not (isinstance(n, (int, np.integer)) and n > 0):
            raise ValueError(f"n must be a positive integer, got {n!r}")
        memory.require(memory.decode_bytes(self, n), f"sampling {n:,} examples from {self!r}")
        _check_rng(rng)
        c = self.check_c(c, n)
        z = self.prior_sample(n, rng) if sampler is None else self._check_batch(sampler.sample(n, rng), "z",
                                                                                 self.latent_dim)
        eta, _ = self._decode(z, c, Workspace(self, n, 1, allocate=False))
        lik = self.likelihood_params
        return self.likelihood.mean(eta, lik) if mean else self.likelihood.sample(eta, lik, rng)

    def log_joint(self, z, x, c=None):
        """``log p(x, z) = log p(x | z, c) + log p(z)`` per row, float64,
        and the decoder's output eta (from which ``likelihood.mean``/``sample`` draw).

        z: (n, k), x: (n, d), c: (n, m) if conditional. The decoder half of
        :meth:`forward`, for a z that was not drawn from q (a Markov chain's state).
        """
        x = self.check_x(x)
        z = self._check_batch(z, "z", self.latent_dim)
        if len(z) != len(x):
            raise ValueError(f"z has {len(z)} rows but x has {len(x)}")
        ws = Workspace(self, len(x), 1, allocate=False)
        eta, _ = self._decode(z, self.check_c(c, len(x)), ws)
        nll, _ = self.likelihood.nll(eta, x, self.likelihood_params, with_grad=False, scratch=ws.scratch)
        return self.log_prior(z) - nll.astype(np.float64), eta

    # ------------------------------------------------------------------
    # the one loss path: forward and weighted backward
    # ------------------------------------------------------------------

    def forward(self, x, eps, c=None, workspace=None, with_grad: bool = True):
        """Every per-example term of every objective, and what the backward needs.

        x: (n, d); eps: (n, k), or (s, n, k) for s samples of z per example;
        c: (n, m) if conditional. Returns ``(terms, cache)``: :class:`Terms`
        (nll, kl, kl_sample, ...) and the cache for :meth:`backward`.
        ``workspace``: buffers to compute in (a :meth:`workspace`); new
        arrays without one. ``with_grad=False`` (evaluation) skips the
        likelihood's gradient, which only the backward needs.
        """
        x = self.check_x(x)
        c = self.check_c(c, len(x))
        eps = self.check_eps(eps, len(x))
        samples = len(eps) // len(x)
        if workspace is None:
            workspace = Workspace(self, len(x), samples, allocate=False)
        elif (workspace.n, workspace.samples) != (len(x), samples):
            raise ValueError(f"the workspace is for {workspace.n} examples x {workspace.samples} samples, "
                             f"not {len(x)} x {samples}")
        return self._forward(x, c, eps, workspace, with_grad)

    def _forward(self, x, c, eps, ws, with_grad=True):
        """:meth:`forward` on checked arrays, in the buffers of ``ws``."""
        samples, n = ws.samples, len(x)
        mu, logvar, lam, enc_caches = self._encode(x, c, ws, with_prior=True)
        components = None
        if self.p_z.inputs is not None:                 # the encoder's last K rows: the prior's components
            components, mu, logvar = (mu[n:], logvar[n:]), mu[:n], logvar[:n]
        z, kl, kl_sample, lat_cache = latent.reparameterize(mu, logvar, eps, ws.z, ws.kl, ws.kl_sample)
        kl_cache = (z, None, None)
        if not self.analytic_kl:
            z, kl_cache = latent.one_sample_kl(lat_cache, lam, self.q_flow, self.p_z, components, kl, kl_sample)
        if samples > 1:                               # every sample of an example sees its x and c
            x = K.repeat_rows(x, samples, out=ws.x_rows)
            c = None if c is None else K.repeat_rows(c, samples, out=ws.c_rows)
        eta, dec_caches = self._decode(z, c, ws)
        nll, grad = self.likelihood.nll(eta, x, self.likelihood_params, ws.nll, ws.grad, with_grad, ws.scratch)
        terms = Terms(nll, kl, kl_sample, mu, logvar, z, eta, samples)
        return terms, (enc_caches, lat_cache, kl_cache, dec_caches, eta, x, grad, ws)

    def backward(self, cache, w_nll, w_kl=None, w_kl_sample=None, path_scale=None):
        """Gradient of ``sum_r w_nll_r nll_r + sum_i w_kl_i kl_i + sum_r w_kl_sample_r kl_sample_r``
        for every parameter, into ``self.grads`` (returned).

        ``cache`` from :meth:`forward`; per-row weights ``w_nll`` (s n,),
        ``w_kl`` (n,) and ``w_kl_sample`` (s n,), the last two None for 0. The
        weights of the nll are applied in the decoder's output layer, in the
        pass that computes its bias gradient.

        ``path_scale`` (s n,), for the doubly reparameterised gradient (DReG):
        the encoder then gets, from each row r, ``path_scale_r`` times that
        row's gradient through z alone, with log q's density held fixed (its
        path derivative; the score term of log q is left out). The decoder's
        and the prior's parameters keep the weights above. With
        ``w_nll = w_kl_sample = w~/n`` and ``path_scale = w~`` (the normalised
        importance weights) the encoder's gradient is Tucker et al.'s
        ``sum_r w~_r^2 d log w_r/dz_r dz_r/dphi / n``. Needs w_kl None and no flow.
        """
        enc_caches, lat_cache, kl_cache, dec_caches, eta, x, grad, ws = cache
        if grad is None:
            raise ValueError("this forward ran with with_grad=False: it has no backward")
        if path_scale is not None:
            if w_kl is not None:
                raise ValueError("the path derivative (DReG) takes the sampled terms only: pass w_kl None")
            check_variants(flow=self.flow, dreg=True)
        g = self.grads
        if self.likelihood_keys:
            self.likelihood.params_backward(eta, x, self.likelihood_params, w_nll,
                                            {name: g[key] for name, key in self.likelihood_keys.items()})
        d_z = self.decoder.backward(dec_caches, grad, g, d_ins=ws.d_dec, overwrite_d_y=True,
                                    row_scale=w_nll, scratch=ws.scratch)
        d_mu, d_logvar, d_lam = self._latent_backward(lat_cache, kl_cache, d_z, w_kl, w_kl_sample, path_scale, ws)
        self._encoder_backward(enc_caches, d_mu, d_logvar, d_lam, ws)
        return g

    def _latent_backward(self, lat_cache, kl_cache, d_z, w_kl, w_kl_sample, path_scale, ws):
        """From d_z at z_L (s n, k) to ``(d_mu, d_logvar, d_lam)``: the kernel's
        analytic backward where it applies, else the one-sample KL's. d_mu and
        d_logvar have the encoder's rows (n + K with the prior's components last)."""
        mu = lat_cache[0]
        (n, k), rows = mu.shape, len(d_z)
        d_mu = np.empty((n + self.pseudo_inputs, k), self.dtype) if ws.d_mu is None else ws.d_mu
        d_logvar = np.empty_like(d_mu) if ws.d_logvar is None else ws.d_logvar
        if self.analytic_kl and path_scale is None:
            latent.reparameterize_backward(lat_cache, d_z, w_kl, w_kl_sample, d_mu, d_logvar)
            return d_mu, d_logvar, None
        # every row's kl_sample weighs w_kl_sample_r + w_kl_i / s (kl is the mean of its s samples)
        w = np.zeros(rows, self.dtype) if w_kl_sample is None else np.array(w_kl_sample, self.dtype)
        if w_kl is not None:
            w += np.tile(np.asarray(w_kl, self.dtype) / (rows // n), rows // n)
        d_components, d_lam = latent.one_sample_kl_backward(lat_cache, kl_cache, d_z, w, self.q_flow, self.p_z,
                                                            d_mu[:n], d_logvar[:n], ws.d_lam, path_scale)
        if d_components is not None:
            d_mu[n:], d_logvar[n:] = d_components
        return d_mu, d_logvar, d_lam

    def _encoder_backward(self, enc_caches, d_mu, d_logvar, d_lam, ws):
        """From d_mu, d_logvar (and the flow's d_lam) through the heads and the encoder
        into ``self.grads``; for a prior with inputs on to them (the VampPrior's pseudo-inputs)."""
        g = self.grads
        enc_cache, mu_cache, lv_cache, lam_cache = enc_caches
        inputs = self.p_z.inputs
        need_d_x = inputs is not None
        need_d_h = bool(self.encoder.layers) or need_d_x    # without hidden layers h is x itself
        d_h, _ = layers.linear_backward(mu_cache, d_mu, need_d_h, g["enc.mu.W"], g["enc.mu.b"], ws.d_h,
                                        overwrite_d_y=True)
        # h feeds every head: the others' gradients add to the mu head's
        layers.linear_backward(lv_cache, d_logvar, need_d_h, g["enc.logvar.W"], g["enc.logvar.b"], d_h,
                               overwrite_d_y=True, accumulate_d_x=True, scratch=ws.scratch)
        if lam_cache is not None:
            layers.linear_backward(lam_cache, d_lam, need_d_h, g["enc.flow.W"], g["enc.flow.b"], d_h,
                                   overwrite_d_y=True, accumulate_d_x=True, scratch=ws.scratch)
        d_x = d_h
        if self.encoder.layers:
            d_x = self.encoder.backward(enc_cache, d_h, g, need_d_x=need_d_x, d_ins=ws.d_enc, overwrite_d_y=True)
        if need_d_x:
            g[inputs][...] = d_x[-self.pseudo_inputs:]

    # ------------------------------------------------------------------
    # objectives: weightings of forward and backward
    # ------------------------------------------------------------------

    def loss(self, x, rng: Optional[np.random.Generator] = None, eps=None, beta: float = 1.0, c=None):
        """The batch loss without gradients; same arguments as :meth:`loss_and_grads`."""
        terms, _, _ = self._elbo_forward(x, rng, eps, beta, c)
        return _means(terms, beta)

    def loss_and_grads(self, x, rng: Optional[np.random.Generator] = None, eps=None,
                       beta: float = 1.0, c=None, checked: bool = False):
        """Loss of one batch and the gradient of ``mean(nll + beta * kl)`` for every parameter.

        x: (batch, d) floats (in [0, 1] for the Bernoulli likelihoods).
        Pass ``rng`` to draw eps ~ N(0, I), or ``eps`` (batch, k) to fix it.
        ``c``: (batch, m), the context of a conditional VAE. ``checked``: x and c
        are rows of arrays checked already (a training loop's batches of loaded
        data), so their values are not read again; a NaN among them still
        surfaces as a non-finite loss.
        Returns ``(losses, grads)``: ``losses`` has the per-example means
        ``total``, ``nll`` and ``kl`` in nats (``total = nll + beta * kl``);
        ``grads`` has the keys of ``self.params``. ``grads`` is
        ``self.grads``: its arrays are overwritten by the next call (copy
        them to keep them), as are the workspaces this step computes in.
        """
        terms, cache, ws = self._elbo_forward(x, rng, eps, beta, c, checked)
        losses = _means(terms, beta)
        n = len(ws.w_nll)
        ws.w_nll.fill(1.0 / n)                       # the ELBO: every example weighs 1/n
        ws.w_kl.fill(beta / n)
        return losses, self.backward(cache, ws.w_nll, ws.w_kl)

    def weighted_loss_and_grads(self, x, weights, rng: Optional[np.random.Generator] = None, eps=None,
                                beta: float = 1.0, c=None, checked: bool = False):
        """Per-example losses ``l_i = nll_i + beta * kl_i`` and the gradient of
        ``sum_i w_i l_i``, for objectives that weight examples unequally (the
        semi-supervised M2 model weights each class's copy of an example by
        q(y|x)). weights: (batch,); other arguments as :meth:`loss_and_grads`.

        Returns ``(l, grads)`` with l (batch,) float64 in nats.
        """
        w = np.asarray(weights, dtype=self.dtype)
        if w.shape != (len(x),) or not np.all(np.isfinite(w)):
            raise ValueError(f"weights must be {len(x)} finite numbers, one per example, got shape {w.shape}")
        terms, cache, ws = self._elbo_forward(x, rng, eps, beta, c, checked)
        per_row = terms.nll.astype(np.float64) + beta * terms.kl.astype(np.float64)
        np.multiply(w, beta, out=ws.w_kl)
        return per_row, self.backward(cache, w, ws.w_kl)

    def iw_loss_and_grads(self, x, k: int, rng: Optional[np.random.Generator] = None, eps=None, c=None,
                          dreg: bool = False, checked: bool = False):
        """The importance-weighted bound (IWAE, Burda et al. 2016) of one batch and its gradient.

        ``L_k = log (1/k) sum_i w_i``, ``log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)
        = -(nll_i + kl_sample_i)``, ``z_i = mu + exp(logvar/2) eps_i``. Its gradient is
        ``sum_i w~_i grad log w_i`` with the normalised weights ``w~ = softmax(log w)``:
        the one backward with ``w_nll = w_kl_sample = w~ / batch``.

        ``dreg``: the encoder's gradient is instead the doubly reparameterised one
        (Tucker et al. 2019), ``sum_i w~_i^2 (d log w_i / dz_i) dz_i/dphi`` with q's
        density held fixed: the score-function term, whose variance grows with k
        (Rainforth et al. 2018), is replaced by its reparameterised equivalent. It
        has the same expectation; the decoder's (and the prior's) gradient is the
        IWAE one. Not with a flow (see :meth:`backward`).

        x: (batch, d); eps, if given: (k, batch, latent); c: (batch, m) if conditional;
        ``checked`` as in :meth:`loss_and_grads`.
        Returns ``(losses, grads)``: ``losses["total"]`` is ``-L_k`` averaged over the
        batch (nats); ``nll`` and ``kl`` are the single-sample ELBO parts of the first
        sample, for reference.
        """
        check_samples(k)
        check_variants(flow=self.flow, dreg=dreg)
        x = self.check_x(x, scan=not checked)
        b = len(x)
        c = self.check_c(c, b, scan=not checked)
        if eps is not None and np.shape(eps) != (k, b, self.latent_dim):
            raise ValueError(f"eps must have shape (k, batch, latent) = {(k, b, self.latent_dim)}, "
                             f"got {np.shape(eps)}")
        ws = self.workspace(b, k)
        terms, cache = self._forward(x, c, self._noise(b, k, rng, eps, ws), ws)
        bound, w = latent.importance_weights(terms.log_weight)
        total = float(-bound.mean())
        if not np.isfinite(total):
            raise _diverged(f"-L_k = {total}")
        np.divide(w.reshape(-1), b, out=ws.w_nll)    # w~ / batch, in the model's dtype
        path_scale = None
        if dreg:                                     # w~ on top of w~ / batch: w~^2 / batch on the path
            path_scale = ws.w_path
            path_scale[...] = w.reshape(-1)
        self.backward(cache, ws.w_nll, None, ws.w_nll, path_scale)
        return {"total": total, "nll": float(terms.nll[:b].mean()), "kl": float(terms.kl.mean())}, self.grads

    def _elbo_forward(self, x, rng, eps, beta, c, checked=False):
        """The one-sample forward in this batch size's workspace; raises on a non-finite loss."""
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        x = self.check_x(x, scan=not checked)
        c = self.check_c(c, len(x), scan=not checked)
        ws = self.workspace(len(x), 1)
        terms, cache = self._forward(x, c, self._noise(len(x), 1, rng, eps, ws), ws)
        nll, kl = float(terms.nll.mean()), float(terms.kl.mean())
        if not np.isfinite(nll + beta * kl):
            raise _diverged(f"nll={nll}, kl={kl}")
        return terms, cache, ws

    def workspace(self, n: int, samples: int = 1) -> Workspace:
        """The buffers of a training step on n examples with ``samples`` draws of
        z each: made once per shape and reused (a few shapes kept)."""
        key = (n, samples)
        ws = self._workspaces.get(key)
        if ws is None:
            memory.require(memory.step_bytes(self, n, samples),
                           f"a training step of {self!r} on {n:,} examples x {samples} samples")
            if len(self._workspaces) >= 4:
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[key] = Workspace(self, n, samples)
        return ws

    def __repr__(self):
        sizes = "-".join(map(str, [self.input_dim, *self.hidden, self.latent_dim]))
        if self.context_dim:
            sizes += f", context_dim={self.context_dim}"
        if self.pseudo_inputs:
            sizes += f", VampPrior K={self.pseudo_inputs}"
        if self.flow_layers:
            sizes += f", flow={self.flow}"
        return (f"VAE({sizes}, likelihood={self.likelihood.name}, activation={self.activation}, "
                f"dtype={self.dtype.name}, params={sum(v.size for v in self.params.values())})")


def check_variants(prior: str = "standard", flow: str = "none", conditional: bool = False,
                   dreg: bool = False) -> None:
    """The rules of which latent variants go together, one message each: the VAE
    and a run's configuration both call this. ``conditional``: a context c (a
    conditional VAE or M2); ``dreg``: the doubly reparameterised gradient."""
    density_at_z = make_flow(flow).density_at_z
    if prior == "vamp" and not density_at_z:
        raise ValueError("the VampPrior cannot go with a flow: its components are the encoder's posteriors, "
                         f"and {NO_DENSITY_AT_Z}")
    if prior == "vamp" and conditional:
        raise ValueError("the VampPrior encodes its pseudo-inputs without a context: it cannot go with a "
                         "conditional or semi-supervised model")
    if dreg and not density_at_z:
        raise ValueError(f"DReG needs log q(z|x) at a fixed z, and {NO_DENSITY_AT_Z}: "
                         "train a flow with the IWAE gradient (iw_gradient iwae)")


def check_samples(k) -> int:
    """k, the number of importance samples, if it is an integer >= 1."""
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k (importance samples) must be an integer >= 1, got {k!r}")
    return int(k)


def _means(terms: Terms, beta: float) -> dict:
    """The batch's losses in nats per example: ``total = nll + beta * kl``."""
    losses = {"nll": float(terms.nll.mean()), "kl": float(terms.kl.mean())}
    losses["total"] = losses["nll"] + beta * losses["kl"]
    return losses


def _whole(value) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_rng(rng) -> np.random.Generator:
    """``rng`` if it is a NumPy Generator, else TypeError naming it."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, e.g. np.random.default_rng(0), got {rng!r}")
    return rng


def _diverged(values: str) -> FloatingPointError:
    return FloatingPointError(f"the loss is not finite ({values}): the weights have diverged; "
                              "lower the learning rate or clip the gradient norm")
