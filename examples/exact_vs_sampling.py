"""Where the importance-weighted bound falls short of the exact log p(x), and a check of the
exact value that shares nothing with it.

For the first --images test images of a run with a latent of size 1 or 2, computes log p(x)
by quadrature (``scratchvae.inference.exact``) and the importance-weighted bound with k =
1000; then, for the --check images where the bound falls shortest, two more estimates of
log p(x) and what a better-placed Gaussian would achieve:

* plain Monte Carlo over the prior, ``log mean_j p(x | z_j)``, z_j ~ N(0, I) (--draws of them):
  no encoder, no grid, only the decoder; slow to converge in general, but in one or two
  dimensions enough draws land in the posterior's mass;
* the importance-weighted bound with --big-k samples from the encoder's q(z|x);
* the gap KL(q || p(z|x)) of the encoder's q, and of the diagonal Gaussian with the true
  posterior's own mean and variances (on the grid of ``posterior_grid``): how much of the
  gap is where the encoder puts q (amortisation) rather than q's Gaussian shape.

    SCRATCHVAE_DATA=../shared/data python examples/exact_vs_sampling.py runs/fm-latent2 --also 3919
"""
import argparse
import math

import numpy as np

from scratchvae.inference.evaluate import log_likelihood
from scratchvae.inference.exact import as_float64, log_marginal, posterior_grid
from scratchvae.model.latent import diag_gaussian_log_prob
from scratchvae.run.run import Run


def prior_monte_carlo(model, x, draws, rng, c=None, chunk=200_000):
    """``log (1/S) sum_j p(x | z_j)``, z_j ~ N(0, I), for one example x (d,) (context c (m,)); nats."""
    total, k = -math.inf, model.latent_dim
    for start in range(0, draws, chunk):
        z = rng.standard_normal((min(chunk, draws - start), k))
        cs = None if c is None else np.broadcast_to(c, (len(z), len(c)))
        log_joint, _ = model.log_joint(z, np.broadcast_to(x, (len(z), len(x))), cs)
        log_lik = log_joint + 0.5 * (z ** 2).sum(axis=1) + k * 0.5 * math.log(2 * math.pi)   # - log p(z)
        top = log_lik.max()
        total = np.logaddexp(total, top + math.log(np.exp(log_lik - top).sum()))
    return float(total - math.log(draws))


def gaussian_gaps(model, x, c=None):
    """``(KL(q || p(z|x)) of the encoder's q, KL(g || p(z|x)) of the diagonal Gaussian g with
    p(z|x)'s mean and variances)`` for one example, nats: the first as log p(x) - ELBO, the
    second summed on the posterior's grid."""
    grid = posterior_grid(model, x, c, np.random.default_rng(3))
    z = np.stack(np.meshgrid(*grid["axes"], indexing="ij"), axis=-1).reshape(-1, model.latent_dim)
    cell = np.prod([a[1] - a[0] for a in grid["axes"]])
    log_post = grid["log_posterior"].reshape(-1)
    weight = np.exp(log_post) * cell
    mean = weight @ z
    log_g, _ = diag_gaussian_log_prob(z, mean, np.log(weight @ (z - mean) ** 2))
    return grid["log_px"] - grid["elbo"], float(np.sum(np.exp(log_g) * cell * (log_g - log_post)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory (latent of size 1 or 2)")
    parser.add_argument("--images", type=int, default=300, help="first test images to integrate [300]")
    parser.add_argument("--check", type=int, default=5, help="images with the largest gap to check [5]")
    parser.add_argument("--draws", type=int, default=2_000_000, help="prior draws per checked image [2,000,000]")
    parser.add_argument("--big-k", type=int, default=100_000, help="importance samples per checked image [100,000]")
    parser.add_argument("--also", type=int, nargs="*", default=[], metavar="I", help="more test images to check")
    args = parser.parse_args()

    run = Run.open(args.run)
    model = as_float64(run.vae)
    x = run.x_test[:args.images]
    c = None if run.c_test is None else run.c_test[:args.images]
    exact = log_marginal(model, x, c).log_px
    iw = log_likelihood(model, x, 1000, np.random.default_rng(0), c=c)
    gap = exact - iw
    print(f"first {len(x)} test images, nats: exact log p(x) {exact.mean():.3f}, IW bound (k = 1000) "
          f"{iw.mean():.3f}; exact - IW per image: mean {gap.mean():.3f}, median {np.median(gap):.3f}, "
          f"above 1 nat for {int((gap > 1).sum())}")
    print(f"{'image':>6} {'exact':>10} {'IW k=1000':>10} {f'IW k={args.big_k:,}':>14} "
          f"{f'prior MC, {args.draws:,}':>20} {'KL of q':>9} {'KL of g':>8}")
    checked = [int(i) for i in np.argsort(gap)[::-1][:args.check]] + args.also
    for i in checked:
        xi, ci = run.x_test[i:i + 1], None if run.c_test is None else run.c_test[i:i + 1]
        exact_i = log_marginal(model, xi, ci).log_px[0]
        iw_i, big = (log_likelihood(model, xi, k, np.random.default_rng(seed), chunk=1000, c=ci)[0]
                     for k, seed in ((1000, 0), (args.big_k, 1)))
        ci = None if ci is None else ci[0]
        mc = prior_monte_carlo(model, xi[0], args.draws, np.random.default_rng(2), ci)
        kl_q, kl_g = gaussian_gaps(model, xi[0], ci)
        print(f"{i:6d} {exact_i:10.3f} {iw_i:10.3f} {big:14.3f} {mc:20.3f} {kl_q:9.3f} {kl_g:8.3f}")


if __name__ == "__main__":
    main()
