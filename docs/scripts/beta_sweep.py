"""Chapter 10's sweep: the same VAE trained with KL weights beta = 0.25, 1, 4 and 16.

    python docs/scripts/beta_sweep.py --out beta_sweep.png

For each beta: 784-400-20 on 10,000 built-in digits, a few epochs, seeded.
Prints the test reconstruction term, KL and ELBO (always at beta = 1) and
the active units (latent dimensions whose posterior mean varies over the
data, Burda et al. 2016); draws, per beta, reconstructions of the same eight
test images above eight samples from the prior.
"""
import numpy as np
import trained

from scratchvae.inference.evaluate import active_units, elbo

BETAS = (0.25, 1.0, 4.0, 16.0)


def main(argv=None):
    args = trained.sweep_options(__doc__, "beta_sweep.png", argv)

    rows = []
    print(f"{'beta':>6} {'reconstruction':>15} {'KL':>8} {'-ELBO':>8} {'active units':>13}")
    for beta in BETAS:
        model, data = trained.train(latent=20, n=10_000, epochs=args.epochs,
                                    step=lambda m, b, r: m.loss_and_grads(b, rng=r, beta=beta))
        x_test = data.x_test[:2_000]
        test = elbo(model, x_test, np.random.default_rng(1))
        active, _ = active_units(model, x_test)
        print(f"{beta:6.2f} {test['nll']:15.2f} {test['kl']:8.2f} {test['total']:8.2f} {active:10d} of 20")
        rows += trained.reconstructions_and_samples(model, x_test)
    print(f"wrote {trained.sweep_picture(rows, data.image_shape, args.out, 'beta', BETAS)}")


if __name__ == "__main__":
    main()
