"""Data completion: fill in the missing pixels of an image with a trained VAE.

A mask marks the missing pixels (``missing``: bool (n, d), True = missing);
``x_obs`` are the other pixels. Three ways to fill in ``x_mis``:

- pseudo-Gibbs (Rezende, Mohamed and Wierstra 2014): repeat
  ``z ~ q(z | x_obs, x_mis)``, ``x_mis ~ p(x_mis | z)``. Cheap, but its
  stationary distribution is p(x_mis | x_obs) only if the encoder is the
  exact posterior, which it never is.
- Metropolis-within-Gibbs (Mattei and Frellsen 2018): the same moves, except
  that the encoder's ``z~`` is only a proposal, accepted with probability
  ``min(1, rho)``,
  ``rho = p(z~) p(x_obs, x_mis | z~) q(z | x_obs, x_mis) / (p(z) p(x_obs, x_mis | z) q(z~ | x_obs, x_mis))``:
  an exact MCMC step for ``p(z | x_obs, x_mis)``, so the chain targets
  ``p(z, x_mis | x_obs)`` for any encoder.
- a conditional VAE trained with the observed part as its context
  ``c = [x * (1 - m), m]`` (m the mask): ``x_mis`` is decoded from
  ``z ~ N(0, I)`` given c, averaged over draws.

Each chain runs per image, all images at once. The completion returned is
the average over the kept iterations of ``E[x_mis | z]``, an estimate of the
posterior mean ``E[x_mis | x_obs]`` (it minimises the expected squared error).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..model.flows import NO_DENSITY_AT_Z
from ..model.latent import diag_gaussian_log_prob, sample_gaussian

MASK_KINDS = ("bottom-half", "block", "random:P")
_EPS = 1e-6


@dataclass(frozen=True)
class Mask:
    """Which pixels go missing: ``bottom-half`` (the lower rows), ``block`` (a
    square of half the image side at a random place) or ``random:P`` (each
    pixel with probability P)."""
    kind: str
    p: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Mask":
        if text in ("bottom-half", "block"):
            return cls(text)
        m = re.fullmatch(r"random:([0-9]*\.?[0-9]+)", text)
        if m and 0 < float(m.group(1)) < 1:
            return cls("random", float(m.group(1)))
        raise ValueError(f"unknown mask {text!r}: use bottom-half, block or random:P with 0 < P < 1 "
                         "(e.g. random:0.5)")

    def __str__(self):
        return f"random:{self.p:g}" if self.kind == "random" else self.kind

    def sample(self, rng: np.random.Generator, n: int, image_shape) -> np.ndarray:
        """Missing-pixel masks, bool (n, h*w)."""
        h, w = image_shape
        if self.kind == "random":
            return rng.random((n, h * w)) < self.p
        m = np.zeros((n, h, w), bool)
        if self.kind == "bottom-half":
            m[:, h // 2:, :] = True
        else:
            side_h, side_w = h // 2, w // 2
            tops, lefts = rng.integers(0, h - side_h + 1, n), rng.integers(0, w - side_w + 1, n)
            for i in range(n):
                m[i, tops[i]:tops[i] + side_h, lefts[i]:lefts[i] + side_w] = True
        return m.reshape(n, h * w)


def observed_context(x: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """A completion CVAE's context ``[x * (1 - m), m]``, (n, 2d), in x's dtype."""
    m = missing.astype(x.dtype)
    return np.concatenate([x * (1 - m), m], axis=1)


def _check(model, x, missing):
    x = model.check_x(x)
    missing = np.asarray(missing, bool)
    if missing.shape != x.shape:
        raise ValueError(f"the mask must have the shape of x {x.shape}, got {missing.shape}")
    return x, missing


def gibbs_complete(model, x, missing, rng: np.random.Generator, steps: int = 200, burn_in: int = 50,
                   metropolis: bool = True, init=0.5):
    """Fill in ``x[missing]`` by Metropolis-within-Gibbs (default) or pseudo-Gibbs.

    x: (n, d) with any values where ``missing`` (bool (n, d)) is True; they
    start at ``init`` (a number or an (n, d)/(d,) array). A Metropolis chain
    starts warm: its first ``burn_in // 2`` moves are pseudo-Gibbs ones, which
    bring x_mis near the data fast; where a chain starts does not change what
    it converges to, and the burn-in is left out of the average. Returns
    ``(completed, acceptance)``: x with the missing pixels replaced by the
    average of ``E[x_mis | z]`` over the iterations after ``burn_in``, and
    the fraction of Metropolis proposals accepted (1 for pseudo-Gibbs).
    """
    if model.context_dim:
        raise ValueError("Gibbs completion needs a plain VAE; a conditional one completes from its "
                         "context (complete.cvae_complete)")
    if not (0 <= burn_in < steps):
        raise ValueError(f"need 0 <= burn_in < steps, got burn_in={burn_in}, steps={steps}")
    if metropolis and not model.q_flow.density_at_z:
        raise ValueError(f"the Metropolis ratio needs q(z|x) at the chain's state, and {NO_DENSITY_AT_Z}: "
                         "complete a flow model by pseudo-Gibbs (metropolis=False)")
    x, missing = _check(model, x, missing)
    x_hat = np.where(missing, np.asarray(init, model.dtype), x).astype(model.dtype)
    lik = model.likelihood_params
    mu, logvar = model.encode(x_hat)
    z = sample_gaussian(mu, logvar, rng)
    total = np.zeros(x.shape)
    accepted, proposed = 0, 0
    for t in range(steps):
        # encode x_hat and decode a proposal z~ = mu + exp(logvar/2) eps, in one forward
        eps = rng.standard_normal(mu.shape, dtype=model.dtype)
        terms, _ = model.forward(x_hat, eps, with_grad=False)
        if metropolis and t >= burn_in // 2:
            # q proposes independently of the state, so the ratio is one of
            # importance weights: rho = w(z~) / w(z), log w = log p(x, z) - log q(z|x)
            log_joint_old, eta_old = model.log_joint(z, x_hat)
            log_q_old, _ = diag_gaussian_log_prob(z, terms.mu, terms.logvar)
            log_rho = terms.log_weight[0] - (log_joint_old - log_q_old)
            accept = np.log(rng.random(len(z))) < log_rho
            z = np.where(accept[:, None], terms.z, z)
            eta = np.where(accept[:, None], terms.eta, eta_old)
            accepted, proposed = accepted + int(accept.sum()), proposed + len(z)
        else:
            z, eta = terms.z, terms.eta
        x_hat = np.where(missing, model.likelihood.sample(eta, lik, rng).astype(model.dtype), x)
        if t >= burn_in:
            total += model.likelihood.mean(eta, lik)
    completed = np.where(missing, total / (steps - burn_in), x)
    return completed.astype(model.dtype), accepted / proposed if proposed else 1.0


def cvae_complete(model, x, missing, rng: np.random.Generator, samples: int = 20):
    """Fill in ``x[missing]`` with a conditional VAE whose context is
    :func:`observed_context`: the average of ``E[x | z, c]`` over ``samples``
    draws of ``z ~ N(0, I)``. Returns the completed x."""
    x, missing = _check(model, x, missing)
    c = observed_context(x, missing)
    if model.context_dim != c.shape[1]:
        raise ValueError(f"this model's context has {model.context_dim} values; completion from the "
                         f"observed pixels needs {c.shape[1]} (train with --conditional mask:KIND)")
    total = np.zeros(x.shape)
    for _ in range(samples):
        z = rng.standard_normal((len(x), model.latent_dim), dtype=model.dtype)
        total += model.decode(z, c)
    return np.where(missing, total / samples, x).astype(model.dtype)


def mean_image_complete(x_train, x, missing):
    """Baseline: the missing pixels from the training set's mean image."""
    return np.where(missing, x_train.mean(axis=0), x)


def nearest_neighbour_complete(x_train, x, missing, batch: int = 256):
    """Baseline: the missing pixels from the training image closest to x on
    the observed pixels (squared distance over the observed pixels only)."""
    out = np.empty_like(x)
    train = x_train.astype(np.float32)
    train_sq = train * train
    for s in range(0, len(x), batch):
        xb, obs = x[s:s + batch].astype(np.float32), ~missing[s:s + batch]
        xo = np.where(obs, xb, 0).astype(np.float32)
        # sum over observed j of (x_j - t_j)^2 = sum x_j^2 - 2 x.t + sum over observed t_j^2
        dist = (xo * xo).sum(1, keepdims=True) - 2 * xo @ train.T + obs.astype(np.float32) @ train_sq.T
        best = train[dist.argmin(axis=1)]
        out[s:s + batch] = np.where(missing[s:s + batch], best, xb)
    return out


def missing_pixel_errors(x_true, x_completed, missing):
    """Errors on the missing pixels only, per missing pixel: binary cross-entropy
    (nats; predictions clipped to [1e-6, 1 - 1e-6], so a confident wrong 0 or 1
    costs 13.8 nats) and mean squared error."""
    t = x_true[missing].astype(np.float64)
    p = np.clip(x_completed[missing].astype(np.float64), _EPS, 1 - _EPS)
    bce = -(t * np.log(p) + (1 - t) * np.log1p(-p)).mean()
    return {"bce": float(bce), "mse": float(((t - p) ** 2).mean())}


def compare(model, x_train, x, missing, rng: np.random.Generator, steps: int = 200, burn_in: int = 50):
    """Every completion that applies to ``model``, with the two baselines.

    A plain VAE gets pseudo-Gibbs and Metropolis-within-Gibbs (pseudo-Gibbs
    alone with a flow on q); a completion CVAE (context ``[x * (1 - m), m]``)
    its own completion. Returns
    ``{method: (completed (n, d), {"bce", "mse"}, note)}``.
    """
    fills = {"training mean image": (mean_image_complete(x_train, x, missing), ""),
             "nearest training image": (nearest_neighbour_complete(x_train, x, missing), "")}
    if model.context_dim:
        fills["conditional VAE"] = (cvae_complete(model, x, missing, rng), "")
    else:
        methods = [("pseudo-Gibbs", False)] + ([("Metropolis-within-Gibbs", True)] if model.q_flow.density_at_z
                                                else [])
        for name, metropolis in methods:
            done, acceptance = gibbs_complete(model, x, missing, rng, steps, burn_in, metropolis)
            fills[name] = (done, f"acceptance {acceptance:.2f}" if metropolis else "")
    return {name: (done, missing_pixel_errors(x, done, missing), note) for name, (done, note) in fills.items()}
