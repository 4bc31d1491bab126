"""Lesson 3: forward KL covers the modes, reverse KL seeks one.

    python examples/vi_3_kl_directions.py --out vi_3_kl_directions.png

Target: a normalised two-mode density standing for a posterior,
``p(z|x) = 0.4 N(z; -2, 0.6^2) + 0.6 N(z; 2.5, 0.8^2)`` (so ``p(x) = 1``).
Below, p is this target. Approximation: one Gaussian ``q(z) = N(z; m, s^2)``.

- Forward, ``KL(p || q) = E_p[log p] - E_p[log q]``: only the second term
  depends on q, and it is convex in q's natural parameters, so it has one
  minimum, where q's moments match p's: ``m = E_p[z]``, ``s^2 = Var_p[z]``
  (closed form; for any exponential family q, the forward KL's minimum
  matches the expected sufficient statistics). We also fit it by Adam on
  ``-E_p[log q]`` with minibatches sampled from p, and check it lands there.
  The fit spreads over both modes and puts mass between them, where p has
  almost none: "mode covering".
- Reverse, ``KL(q || p) = E_q[log q - log p]`` (minus the ELBO, since
  ``log p(x) = 0``): fitted with reparameterized gradients
  ``z = m + s eps``. It is not convex in (m, s) and has a local minimum at
  each mode: from a start on each side the fit settles on the nearer mode,
  with about that mode's width, "mode seeking". Each fit is only the local
  minimum its start leads to, not "the argmin"; the script computes ``KL(q || p)`` at both (by
  quadrature) and says which is lower. The fit on the heavier
  mode (weight 0.6) is lower, near ``-log 0.6 = 0.51``, the other near
  ``-log 0.4 = 0.92``: a Gaussian that sits on one mode pays about minus the
  log of that mode's weight. A grid over m and log s finds no Gaussian more
  than 0.005 below the lower fit (``tests/test_examples.py``), so up to the
  fit's noise it is the global minimum. This is the direction a VAE's encoder is
  trained in, so its q(z|x) can settle on a poorer mode too.
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


def reverse_kl(q: vi.Normal, points: int = 20_001) -> float:
    """``KL(q || p) = E_q[log q - log p(z|x)]`` for a normal q and the
    normalised target, by the trapezoidal rule over ``m +- 12 s`` (where q's
    tails beyond are below 1e-30)."""
    m, s = q.params()
    z = np.linspace(m - 12 * s, m + 12 * s, points)
    log_q = q.log_q(z)
    return float(np.trapezoid(np.exp(log_q) * (log_q - TARGET.log_density(z)), z))


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
    starts = (-1.0, 1.0)
    reverse = [reverse_fit(start, rng) for start in starts]
    kls = [reverse_kl(q) for q in reverse]
    labels = [f"a local minimum of KL(q||p) from m = {start:+.0f}" for start in starts]
    for label, q, kl in zip(labels, reverse, kls):
        m, s = q.params()
        nearest = np.argmin(abs(TARGET.means - m))
        print(f"reverse: {label}: m = {m:.4f}, s = {s:.4f}, KL(q||p) = {kl:.4f} "
              f"(the mode nearer the start: {TARGET.means[nearest]:+.1f}, width {TARGET.stds[nearest]:.1f}, "
              f"weight {TARGET.weights[nearest]:.1f})")
    low = int(np.argmin(kls))
    print(f"the fit from m = {starts[low]:+.0f} has the lower KL(q||p), {kls[low]:.4f} < {kls[1 - low]:.4f}: "
          f"two local minima, and at most one of them is the global minimum")

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    z = np.linspace(-5.5, 6, 1200)
    ax.fill_between(z, np.exp(TARGET.log_density(z)), color="0.85", label="target p (mixture)")
    ax.plot(z, np.exp(vi.Normal(mean, 0.5 * np.log(var)).log_q(z)), "k:", lw=2,
            label="moment matching (closed form)")
    ax.plot(z, np.exp(forward.log_q(z)), "C0", lw=1.8, label="argmin KL(p||q), fitted: covers both modes")
    for i, (q, label, kl) in enumerate(zip(reverse, labels, kls)):
        ax.plot(z, np.exp(q.log_q(z)), f"C{i + 1}", lw=1.8,
                label=f"{label}: KL = {kl:.3f}{' (the lower)' if i == low else ''}")
    ax.set_xlabel("z")
    ax.set_title("Fitting one Gaussian to a mixture: forward vs reverse KL")
    ax.legend(fontsize=8)
    print(f"wrote {plots.save(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
