"""Chapter 10's second sweep: a Gaussian decoder N(x; mean(z), sigma^2) with sigma fixed at
0.05, 0.15 and 0.5, the same model otherwise.

    python docs/scripts/gaussian_sigma.py --out gaussian_sigma.png

For each sigma: 784-400-20 on 10,000 built-in digits, a few epochs, seeded;
prints the test mean squared error of the reconstructions (per pixel), the
KL and the active units; draws reconstructions of eight test images above
eight samples' means, per sigma.
"""
import numpy as np
import trained

from scratchvae.inference.evaluate import active_units, elbo

SIGMAS = (0.05, 0.15, 0.5)


def main(argv=None):
    args = trained.sweep_options(__doc__, "gaussian_sigma.png", argv)
    rows = []
    print(f"{'sigma':>6} {'beta it acts as':>16} {'MSE per pixel':>14} {'KL':>7} {'active units':>13}")
    for sigma in SIGMAS:
        model, data = trained.train(latent=20, n=10_000, epochs=args.epochs, likelihood="gaussian_fixed",
                                    sigma=sigma)
        x_test = data.x_test[:2_000]
        mean = model.decode(model.encode(x_test)[0])
        kl = elbo(model, x_test, np.random.default_rng(1))["kl"]
        print(f"{sigma:6.2f} {2 * sigma ** 2:16.4f} {np.mean((mean - x_test) ** 2):14.4f} {kl:7.2f} "
              f"{active_units(model, x_test)[0]:10d} of 20")
        rows += trained.reconstructions_and_samples(model, x_test)
    print(f"wrote {trained.sweep_picture(rows, data.image_shape, args.out, 'sigma', SIGMAS)}")


if __name__ == "__main__":
    main()
