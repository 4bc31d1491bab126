"""Lesson 3: forward KL covers the modes, reverse KL seeks one.

    python examples/vi_3_kl_directions.py --out vi_3_kl_directions.png

Target: ``p(z) = 0.4 N(z; -2, 0.6^2) + 0.6 N(z; 2.5, 0.8^2)``. Approximation:
one Gaussian ``q(z) = N(z; m, s^2)``.

- Forward, ``KL(p || q) = E_p[log p] - E_p[log q]``: only the second term
  depends on q, and for a Gaussian q its minimum matches the moments,
  ``m = E_p[z]``, ``s^2 = Var_p[z]`` (closed form). We also fit it by Adam
  on ``-E_p[log q]`` with minibatches sampled from p, and check it lands there.
  The fit spreads over both modes and puts mass between them, where p has
  almost none: "mode covering".
- Reverse, ``KL(q || p) = E_q[log q - log p]`` (minus the ELBO of an
  unnormalised p): fitted with reparameterized gradients
  ``z = m + s eps``. From a start on each side it settles on the nearer
  mode, with about that mode's width: "mode seeking". This is the direction
  a VAE's encoder is trained in.
"""
import argparse

import numpy as np

from scratchvae.lessons import vi
from scratchvae.run import plots

TARGET = vi.GaussianMixture1D([0.4, 0.6], [-2.0, 2.5], [0.6, 0.8])


def forward_fit(rng):
    q = vi.Normal(0.0, 0.0)

    def gradient(q, rng):               # -grad KL(p || q) = E_p[grad log q]
        z, _ = TARGET.sample(rng, 256)
        return q.score(z).mean(axis=0)

    vi.fit(q, gradient, steps=3000, lr=0.01, rng=rng)
    vi.fit(q, gradient, steps=1000, lr=0.001, rng=rng)     # a smaller step size averages the minibatch noise
    return q


def reverse_fit(start, rng, steps=2000):
    q = vi.Normal(start, 0.0)
    vi.fit(q, lambda q, rng: vi.reparam_gradient(TARGET, q, rng, 64).mean(axis=0), steps=steps, lr=0.02, rng=rng)
    return q


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="vi_3_kl_directions.png", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stochastic fits")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    mean, var = TARGET.moments()
    forward = forward_fit(rng)
    m, s = forward.params()
    print(f"forward KL(p||q): moment matching gives m = {mean:.4f}, s = {np.sqrt(var):.4f}; "
          f"Adam on samples of p gives m = {m:.4f}, s = {s:.4f}")
    reverse = [reverse_fit(start, rng) for start in (-1.0, 1.0)]
    for start, q in zip((-1.0, 1.0), reverse):
        m, s = q.params()
        print(f"reverse KL(q||p) from m = {start:+.1f}: m = {m:.4f}, s = {s:.4f} "
              f"(the mode nearer the start: {TARGET.means[np.argmin(abs(TARGET.means - m))]:+.1f}, "
              f"width {TARGET.stds[np.argmin(abs(TARGET.means - m))]:.1f})")

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    z = np.linspace(-5.5, 6, 1200)
    ax.fill_between(z, np.exp(TARGET.log_density(z)), color="0.85", label="target p (mixture)")
    ax.plot(z, np.exp(vi.Normal(mean, 0.5 * np.log(var)).log_q(z)), "k:", lw=2,
            label="moment matching (closed form)")
    ax.plot(z, np.exp(forward.log_q(z)), "C0", lw=1.8, label="argmin KL(p||q), fitted: covers both modes")
    for i, q in enumerate(reverse):
        ax.plot(z, np.exp(q.log_q(z)), f"C{i + 1}", lw=1.8,
                label=f"argmin KL(q||p) from m = {(-1.0, 1.0)[i]:+.0f}: seeks one mode")
    ax.set_xlabel("z")
    ax.set_title("Fitting one Gaussian to a mixture: forward vs reverse KL")
    ax.legend(fontsize=8)
    print(f"wrote {plots.save(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
