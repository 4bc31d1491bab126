"""Chapter 0's check: the reparameterization and the KL against central finite differences, float64."""
import numpy as np

import scratchvae as sv
from scratchvae.kernels import reference as K

rng = np.random.default_rng(0)
mu, logvar = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
eps = rng.standard_normal((5, 3))


def forward(mu, logvar):
    z, kl, _ = K.gaussian_latent(mu, logvar, eps)
    return np.concatenate([z.ravel(), kl]), (mu, logvar, z)


def backward(cache, d_out):
    mu, logvar, z = cache
    d_z, w_kl = d_out[:z.size].reshape(z.shape), d_out[z.size:]
    d_mu, d_logvar = K.gaussian_latent_backward(mu, logvar, eps, z, d_z, w_kl, None)
    return {"mu": d_mu, "logvar": d_logvar}


report = sv.check_op(forward, backward, {"mu": mu, "logvar": logvar})
print(report)
assert report.ok
