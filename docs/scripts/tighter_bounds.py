"""Chapter 11's comparison: the same VAE trained on the ELBO, on the importance-weighted bound
(IWAE, k = 5) and on IWAE with DReG's encoder gradient.

    python docs/scripts/tighter_bounds.py

784-400-20 on 10,000 built-in digits, a few epochs, seeded; prints for each the
test ELBO, the importance-weighted estimate of log p(x) with k = 200 and the
gap between them, and the active units.
"""
import argparse

import numpy as np
import trained

from scratchvae.inference.evaluate import active_units, elbo, log_likelihood


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs over 10,000 images [3]")
    args = parser.parse_args(argv)
    print(f"{'trained on':>22} {'test ELBO':>10} {'log p(x), k=200':>16} {'gap':>6} {'active units':>13}")
    for name, step in (("the ELBO", lambda m, b, r: m.loss_and_grads(b, rng=r)),
                       ("IWAE, k = 5", lambda m, b, r: m.iw_loss_and_grads(b, 5, rng=r)),
                       ("IWAE + DReG, k = 5", lambda m, b, r: m.iw_loss_and_grads(b, 5, rng=r, dreg=True))):
        model, data = trained.train(latent=20, n=10_000, epochs=args.epochs, step=step)
        x_test = data.x_test[:1_000]
        bound = -elbo(model, x_test, np.random.default_rng(1))["total"]
        log_px = float(np.mean(log_likelihood(model, x_test, 200, np.random.default_rng(2))))
        print(f"{name:>22} {bound:10.2f} {log_px:16.2f} {log_px - bound:6.2f} {active_units(model, x_test)[0]:10d}")


if __name__ == "__main__":
    main()
