"""Lesson 1: a posterior that looks intractable, solved exactly, then approximated.

    python examples/vi_1_exact_posterior.py --out vi_1_exact_posterior.png

Model: prior ``p(z) = exp(-z)`` for ``z >= 0``, likelihood ``p(x|z) = N(x; z, 1)``.

Exact answer. ``log p(x, z) = -z - (x - z)^2/2 - log(2 pi)/2``; completing
the square in z gives ``-(z - (x - 1))^2/2 + 1/2 - x - log(2 pi)/2``, so

    p(x)     = exp(1/2 - x) Phi(x - 1)            (integrate the normal over z >= 0)
    p(z | x) = N(z; x - 1, 1) / Phi(x - 1),  z >= 0  (a truncated normal)

Approximations. A log-normal q (reparameterized, ``z = exp(m + s eps)``) and
a Gamma q, each fitted by maximising the ELBO with scratchvae's Adam. For
both, ``ELBO = E_q[log p(x, z)] + H[q]`` is in closed form from E[z] and
E[z^2], and the script checks ``ELBO <= log p(x)`` and
``log p(x) - ELBO = KL(q || p(z|x))``, the KL by quadrature.

Why not a Gaussian q: its support is the whole line, so it puts mass on
z < 0, where the prior is zero and ``log p(x, z) = -inf``. ``E_q[log p(x, z)]``
is then ``-inf``, and so is the ELBO, for every mean and variance: no
gradient can improve it. The family must live where the posterior does.
"""
import argparse

import numpy as np

from scratchvae.lessons import vi
from scratchvae.run import plots

XS = (1.5, 0.0)


def fit_both(x):
    """The exact joint and the two fitted families for one observation x."""
    joint = vi.exponential_prior_normal_likelihood(x)
    fits = {}
    for family in (vi.LogNormal, vi.Gamma):
        q = family(0.0, 0.0)
        vi.fit(q, lambda q, rng: q.d_elbo(joint), steps=3000, lr=0.02)
        fits[family.__name__] = q
    return joint, fits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="vi_1_exact_posterior.png", help="PNG file to write")
    args = parser.parse_args(argv)

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, len(XS), figsize=(11, 4))
    z = np.linspace(1e-6, 4.5, 900)
    for ax, x in zip(axes, XS):
        joint, fits = fit_both(x)
        log_px = joint.log_normalizer()
        print(f"x = {x}: log p(x) = 1/2 - x + log Phi(x - 1) = {log_px:.10f}; "
              f"by quadrature of p(x, z) over z: {vi.log_integral_positive(joint.log_density):.10f}")
        print(f"  {'q':9s} {'parameters':34s} {'ELBO':>10s} {'log p - ELBO':>13s} {'KL(q||post), quad':>18s}")
        ax.plot(z, np.exp(joint.normalized_log_density(z)), "k", lw=2.5, label="exact p(z|x)")
        for name, q in fits.items():
            elbo = q.elbo(joint)
            kl = vi.kl_quadrature(q, joint.normalized_log_density)
            assert elbo <= log_px
            print(f"  {name:9s} {repr(q):34s} {elbo:10.6f} {log_px - elbo:13.3e} {kl:18.3e}")
            ax.plot(z, np.exp(q.log_q(z)), "--", lw=1.8, label=f"{name} q: gap {log_px - elbo:.4f} nats")
        gaussian = vi.Normal(x - 1.0, 0.0)
        print(f"  a Gaussian q, say {gaussian}: ELBO = {gaussian.elbo(joint)} "
              "(it puts mass on z < 0, where log p(x, z) = -inf)")
        ax.set_title(f"x = {x}: log p(x) = {log_px:.4f}")
        ax.set_xlabel("z")
        ax.legend()
    fig.suptitle("Prior exp(-z), likelihood N(x; z, 1): exact posterior and ELBO fits")
    print(f"wrote {plots.save(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
