"""Priors p(z) over the latent code: a log-density with its backward, and a sampler.

Two priors, one interface:

``StandardNormal``  ``p(z) = N(0, I)``; the latent kernel's closed-form KL is
                    against it (``closed_form_kl``), so a model with it and no
                    flow never evaluates ``log p`` at the drawn z.
``VampPrior``       ``p(z) = 1/K sum_k q(z | u_k)`` (Tomczak and Welling 2018),
                    the mixture of the encoder's own posteriors at K learned
                    pseudo-inputs ``u`` (the parameter ``prior.u``, (K, d)).

The VampPrior's components are encoder outputs, so the model computes them:
it encodes the prior's :attr:`inputs` in the same pass as the batch and hands
their heads to :meth:`log_prob` as ``components = (mu_k, logvar_k)``, each
(K, k); :meth:`log_prob_backward` returns their gradient, which the model
sends back through the encoder to the pseudo-inputs. Units are nats; z is
(rows, k).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from . import latent

#: the priors by name
PRIORS = ("standard", "vamp")


class StandardNormal:
    """``p(z) = N(0, I)``: no parameters, no components."""

    name = "standard"
    pseudo_inputs = 0
    inputs = None               # the parameter whose rows the encoder sees with the batch
    closed_form_kl = True       # KL(q || p) is the latent kernel's analytic one

    def log_prob(self, z, components=None):
        """``log N(z; 0, I) = -1/2 sum_j (log 2 pi + z_j^2)`` per row, float64; ``(logp, cache)``."""
        return latent.standard_normal_log_prob(z), None

    def log_prob_backward(self, z, cache, d_logp) -> Tuple[np.ndarray, None]:
        """``d/dz`` of ``sum_r d_logp_r log p(z_r)`` at the rows z: ``-d_logp z``; no components."""
        return -d_logp[:, None] * z, None

    def sample(self, n: int, latent_dim: int, rng: np.random.Generator, dtype, components=None) -> np.ndarray:
        """n draws, (n, k)."""
        return rng.standard_normal((n, latent_dim), dtype=dtype)


class VampPrior:
    """``p(z) = 1/K sum_k N(z; mu_k, diag(exp(logvar_k)))``, ``(mu_k, logvar_k)`` the
    encoder's posterior at the pseudo-input ``u_k``."""

    name = "vamp"
    inputs = "prior.u"
    closed_form_kl = False

    def __init__(self, pseudo_inputs: int):
        self.pseudo_inputs = pseudo_inputs

    def log_prob(self, z, components):
        """The mixture's log-density per row (rows,) and the cache of its backward
        (see :func:`~scratchvae.model.latent.diag_gaussian_mixture_log_prob`)."""
        return latent.diag_gaussian_mixture_log_prob(z, *components)

    def log_prob_backward(self, z, cache, d_logp):
        """``(d_z (rows, k), (d_mu_k, d_logvar_k))`` of ``sum_r d_logp_r log p(z_r)``."""
        d_z, d_mu, d_logvar = latent.diag_gaussian_mixture_log_prob_backward(cache, d_logp)
        return d_z, (d_mu, d_logvar)

    def sample(self, n: int, latent_dim: int, rng: np.random.Generator, dtype, components) -> np.ndarray:
        """n draws, (n, k): a component uniform in 1..K, then z ~ q(z | u_k)."""
        mu, logvar = components
        pick = rng.integers(0, self.pseudo_inputs, n)
        return latent.sample_gaussian(mu[pick], logvar[pick], rng)


def make_prior(name: str, pseudo_inputs: int = 0):
    """The prior ``name`` (one of :data:`PRIORS`), checked: ``standard`` takes no
    pseudo-inputs, ``vamp`` K >= 1 of them."""
    if name not in PRIORS:
        raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {name!r}")
    if not isinstance(pseudo_inputs, (int, np.integer)) or pseudo_inputs < 0:
        raise ValueError(f"pseudo_inputs must be an integer >= 0, got {pseudo_inputs!r}")
    if name == "standard":
        if pseudo_inputs:
            raise ValueError(f"pseudo_inputs ({pseudo_inputs}) belong to the VampPrior: use prior='vamp'")
        return StandardNormal()
    if pseudo_inputs < 1:
        raise ValueError("the VampPrior needs pseudo_inputs >= 1 (its number of components)")
    return VampPrior(int(pseudo_inputs))

