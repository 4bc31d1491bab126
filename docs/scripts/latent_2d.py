"""Chapter 9's pictures: a VAE with a 2-D latent on the built-in digits, looked at from inside.

    python docs/scripts/latent_2d.py --out latent_2d.png

Trains 784-400-2 on 20,000 synthetic digits for a few epochs (seeded), then
draws into one picture: the posterior means of 2,000 test images coloured
by digit with the manifold's grid outlined; the manifold (decoded means over
that grid); for one test image its true posterior beside the encoder's
q(z|x), with the exact gap log p(x) - ELBO; eight test images, their
reconstructions and eight samples from the prior; and the decoded path
between two test images' codes, straight (lerp) and along the sphere (slerp).
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import trained

from scratchvae.inference import exact
from scratchvae.inference.interpolate import interpolate
from scratchvae.inference.evaluate import elbo
from scratchvae.run import plots


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="latent_2d.png", help="PNG file to write")
    parser.add_argument("--epochs", type=int, default=5, help="epochs over 20,000 images [5]")
    parser.add_argument("--image", type=int, default=0, help="test image whose posterior is drawn [0]")
    args = parser.parse_args(argv)

    model, data = trained.train(latent=2, epochs=args.epochs)
    x_test, y_test = data.x_test[:2_000], data.y_test[:2_000]
    test = elbo(model, x_test, np.random.default_rng(1))
    print(f"{args.epochs} epochs: test -ELBO {test['total']:.2f} nats = reconstruction {test['nll']:.2f} "
          f"+ KL {test['kl']:.2f}")

    mu = model.encode(x_test)[0]
    grid = plots.manifold_grid(mu=mu)
    print(f"posterior means span z1 in [{mu[:, 0].min():.2f}, {mu[:, 0].max():.2f}], "
          f"z2 in [{mu[:, 1].min():.2f}, {mu[:, 1].max():.2f}]")
    post = exact.posterior_grid(model, x_test[args.image], rng=np.random.default_rng(2))
    print(f"test image {args.image} (a {y_test[args.image]}): log p(x) = {post['log_px']:.3f} by quadrature, "
          f"ELBO = {post['elbo']:.3f}, so KL(q(z|x) || p(z|x)) = {post['log_px'] - post['elbo']:.3f} nats")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plots.latent_space(model, x_test, y_test, tmp / "latent.png", box=grid[:, [0, -1]])
        plots.manifold(model, data.image_shape, tmp / "manifold.png", mu=mu)
        plots.posterior(post, x_test[args.image], data.image_shape, tmp / "posterior.png")
        eight = x_test[:8]
        plots.image_grid(np.concatenate([eight, model.decode(model.encode(eight)[0]),
                                         model.decode(np.random.default_rng(3).standard_normal((8, 2), np.float32))]),
                         data.image_shape, tmp / "images.png", "test images, reconstructions, prior samples", cols=8)
        a, b = mu[0], mu[int(np.flatnonzero(y_test != y_test[0])[0])]
        paths = interpolate(model, a, b, steps=10)
        plots.image_grid(paths.reshape(-1, paths.shape[-1]), data.image_shape, tmp / "paths.png",
                         "from one test image's code to another's: lerp, slerp", cols=10)
        plt = plots.pyplot()
        fig = plt.figure(figsize=(12, 13))
        spots = {"latent": (0, 0, 1), "manifold": (0, 1, 1), "posterior": (1, 0, 2), "images": (2, 0, 1),
                 "paths": (2, 1, 1)}
        layout = fig.add_gridspec(3, 2, height_ratios=[1.25, 1, 0.8])
        for name, (row, col, span) in spots.items():
            ax = fig.add_subplot(layout[row, col:col + span])
            ax.imshow(plt.imread(tmp / f"{name}.png"))
            ax.axis("off")
        fig.tight_layout()
        print(f"wrote {plots.save(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
