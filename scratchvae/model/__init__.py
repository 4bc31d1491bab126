"""The model: layers, the latent layer, priors p(z) and flows on q, likelihoods, the VAE and M2.

Every op is a forward/backward pair; the VAE has one forward (per-example
nll, kl, kl_sample) and one weighted backward, which every objective weights.
"""
from .likelihoods import LIKELIHOODS, make_likelihood
from .m2 import M2
from .vae import VAE, Terms

__all__ = ["VAE", "Terms", "M2", "LIKELIHOODS", "make_likelihood"]
