"""The whole VAE training loop in a screenful, on the built-in synthetic digits.

Run:  python examples/train_loop.py
Every step: draw a minibatch, compute the negative ELBO and its gradient by
hand-written backprop (model.loss_and_grads), and let Adam update the
parameter dict in place. Prints the test -ELBO (nats per example) per epoch.
"""
import numpy as np

import scratchvae as sv
from scratchvae.data import synthetic_digits
from scratchvae.inference.evaluate import elbo


def main(epochs=3, batch_size=128, seed=0):
    images, _ = synthetic_digits(20_000, seed=seed)
    x = images.reshape(len(images), -1)              # (n, 784), grey levels in [0, 1]
    x_train, x_test = x[:18_000], x[18_000:]

    model = sv.VAE(input_dim=784, hidden=[400], latent_dim=20, seed=seed)
    opt = sv.Adam(model.params, lr=1e-3)
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch_size):
            batch = x_train[order[start:start + batch_size]]
            losses, grads = model.loss_and_grads(batch, rng=rng)   # eps ~ N(0, I) drawn inside
            opt.step(grads)
        test = elbo(model, x_test, np.random.default_rng(1))
        print(f"epoch {epoch}: test -ELBO {test['total']:.2f} = reconstruction {test['nll']:.2f} "
              f"+ KL {test['kl']:.2f} nats")


if __name__ == "__main__":
    main()
