"""Lesson 2: four gradient estimators of the ELBO, all unbiased, with very different variances.

    python examples/vi_2_gradient_estimators.py --out vi_2_gradient_estimators.png

``ELBO(theta) = E_q[log p(x, z) - log q(z; theta)]``, with ``p(x, z)`` the
unnormalised posterior (x fixed). Its gradient can be estimated from samples
of q in several ways:

- score function (black-box VI): ``E_q[f(z) grad log q(z)]`` with
  ``f = log p(x, z) - log q(z)``, which needs only ``log q``, its score
  and ``log p(x, z)``;
- the same with a control variate: ``E_q[(f(z) - a) grad log q(z)]``; any
  constant a leaves the mean unchanged (``E_q[grad log q] = 0``), and
  ``a = E[f h^2]/E[h^2]`` (h the score) minimises the variance;
- reparameterization: ``z = T(eps; theta)`` with eps from a fixed
  distribution, ``E[d log p(x, z)/dz dz/dtheta] + grad H[q]``;
- G-REP for the Gamma, which has no such T. Standardise,
  ``eps = (log z - psi(alpha) + log beta)/sqrt(psi'(alpha))``: eps has mean 0
  and variance 1 whatever theta, but the rest of its shape still depends
  (weakly) on alpha. With ``z = T(eps; theta)`` the inverse, the gradient is
  ``E[d log p(x, z)/dz dT/dtheta]`` (the reparameterization term)
  ``+ E[log p(x, z) d log q_eps(eps; theta)/dtheta]`` (the correction: the
  score of the noise's own density ``q_eps``, which a fixed noise
  distribution would make 0) ``+ grad H[q]`` (exact). Here ``log p(x, z)``
  alone multiplies the correction, not ``f``: ``log q``'s part of the ELBO
  is the entropy, taken in closed form (``vi.grep_gradient``).

The cases are lesson 1's posterior (x = 1.5) with a log-normal and a Gamma q,
and a normal prior with a normal likelihood (x = 0.8) with a normal q, where
everything is Gaussian. The exact gradient is in closed form for all of
them (``vi.Family.d_elbo``). The script prints each estimator's mean over n
samples against it (in standard errors) and its variance per sample.
"""
import argparse
import math

import numpy as np

from scratchvae.lessons import vi
from scratchvae.run import plots

CASES = {
    "log-normal q, lesson 1": (vi.LogNormal(0.2, -0.5), vi.exponential_prior_normal_likelihood(1.5)),
    "Gamma q, lesson 1": (vi.Gamma(0.7, 0.3), vi.exponential_prior_normal_likelihood(1.5)),
    "normal q, normal-normal": (vi.Normal(0.3, -0.2), vi.normal_prior_normal_likelihood(0.8)),
}


def estimators(q):
    out = {"score": lambda t, q, r, n: vi.score_function_gradient(t, q, r, n),
           "score + CV": lambda t, q, r, n: vi.score_function_gradient(t, q, r, n, control_variate=True)}
    if hasattr(q, "reparam"):
        out["reparam"] = vi.reparam_gradient
    if isinstance(q, vi.Gamma):
        out["G-REP"] = vi.grep_gradient
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="vi_2_gradient_estimators.png", help="PNG file to write")
    parser.add_argument("-n", type=int, default=200_000, help="samples per estimator [200000]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, len(CASES), figsize=(13, 4))
    for ax, (case, (q, target)) in zip(axes, CASES.items()):
        exact = q.d_elbo(target)
        print(f"{case}: {q}, exact gradient "
              + ", ".join(f"d/d{n} = {g:+.4f}" for n, g in zip(q.param_names, exact)))
        print(f"  {'estimator':12s} " + " ".join(f"{'(mean-exact)/se ' + n:>24s}" for n in q.param_names)
              + " " + " ".join(f"{'var/sample ' + n:>20s}" for n in q.param_names))
        names, variances = [], []
        for name, estimator in estimators(q).items():
            g = estimator(target, q, rng, args.n)
            z_score = (g.mean(axis=0) - exact) / (g.std(axis=0) / math.sqrt(args.n))
            var = g.var(axis=0)
            print(f"  {name:12s} " + " ".join(f"{v:24.2f}" for v in z_score)
                  + " " + " ".join(f"{v:20.4g}" for v in var))
            names.append(name)
            variances.append(var)
        variances = np.array(variances)
        width = 0.38
        pos = np.arange(len(names))
        for i, pname in enumerate(q.param_names):
            ax.bar(pos + (i - 0.5) * width, variances[:, i], width, label=f"d/d {pname}")
        ax.set_xticks(pos, names)
        ax.set_yscale("log")
        ax.set_ylabel("variance per sample")
        ax.set_title(case)
        ax.legend()
    fig.suptitle(f"Variance of single-sample ELBO gradient estimates ({args.n} samples each; all unbiased)")
    print(f"wrote {plots.save(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
