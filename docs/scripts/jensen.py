"""Chapter 3's picture: Jensen's inequality on chapter 2's model, log E[w] against E[log w].

    python docs/scripts/jensen.py --out jensen.png

For x = 1.5 and a log-normal q fitted by maximising the ELBO, draws the
importance weights w = p(x, z) / q(z), z ~ q, and compares: E[log w], the
ELBO (in closed form); log E[w] = log p(x) (exact); and the average of
log (1/K) sum_k w_k over many draws of K weights, which climbs from the first
to the second as K grows.
"""
import argparse

import numpy as np

from scratchvae.lessons import vi
from scratchvae.run import plots


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="jensen.png", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed [0]")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    x = 1.5
    joint = vi.exponential_prior_normal_likelihood(x)
    log_px = vi.exponential_prior_log_evidence(x)
    q = vi.LogNormal(0.0, 0.0)
    vi.fit(q, lambda q, rng: q.d_elbo(joint), steps=3000, lr=0.02)
    elbo = q.elbo(joint)

    draws = 4000
    z = q.sample(rng, draws * 1024).reshape(draws, 1024)
    log_w = joint.log_density(z) - q.log_q(z)
    ks = 2 ** np.arange(11)
    bound = []
    for k in ks:                      # log (1/K) sum_k w_k, averaged over the draws
        lw = log_w[:, :k]
        top = lw.max(axis=1, keepdims=True)
        bound.append(float(np.mean(top[:, 0] + np.log(np.mean(np.exp(lw - top), axis=1)))))

    print(f"x = {x}, q = {q}")
    print(f"E[log w] = ELBO (closed form)        {elbo:.4f}")
    print(f"E[log w], {log_w.size:,} samples       {log_w.mean():.4f}")
    print(f"log E[w] = log p(x) (exact)          {log_px:.4f}")
    print(f"log of the sample mean of w          {np.log(np.mean(np.exp(log_w))):.4f}")
    print(f"gap log p(x) - ELBO = KL(q || p(z|x)) {log_px - elbo:.4f}")
    for k, b in zip(ks, bound):
        print(f"  K = {k:4d}: mean of log (1/K) sum w_k = {b:.4f}")

    plt = plots.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    # the far left tail (large z, where q is wider than the posterior) is cut for legibility
    left.hist(log_w[:, 0], bins=80, density=True, color="0.75", range=tuple(np.percentile(log_w[:, 0], [1, 100])))
    left.axvline(elbo, color="C0", label=f"E[log w] = ELBO = {elbo:.3f}")
    left.axvline(log_px, color="C3", label=f"log E[w] = log p(x) = {log_px:.3f}")
    left.set_xlabel("log w = log p(x, z) - log q(z),  z ~ q")
    left.set_ylabel("density")
    left.legend(fontsize=8)
    left.set_title("one weight: E[log w] <= log E[w] (Jensen)")
    right.semilogx(ks, bound, "o-", base=2, color="C2", label="mean of log (1/K) sum_k w_k")
    right.axhline(elbo, color="C0", ls="--", label="ELBO (K = 1)")
    right.axhline(log_px, color="C3", ls="--", label="log p(x)")
    right.set_xlabel("K, weights averaged inside the log")
    right.set_ylabel("nats")
    right.legend(fontsize=8)
    right.set_title("averaging K weights closes the gap")
    print(f"wrote {plots.save(fig, args.out)}")


if __name__ == "__main__":
    main()
