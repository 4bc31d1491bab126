"""The model: encoder -> (mu, logvar) -> reparameterization -> decoder -> likelihood.

The loss of one batch, in nats per example (averaged over the batch), is the
negative ELBO with a KL weight beta:

    total = nll + beta * kl,
    nll   = -log p(x | z),                z = mu(x) + exp(logvar(x)/2) * eps
    kl    = KL(q(z|x) || N(0, I))         (analytic)

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
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from . import distributions as D
from . import flat, nn


class VAE:
    """A variational autoencoder with MLP encoder and decoder.

    Parameters
    ----------
    input_dim : size d of one flattened example.
    hidden : widths of the encoder's hidden layers; the decoder mirrors them
        (``hidden=[400]`` gives 784-400-(20, 20) and 20-400-784).
    latent_dim : size k of z.
    likelihood : ``bernoulli``, ``continuous_bernoulli``, ``gaussian_fixed``,
        ``gaussian_scalar`` or ``gaussian_pixel`` (see ``distributions``).
    activation : hidden-layer activation, one of ``nn.ACTIVATIONS``.
    init : initialiser, one of ``nn.INITS`` (``torch`` = PyTorch's default).
    seed : seeds the initial weights.
    dtype : float32 (training) or float64 (gradient checks).
    sigma : fixed Gaussian sigma, or the starting value of a learned one.
    context_dim : size m of the context c of a conditional VAE (0: none).

    No value is clamped: a logvar that overflows ``exp`` makes the loss
    non-finite, and :meth:`loss_and_grads` then raises ``FloatingPointError``.
    """

    def __init__(self, input_dim: int, hidden: Sequence[int] = (400,), latent_dim: int = 20,
                 likelihood="bernoulli", activation: str = "relu", init: str = "torch",
                 seed: int = 0, dtype=np.float32, sigma: float = 1.0, context_dim: int = 0):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        hidden = list(hidden)
        if not (isinstance(context_dim, (int, np.integer)) and context_dim >= 0):
            raise ValueError(f"context_dim must be an integer >= 0, got {context_dim!r}")
        self.context_dim = int(context_dim)
        self.activation = nn.check_activation(activation)
        self.likelihood = D.make_likelihood(likelihood, sigma)
        # the decoder's sizes include every size the model has: MLP validates them
        self.decoder = nn.MLP("dec", [latent_dim + context_dim, *hidden[::-1], input_dim],
                              [activation] * len(hidden) + ["identity"])
        self.encoder = nn.MLP("enc", [input_dim + context_dim, *hidden], [activation] * len(hidden))
        self.input_dim, self.hidden, self.latent_dim = int(input_dim), [int(h) for h in hidden], int(latent_dim)
        h_dim = self.hidden[-1] if hidden else self.input_dim + self.context_dim
        self.init, self.sigma = init, float(sigma)
        rng = np.random.default_rng(seed)
        params = self.encoder.init(rng, init, self.dtype)
        for head in ("mu", "logvar"):
            params[f"enc.{head}.W"], params[f"enc.{head}.b"] = nn.init_linear(
                rng, h_dim, latent_dim, init, self.dtype)
        params.update(self.decoder.init(rng, init, self.dtype))
        for k, v in self.likelihood.init_params(input_dim, self.dtype).items():
            params["dec." + k] = v
        # params and grads: plain dicts whose arrays are views into one flat buffer
        # each, so that an optimizer can update everything in one sweep
        self.flat_params, self.params = flat.pack(params)
        self.flat_grads, self.grads = flat.zeros_like(params)
        self._workspaces: Dict[int, _Workspace] = {}

    def config(self) -> dict:
        """The constructor arguments that fix the architecture (JSON-ready)."""
        return {"input_dim": self.input_dim, "hidden": list(self.hidden), "latent_dim": self.latent_dim,
                "likelihood": self.likelihood.name, "activation": self.activation, "init": self.init,
                "sigma": self.sigma, "dtype": self.dtype.name, "context_dim": self.context_dim}

    @classmethod
    def from_config(cls, config: dict, seed: int = 0) -> "VAE":
        """A new model from :meth:`config`'s output (weights drawn with ``seed``)."""
        return cls(seed=seed, **config)

    # ------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------

    def _check_batch(self, x, name: str, dim: int, unit_interval: bool = False) -> np.ndarray:
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
        lo, hi = x.min(), x.max()          # NaN propagates through min/max
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or inf; clean the data before training")
        if unit_interval and (lo < 0 or hi > 1):
            raise ValueError(f"{name} has values in [{lo:g}, {hi:g}] but the {self.likelihood.name} "
                             f"likelihood needs [0, 1]; scale the data (e.g. x / 255)")
        return x

    def _check_x(self, x):
        return self._check_batch(x, "x", self.input_dim, self.likelihood.needs_unit_interval)

    def _check_c(self, c, n: int):
        """The context of n examples: None for a plain VAE, (n, m) floats for a conditional one."""
        if self.context_dim == 0:
            if c is not None:
                raise ValueError("this VAE has no context (context_dim=0): do not pass c")
            return None
        if c is None:
            raise ValueError(f"this conditional VAE needs its context c, shape (batch, {self.context_dim})")
        c = self._check_batch(c, "c", self.context_dim)
        if len(c) != n:
            raise ValueError(f"c has {len(c)} rows but the batch has {n}")
        return c

    @staticmethod
    def _join(a, c):
        """``[a, c]`` along the features (a itself without a context)."""
        return a if c is None else np.concatenate([a, c], axis=1)

    def _noise(self, n, rng, eps, out):
        if (rng is None) == (eps is None):
            raise ValueError("pass exactly one of rng (to draw eps) or eps (fixed noise)")
        if eps is None:
            return rng.standard_normal(dtype=self.dtype, out=out)
        eps = self._check_batch(eps, "eps", self.latent_dim)
        if len(eps) != n:
            raise ValueError(f"eps has {len(eps)} rows but x has {n}")
        return eps

    @property
    def _likelihood_keys(self):
        return [k for k in self.params if k.startswith("dec.") and k.count(".") == 1]

    @property
    def _likelihood_params(self):
        return {k[4:]: self.params[k] for k in self._likelihood_keys}

    # ------------------------------------------------------------------
    # the model's maps
    # ------------------------------------------------------------------

    def _encode(self, x, ws=None, c=None):
        p = self.params
        h, enc_cache = self.encoder.forward(p, self._join(x, c), None if ws is None else ws.enc)
        mu, mu_cache = nn.linear_forward(h, p["enc.mu.W"], p["enc.mu.b"], out=ws and ws.mu)
        logvar, lv_cache = nn.linear_forward(h, p["enc.logvar.W"], p["enc.logvar.b"], out=ws and ws.logvar)
        return mu, logvar, (enc_cache, mu_cache, lv_cache)

    def encode(self, x, c=None):
        """x: (batch, d) -> (mu, logvar), each (batch, k): the posterior q(z|x) (or q(z|x, c))."""
        x = self._check_x(x)
        mu, logvar, _ = self._encode(x, c=self._check_c(c, len(x)))
        return mu, logvar

    def decode(self, z, c=None):
        """z: (batch, k) -> E[x | z] (or E[x | z, c]), (batch, d) (probabilities for Bernoulli)."""
        z = self._check_batch(z, "z", self.latent_dim)
        out, _ = self.decoder.forward(self.params, self._join(z, self._check_c(c, len(z))))
        return self.likelihood.mean(out, self._likelihood_params)

    def sample(self, n: int, rng: np.random.Generator, mean: bool = True, c=None):
        """Ancestral sampling: z ~ N(0, I), then the decoder (given c (n, m), if conditional).

        Returns (n, d): the likelihood's mean for each z (``mean=True``, the
        usual picture) or a draw x ~ p(x|z) (``mean=False``).
        """
        if not (isinstance(n, (int, np.integer)) and n > 0):
            raise ValueError(f"n must be a positive integer, got {n!r}")
        c = self._check_c(c, n)
        z = rng.standard_normal((n, self.latent_dim), dtype=self.dtype)
        out, _ = self.decoder.forward(self.params, self._join(z, c))
        lik = self._likelihood_params
        return self.likelihood.mean(out, lik) if mean else self.likelihood.sample(out, lik, rng)

    # ------------------------------------------------------------------
    # loss and gradients
    # ------------------------------------------------------------------

    def loss(self, x, rng: Optional[np.random.Generator] = None, eps=None, beta: float = 1.0, c=None):
        """The batch loss without gradients; same arguments as :meth:`loss_and_grads`."""
        return self._forward(x, rng, eps, beta, False, c)[0]

    def loss_and_grads(self, x, rng: Optional[np.random.Generator] = None, eps=None,
                       beta: float = 1.0, c=None):
        """Loss of one batch and the gradient of ``nll + beta * kl`` for every parameter.

        x: (batch, d) floats (in [0, 1] for the Bernoulli likelihoods).
        Pass ``rng`` to draw eps ~ N(0, I), or ``eps`` (batch, k) to fix it.
        ``c``: (batch, m), the context of a conditional VAE.
        Returns ``(losses, grads)``: ``losses`` has the per-example means
        ``total``, ``nll`` and ``kl`` in nats (``total = nll + beta * kl``);
        ``grads`` has the keys of ``self.params``. ``grads`` is
        ``self.grads``: its arrays are overwritten by the next call (copy
        them to keep them), as are the workspaces this step computes in.
        """
        losses, ws, caches = self._forward(x, rng, eps, beta, True, c)
        self._backward(ws, caches, beta)
        return losses, self.grads

    def weighted_loss_and_grads(self, x, weights, rng: Optional[np.random.Generator] = None, eps=None,
                                beta: float = 1.0, c=None):
        """Per-example losses ``l_i = nll_i + beta * kl_i`` and the gradient of
        ``sum_i w_i l_i``, for objectives that weight examples unequally (the
        semi-supervised M2 model weights each class's copy of an example by
        q(y|x)). weights: (batch,); other arguments as :meth:`loss_and_grads`.

        Returns ``(l, grads)`` with l (batch,) float64 in nats. Likelihoods
        with learned parameters are not supported here.
        """
        if self._likelihood_keys:
            raise ValueError("weighted losses support likelihoods without learned parameters "
                             "(bernoulli, continuous_bernoulli, gaussian_fixed)")
        w = np.asarray(weights, dtype=self.dtype)
        if w.shape != (len(x),) or not np.all(np.isfinite(w)):
            raise ValueError(f"weights must be {len(x)} finite numbers, one per example, got shape {w.shape}")
        _, ws, caches = self._forward(x, rng, eps, beta, True, c)
        ws.d_out *= (w * len(w))[:, None]           # the forward scaled d_out by 1/n
        self._backward(ws, caches, beta, w)
        return ws.nll.astype(np.float64) + beta * ws.kl.astype(np.float64), self.grads

    def _backward(self, ws, caches, beta, weights=None):
        """From ``ws.d_out`` back through decoder, latent layer and encoder into
        ``self.grads``; the KL weighs ``beta / n`` per example, or
        ``beta * weights`` row by row."""
        enc_caches, lat_cache, dec_caches = caches
        d_z = self.decoder.backward(dec_caches, ws.d_out, self.grads, d_ins=ws.d_dec, overwrite_d_y=True)
        if self.context_dim:                         # the decoder's input was [z, c]: keep d_z
            d_z = np.ascontiguousarray(d_z[:, :self.latent_dim])
        kl_weight = beta / len(ws.z) if weights is None else 0.0
        d_mu, d_logvar = D.reparameterize_kl_backward(lat_cache, d_z, kl_weight, ws.d_mu, ws.d_logvar)
        if weights is not None:                      # dKL/dmu = mu, dKL/dlogvar = (exp(logvar) - 1)/2, per row
            mu, logvar, _ = lat_cache
            row = (beta * weights)[:, None]
            d_mu += row * mu
            d_logvar += row * 0.5 * np.expm1(logvar)
        self._encoder_backward(enc_caches, d_mu, d_logvar, ws)

    def _log_joint(self, z, x, c=None):
        """``log p(x | z, c) + log N(z; 0, I)`` per row in float64, and the
        decoder output; z (n, k), x (n, d) already checked."""
        out, _ = self.decoder.forward(self.params, self._join(z, c))
        nll, _, _ = self.likelihood.nll_and_grad(out, x, self._likelihood_params, 0.0)
        log_p_z, _ = D.diag_gaussian_log_prob(z, np.zeros_like(z), np.zeros_like(z))
        return -nll.astype(np.float64) + log_p_z, out

    def _encoder_backward(self, enc_caches, d_mu, d_logvar, ws=None):
        """From d_mu, d_logvar through both heads and the encoder into ``self.grads``."""
        g = self.grads
        enc_cache, mu_cache, lv_cache = enc_caches
        need_d_h = bool(self.encoder.layers)        # without hidden layers h is x itself
        d_h, _ = nn.linear_backward(mu_cache, d_mu, need_d_h, g["enc.mu.W"], g["enc.mu.b"],
                                    ws and ws.d_h, overwrite_d_y=True)
        d_h_logvar, _ = nn.linear_backward(lv_cache, d_logvar, need_d_h, g["enc.logvar.W"], g["enc.logvar.b"],
                                           ws and ws.d_h_logvar, overwrite_d_y=True)
        if need_d_h:
            d_h += d_h_logvar                        # h feeds both heads: their gradients add
            self.encoder.backward(enc_cache, d_h, g, need_d_x=False, d_ins=ws and ws.d_enc, overwrite_d_y=True)

    def iw_loss_and_grads(self, x, k: int, rng: Optional[np.random.Generator] = None, eps=None, c=None):
        """The importance-weighted bound (IWAE, Burda et al. 2016) of one batch and its gradient.

        ``L_k = log (1/k) sum_i w_i``, ``log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x)``,
        ``z_i = mu + exp(logvar/2) eps_i``. Its gradient is ``sum_i w~_i grad log w_i``
        with the normalised weights ``w~ = softmax(log w)``. With z reparameterized,
        ``-log q(z_i|x) = 1/2 sum_j (log 2 pi + logvar_j + eps_ij^2)``, so
        ``d(-log w_i)/dz = d nll/dz + z``, ``d(-log w_i)/dmu = d(-log w_i)/dz`` and
        ``d(-log w_i)/dlogvar = d(-log w_i)/dz * eps exp(logvar/2) / 2 - 1/2``.

        x: (batch, d); eps, if given: (k, batch, latent); c: (batch, m) if conditional. Returns ``(losses, grads)``:
        ``losses["total"]`` is ``-L_k`` averaged over the batch (nats); ``nll`` and
        ``kl`` are the single-sample ELBO parts of the first sample, for reference.
        Likelihoods with learned parameters are not supported here.
        """
        if self._likelihood_keys:
            raise ValueError("importance-weighted training supports likelihoods without learned "
                             "parameters (bernoulli, continuous_bernoulli, gaussian_fixed)")
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"k (importance samples) must be an integer >= 1, got {k!r}")
        x = self._check_x(x)
        b, latent = len(x), self.latent_dim
        c = self._check_c(c, b)
        if (rng is None) == (eps is None):
            raise ValueError("pass exactly one of rng (to draw eps) or eps (fixed noise)")
        if eps is None:
            eps = rng.standard_normal((k, b, latent), dtype=self.dtype)
        elif np.shape(eps) != (k, b, latent):
            raise ValueError(f"eps must have shape (k, batch, latent) = {(k, b, latent)}, got {np.shape(eps)}")
        eps = np.asarray(eps, self.dtype)
        mu, logvar, enc_caches = self._encode(x, c=c)
        std = np.exp(0.5 * logvar)
        z = (mu + std * eps).reshape(k * b, latent)
        out, dec_caches = self.decoder.forward(self.params, self._join(z, None if c is None else np.tile(c, (k, 1))))
        nll, d_out, _ = self.likelihood.nll_and_grad(out, np.tile(x, (k, 1)), self._likelihood_params, 1.0)
        # log w = -nll + log p(z) - log q(z|x); the log 2 pi terms of p and q cancel
        log_w = (-nll.astype(np.float64) - 0.5 * (z.astype(np.float64) ** 2).sum(1)
                 + 0.5 * (logvar + eps ** 2).astype(np.float64).sum(-1).reshape(-1)).reshape(k, b)
        top = log_w.max(axis=0)
        w = np.exp(log_w - top)
        bound = top + np.log(w.sum(axis=0)) - np.log(k)
        w /= w.sum(axis=0)                           # normalised weights, (k, b)
        row_weight = (w / b).reshape(k * b, 1).astype(self.dtype)
        d_out *= row_weight
        d_z = self.decoder.backward(dec_caches, d_out, self.grads)[:, :latent]
        d_z += row_weight * z                        # the prior's -log p(z) contributes z
        d_z = d_z.reshape(k, b, latent)
        d_mu = d_z.sum(axis=0)
        d_logvar = 0.5 * (d_z * eps * std).sum(axis=0) - 0.5 / b
        self._encoder_backward(enc_caches, d_mu, d_logvar)
        total = float(-bound.mean())
        if not np.isfinite(total):
            raise FloatingPointError(f"the loss is not finite ({total}): the weights have diverged; "
                                     "lower the learning rate or clip the gradient norm")
        kl = 0.5 * (mu * mu + std * std - 1 - logvar).sum(1)
        return {"total": total, "nll": float(nll[:b].mean()), "kl": float(kl.mean())}, self.grads

    def _forward(self, x, rng, eps, beta, into_grads, c):
        """The forward pass in the batch's workspace; the likelihood's own
        parameter gradients go into ``self.grads`` only when ``into_grads``."""
        if not (np.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        x = self._check_x(x)
        c = self._check_c(c, len(x))
        ws = self._workspace(len(x))
        eps = self._noise(len(x), rng, eps, ws.eps)
        mu, logvar, enc_caches = self._encode(x, ws, c)
        z, kl, lat_cache = D.reparameterize_kl(mu, logvar, eps, ws.z, ws.kl)
        out, dec_caches = self.decoder.forward(self.params, self._join(z, c), ws.dec)
        lik_grads = {k[4:]: self.grads[k] for k in self._likelihood_keys} if into_grads else None
        nll, _, _ = self.likelihood.nll_and_grad(out, x, self._likelihood_params, 1.0 / len(x),
                                                 ws.nll, ws.d_out, lik_grads)
        losses = {"nll": float(nll.mean()), "kl": float(kl.mean())}
        losses["total"] = losses["nll"] + beta * losses["kl"]
        if not np.isfinite(losses["total"]):
            raise FloatingPointError(
                f"the loss is not finite (nll={losses['nll']}, kl={losses['kl']}): the weights "
                "have diverged; lower the learning rate or clip the gradient norm")
        return losses, ws, (enc_caches, lat_cache, dec_caches)

    def _workspace(self, n: int) -> "_Workspace":
        """Buffers for batches of ``n`` rows, made once and reused (a few sizes kept)."""
        ws = self._workspaces.get(n)
        if ws is None:
            if len(self._workspaces) >= 4:
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[n] = _Workspace(self, n)
        return ws

    def __repr__(self):
        sizes = "-".join(map(str, [self.input_dim, *self.hidden, self.latent_dim]))
        if self.context_dim:
            sizes += f", context_dim={self.context_dim}"
        return (f"VAE({sizes}, likelihood={self.likelihood.name}, activation={self.activation}, "
                f"dtype={self.dtype.name}, params={sum(v.size for v in self.params.values())})")


class _Workspace:
    """Every array one training step of a batch of ``n`` writes, allocated once.

    Forward: encoder layer outputs, mu, logvar, eps, z, kl, decoder layer
    outputs, nll. Backward: d_out (gradient of the decoder output), the
    gradients of each decoder layer's input (``d_dec[0]`` is d_z), d_mu,
    d_logvar, d_h (encoder output; ``d_h_logvar`` holds the logvar head's
    share before it is added) and the encoder layers' input gradients.
    """

    def __init__(self, model: VAE, n: int):
        def buf(*shape):
            return np.empty(shape, model.dtype)

        k, d = model.latent_dim, model.input_dim
        enc, dec = model.encoder.layers, model.decoder.layers
        self.enc = [buf(n, layer.fan_out) for layer in enc]
        self.mu, self.logvar, self.eps, self.z = (buf(n, k) for _ in range(4))
        self.kl, self.nll = buf(n), buf(n)
        self.dec = [buf(n, layer.fan_out) for layer in dec]
        self.d_out = buf(n, d)
        self.d_dec = [buf(n, layer.fan_in) for layer in dec]
        self.d_mu, self.d_logvar = buf(n, k), buf(n, k)
        self.d_h, self.d_h_logvar = (buf(n, enc[-1].fan_out if enc else d + model.context_dim) for _ in range(2))
        self.d_enc = [None] + [buf(n, layer.fan_in) for layer in enc[1:]]
