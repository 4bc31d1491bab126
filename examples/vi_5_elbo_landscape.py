"""Lesson 5: the ELBO as a landscape over the variational parameters.

    python examples/vi_5_elbo_landscape.py --out vi_5_elbo_landscape.png

Target: a normalised density standing for a posterior,
``p(x, z) = p(z|x) = N(z; 3, 1)``, so ``log p(x) = log 1 = 0`` (its
normaliser). Approximation: ``q = Gamma(alpha, beta)`` (shape, rate).
In closed form,

    ELBO(alpha, beta) = E_q[log p(x, z)] + H[q]
                      = -log(2 pi)/2 - (E[z^2] - 6 E[z] + 9)/2
                        + alpha - log beta + log Gamma(alpha) + (1 - alpha) psi(alpha)

with ``E[z] = alpha/beta`` and ``E[z^2] = alpha (alpha + 1)/beta^2``. It equals
``-KL(q || p(z|x))``, the reverse KL, so it is never above 0; the Gamma family
cannot reach 0 because a Gamma is not a normal, but it gets close, on the
ridge along which the mean ``alpha/beta`` stays near 3.

Maximising the ELBO does not match moments. The Gamma with the target's
mean 3 and variance 1 (alpha = 9, beta = 3) is not the maximum: Adam finds
alpha = 9.84, beta = 3.26, mean 3.02 and variance 0.93, with a higher
ELBO, and the script prints both. Moment matching belongs to the other
direction: minimising the forward ``KL(p || q)`` over an exponential family
q matches p's expected sufficient statistics (for a Gaussian q, the mean and
variance; for a Gamma, ``E[z]`` and ``E[log z]``, and here the forward KL
is infinite for every Gamma, since p puts mass on z < 0). The reverse KL
penalises q's mass where p is small (``log q - log p`` weighted by q) and
not p's mass where q is small, so it is mode seeking (lesson 3) and tends
to under-estimate the variance: here 0.93 < 1.
The script maps the ELBO on a grid of log alpha and log beta, marks the
grid maximum and the maximum found by Adam with the exact gradient.
"""
import argparse

import numpy as np

from scratchvae.lessons import vi
from scratchvae.run import plots


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="vi_5_elbo_landscape.png", help="PNG file to write")
    parser.add_argument("--grid", type=int, default=161, help="grid points per axis [161]")
    args = parser.parse_args(argv)

    target = vi.normal_target(3.0, 1.0)
    log_alpha = np.linspace(-1.0, 5.0, args.grid)
    log_beta = np.linspace(-2.5, 3.5, args.grid)
    elbo = np.array([[vi.Gamma(a, b).elbo(target) for a in log_alpha] for b in log_beta])
    i, j = np.unravel_index(np.argmax(elbo), elbo.shape)
    print(f"log p(x) = {target.log_normalizer():.2e} (normalised target); ELBO on the grid: "
          f"max {elbo.max():.5f} at alpha = {np.exp(log_alpha[j]):.3f}, beta = {np.exp(log_beta[i]):.3f}")
    assert elbo.max() < 0

    q = vi.Gamma(0.0, 0.0)
    vi.fit(q, lambda q, rng: q.d_elbo(target), steps=6000, lr=0.02)
    alpha, beta = q.params()
    print(f"Adam on the exact gradient: alpha = {alpha:.4f}, beta = {beta:.4f}, ELBO = {q.elbo(target):.6f} "
          f"= -KL(q || p); q's mean {alpha / beta:.4f}, variance {alpha / beta ** 2:.4f}")
    matched = vi.Gamma(np.log(9.0), np.log(3.0))
    print(f"the Gamma with the target's mean 3 and variance 1 (alpha = 9, beta = 3): "
          f"ELBO = {matched.elbo(target):.6f}, "
          f"{'lower' if matched.elbo(target) < q.elbo(target) else 'not lower'} than Adam's maximum: "
          f"maximising the ELBO (minimising the reverse KL) does not match moments")

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    shown = np.maximum(elbo, -12.0)
    cs = ax.contourf(log_alpha, log_beta, shown, levels=40, cmap="viridis")
    ax.contour(log_alpha, log_beta, elbo, levels=[-2.0, -1.0, -0.5, -0.2, -0.1], colors="w", linewidths=0.7)
    fig.colorbar(cs, label="ELBO = -KL(q || p)  (clipped at -12)")
    ax.plot(log_alpha, log_alpha - np.log(3.0), "w--", lw=0.8, label="mean alpha/beta = 3")
    ax.plot(log_alpha[j], log_beta[i], "r*", ms=14, label=f"grid maximum {elbo.max():.4f} < log p(x) = 0")
    ax.plot(q.theta[0], q.theta[1], "wx", ms=9, mew=2, label="Adam's maximum")
    ax.set_ylim(log_beta[0], log_beta[-1])
    ax.set_xlabel("log alpha (shape)")
    ax.set_ylabel("log beta (rate)")
    ax.set_title("ELBO of a Gamma q for the target N(3, 1)")
    ax.legend(loc="lower right", fontsize=8)
    print(f"wrote {plots.save(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
