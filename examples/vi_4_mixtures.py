"""Lesson 4: latent-variable models are mixtures, and why a VAE needs an encoder.

    python examples/vi_4_mixtures.py --out vi_4_mixtures.png

Discrete latent. A 1-D Gaussian mixture is the model ``z ~ Categorical(pi)``,
``x | z ~ N(mu_z, sigma_z^2)``. Ancestral sampling draws z, then x. The
marginal sums z out, ``p(x) = sum_k pi_k N(x; mu_k, sigma_k^2)``, and Bayes
gives the posterior ``p(z = k | x) = pi_k N(x; mu_k, sigma_k^2) / p(x)`` (the
responsibilities).

Continuous latent. ``p(x) = integral N(x; f(z), sigma^2) N(z; 0, 1) dz`` with
``f(z) = z + 0.45 sin(2z)`` and sigma = 0.1: a mixture of infinitely many
Gaussians, one per z. Three ways to get p(x) at x = 2.5:

- quadrature on a fine grid (exact here, impossible in many dimensions);
- naive Monte Carlo, ``mean of p(x | z_i)`` with ``z_i ~ p(z)``: unbiased, but
  only the few z_i that land where ``f(z)`` is near x contribute;
- importance sampling, ``mean of p(x, z_i)/q(z_i)`` with ``z_i ~ q``, q a
  Gaussian fitted to the posterior by maximising the ELBO: the samples go
  where the integrand is.

The variance per sample of each (of the estimate divided by p(x)) says how
many samples a given accuracy costs. A VAE's encoder is exactly this q,
amortised: one network that proposes a good q(z|x) for every x.

Each printed ``log p(x) estimate`` is the log of one such mean over n
samples (for naive Monte Carlo, q is the prior ``p(z)``): one draw of the
importance-weighted bound's estimator, whose expectation
``L_n = E_{z_1..z_n ~ q}[log (1/n) sum_i p(x, z_i)/q(z_i)]`` is
at most ``log p(x)`` (Jensen: the log of an unbiased estimate of p(x) is
biased low). The bound holds for that expectation, not for each draw: one
draw is a random variable and can land above ``log p(x)``.

A caveat that joins lesson 3: q is fitted by the reverse KL, which seeks a
mode. When the posterior has several (try ``f(z) = z + 1.5 sin(3z)``, not
monotonic), a Gaussian q covers one of them, the importance weights of the
others are never sampled, and the estimate comes out too low with a
deceptively small sample variance.
"""
import argparse
import math

import numpy as np

from scratchvae.lessons import vi
from scratchvae.run import plots

MIXTURE = vi.GaussianMixture1D([0.5, 0.3, 0.2], [-2.0, 1.0, 3.5], [0.7, 0.5, 1.0])
X_OBS = 2.5


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="vi_4_mixtures.png", help="PNG file to write")
    parser.add_argument("-n", type=int, default=100_000, help="Monte Carlo samples per estimator [100000]")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    x, z = MIXTURE.sample(rng, 20_000)
    freq = np.bincount(z, minlength=3) / len(z)
    print("mixture: component frequencies of ancestral samples", np.round(freq, 4), "vs weights", MIXTURE.weights)
    print("posterior p(z | x = 0) (responsibilities):", np.round(MIXTURE.responsibilities(np.array([0.0]))[0], 4))

    model = vi.LatentNonlinear(X_OBS)
    log_px = model.log_marginal_quadrature()
    q = vi.Normal(0.0, -1.0)
    vi.fit(q, lambda q, rng: vi.reparam_gradient(model, q, rng, 32).mean(axis=0), steps=2000, lr=0.02, rng=rng)
    w_prior = np.exp(model.log_likelihood(rng.standard_normal(args.n)) - log_px)
    zq = q.sample(rng, args.n)
    w_q = np.exp(model.log_density(zq) - q.log_q(zq) - log_px)
    print(f"\ncontinuous latent, x = {X_OBS}: log p(x) by quadrature = {log_px:.5f}; fitted q = {q}")
    print(f"  {'estimator':28s} {'log p(x) estimate':>18s} {'rel. variance/sample':>21s} {'n for 1% error':>15s}")
    for name, w in (("naive MC from the prior", w_prior), ("importance sampling from q", w_q)):
        print(f"  {name:28s} {log_px + math.log(w.mean()):18.5f} {w.var():21.3f} {w.var() / 1e-4:15.0f}")

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    grid = np.linspace(-5, 7.5, 800)
    ax.hist(x, bins=120, density=True, color="0.8", label="ancestral samples")
    ax.plot(grid, np.exp(MIXTURE.log_density(grid)), "k", lw=2, label="p(x) = sum_k pi_k N(x; mu_k, sigma_k^2)")
    resp = MIXTURE.responsibilities(grid)
    twin = ax.twinx()
    for k in range(3):
        twin.plot(grid, resp[:, k], "--", lw=1.2, label=f"p(z={k} | x)")
    twin.set_ylabel("responsibility p(z | x)")
    twin.set_yticks([0, 0.5, 1])
    twin.set_ylim(0, 1.8)          # responsibilities in the lower part, legends above
    ax.set_ylim(0, 0.42)
    ax.set_xlabel("x")
    ax.set_title("A Gaussian mixture as a latent-variable model")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)

    ax = axes[1]
    zz = np.linspace(-3.5, 4.0, 3000)
    ax.plot(zz, np.exp(model.log_density(zz) - log_px), "k", lw=2, label="posterior p(z | x)")
    ax.plot(zz, np.exp(vi.normal_target(0.0, 1.0).log_density(zz)), "C0", label="prior p(z): naive MC samples here")
    ax.plot(zz, np.exp(q.log_q(zz)), "C1--", lw=1.8, label="fitted q(z): importance samples here")
    ax.set_xlabel("z")
    ax.set_title(f"x = {X_OBS}, f(z) = z + 0.45 sin 2z, sigma = 0.1\n"
                 f"relative variance per sample: prior {w_prior.var():.3g}, q {w_q.var():.3g}")
    ax.legend(fontsize=8)
    print(f"wrote {plots.save(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
