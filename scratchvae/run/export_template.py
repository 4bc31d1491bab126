"""A trained variational autoencoder in one file: NumPy only. Written by scratchvae $version.

Model: $model
Context c: $context

    import numpy as np, $name
    mu, logvar = $name.encode(x)        # q(z|x) = N(mu, diag(exp(logvar)))
    images = $name.decode(mu)           # E[x | z]
    draws = $name.sample(16, np.random.default_rng(0))
    bound = $name.elbo(x, np.random.default_rng(0))

Shapes: x (n, d) floats, z (n, k), c (n, m); log-densities in nats. A
conditional model takes its context with every call (``c=``). The weights
are in $name.npz beside this file (plain arrays), the architecture in $name.json.

    encoder   h = f(... f([x, c] @ W0 + b0) ...)       (c joins the first layer)
              mu = h @ W_mu + b_mu,  logvar = h @ W_logvar + b_logvar
    decoder   l = g([z, c]): the same layers mirrored, the last one without f
    p(x|z)    bernoulli             -log p = softplus(l) - x l, summed over pixels
              continuous_bernoulli  the same minus log C(l), C(l) = l / tanh(l/2)
              gaussian_*            -log p = (x - l)^2 / (2 s^2) + log s + log(2 pi)/2
    ELBO      log p(x|z) - KL(q(z|x) || N(0, I)),  z = mu + exp(logvar/2) eps, eps ~ N(0, I)
              KL = 1/2 sum(mu^2 + exp(logvar) - 1 - logvar)
"""
import json
import math
from pathlib import Path

import numpy as np

CONFIG = json.loads(Path(__file__).with_suffix(".json").read_text())
with np.load(Path(__file__).with_suffix(".npz"), allow_pickle=False) as _npz:
    PARAMS = {name: _npz[name] for name in _npz.files}
DTYPE = np.dtype(CONFIG["dtype"])
LAYERS = len(CONFIG["hidden"])               # hidden layers in the encoder (and the decoder)
ACTIVATIONS = {                              # f(a), elementwise
    "identity": lambda a: a,
    "relu": lambda a: np.maximum(a, 0),
    "leaky_relu": lambda a: np.where(a > 0, a, 0.01 * a),
    "tanh": np.tanh,
    "sigmoid": lambda a: np.exp(-np.logaddexp(0, -a)),
    "softplus": lambda a: np.logaddexp(0, a),
    "elu": lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0))),
}
f = ACTIVATIONS[CONFIG["activation"]]


def _batch(a, name, width):
    a = np.asarray(a, dtype=DTYPE)
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must have shape (n, {width}), got {a.shape}")
    return a


def _context(c, n):
    """c as (n, m), or None for a model without context."""
    m = CONFIG["context_dim"]
    if (c is None) != (m == 0) or (m and len(c) != n):
        raise ValueError(f"this model needs its context c, shape ({n}, {m})" if m else "this model takes no c")
    return None if c is None else _batch(c, "c", m)


def _linear(name, x, c=None):
    """[x, c] @ W + b of layer ``name``, (n, fan_out)."""
    W, b = PARAMS[name + ".W"], PARAMS[name + ".b"]
    a = x @ W[:x.shape[1]]
    if c is not None:
        a += c @ W[x.shape[1]:]
    return a + b


def encode(x, c=None):
    """q(z|x, c) = N(mu, diag(exp(logvar))): x (n, d) -> (mu, logvar), each (n, k)."""
    h = _batch(x, "x", CONFIG["input_dim"])
    c = _context(c, len(h))
    for i in range(LAYERS):
        h, c = f(_linear(f"enc.{i}", h, c)), None
    return _linear("enc.mu", h, c), _linear("enc.logvar", h, c)


def decoder_output(z, c=None):
    """The decoder's output l = g([z, c]), (n, d): logits (Bernoulli kinds) or the Gaussian's mean."""
    h = _batch(z, "z", CONFIG["latent_dim"])
    c = _context(c, len(h))
    for i in range(LAYERS + 1):
        h = _linear(f"dec.{i}", h, c if i == 0 else None)
        h = f(h) if i < LAYERS else h
    return h


def _mean(l):
    """E[x | l]: sigmoid(l); 1/(1 - e^-l) - 1/l for the continuous Bernoulli; l for a Gaussian."""
    kind = CONFIG["likelihood"]
    if kind == "bernoulli":
        return 0.5 + 0.5 * np.tanh(0.5 * l)
    if kind == "continuous_bernoulli":               # near l = 0 its series 1/2 + l/12 - l^3/720
        small = np.abs(l) < 1e-2
        safe = np.where(small, 1.0, l)
        return np.where(small, 0.5 + l * (1 / 12 - l * l / 720), -1 / np.expm1(-safe) - 1 / safe).astype(DTYPE)
    return l


def _log_sigma():
    """log s of the Gaussian: learned (1,) or (d,), or the fixed value."""
    return PARAMS.get("dec.log_sigma", np.full(1, math.log(CONFIG["sigma"]), DTYPE))


def decode(z, c=None):
    """E[x | z, c], (n, d): z (n, k)."""
    return _mean(decoder_output(z, c))


def sample(n, rng, c=None, mean=True):
    """z ~ N(0, I) (n, k) drawn from ``rng``, then E[x | z, c] (``mean``) or a draw x ~ p(x | z, c): (n, d)."""
    l = decoder_output(rng.standard_normal((n, CONFIG["latent_dim"]), dtype=DTYPE), c)
    kind, m = CONFIG["likelihood"], _mean(l)
    if mean:
        return m
    if kind == "bernoulli":
        return (rng.random(l.shape) < m).astype(DTYPE)
    if kind.startswith("gaussian"):
        return (l + np.exp(_log_sigma()) * rng.standard_normal(l.shape)).astype(DTYPE)
    u = rng.random(l.shape)                              # continuous Bernoulli: the inverse CDF
    a = np.abs(np.where(np.abs(l) < 1e-6, 1.0, l))
    x = np.where(l > 0, 1 + np.log(u + (1 - u) * np.exp(-a)) / a, np.log1p(u * np.expm1(-a)) / -a)
    return np.clip(np.where(np.abs(l) < 1e-6, u, x), 0, 1).astype(DTYPE)


def log_likelihood(x, l):
    """log p(x | l) per row, (n,): x, l (n, d)."""
    kind = CONFIG["likelihood"]
    if kind.startswith("gaussian"):
        s = _log_sigma()
        return -np.sum(0.5 * math.log(2 * math.pi) + s + (x - l) ** 2 / (2 * np.exp(2 * s)), axis=1)
    log_p = x * l - np.logaddexp(0, l)
    if kind == "continuous_bernoulli":                   # + log C(l), C(0) = 2
        safe = np.where(l == 0, 1, l)
        log_p += np.where(l == 0, math.log(2.0), np.log(safe / np.tanh(safe / 2)))
    return log_p.sum(axis=1)


def elbo(x, rng, c=None):
    """The ELBO of each row of x (n, d), one z per row drawn with ``rng``: (n,) nats."""
    x = _batch(x, "x", CONFIG["input_dim"])
    mu, logvar = encode(x, c)
    z = mu + np.exp(logvar / 2) * rng.standard_normal(mu.shape, dtype=DTYPE)
    kl = 0.5 * np.sum(mu ** 2 + np.exp(logvar) - 1 - logvar, axis=1)
    return log_likelihood(x, decoder_output(z, c)) - kl
