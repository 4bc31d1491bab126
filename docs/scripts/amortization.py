"""Chapter 6's measurements on a VAE with a 2-D latent, where log p(x) is exact: the Monte Carlo
error of the ELBO's estimate, and the gap the encoder leaves against the best Gaussian per image.

    python docs/scripts/amortization.py

For five test images: the exact log p(x) (quadrature); the ELBO of the
encoder's q(z|x); the ELBO of the best diagonal Gaussian for that image alone,
found by Adam on (mu, log sigma^2) with 256 fixed noise draws and
central-difference gradients (four numbers: cheap); then the approximation
gap (log p(x) - best ELBO) and the amortization gap (best ELBO - encoder's).
"""
import numpy as np
import trained

import scratchvae as sv
from scratchvae.inference import exact

LOG_2PI = np.log(2 * np.pi)


def elbo_of(model, x, mu, logvar, eps):
    """Monte Carlo ELBO of q = N(mu, diag exp(logvar)) for one image x (d,), one term per row of eps (S, 2)."""
    z = mu + np.exp(logvar / 2) * eps
    log_q = -0.5 * np.sum(eps ** 2 + logvar + LOG_2PI, axis=1)
    return model.log_joint(z, np.repeat(x[None], len(z), axis=0))[0] - log_q


def best_gaussian(model, x, mu, logvar, eps, steps=200, h=1e-2):
    """(mu, logvar) maximising the ELBO estimate with fixed eps, from the encoder's as the start."""
    theta = np.concatenate([mu, logvar]).astype(np.float64)
    opt = sv.Adam({"theta": theta}, lr=0.02)
    f = lambda t: float(np.mean(elbo_of(model, x, t[:2], t[2:], eps)))      # noqa: E731
    for _ in range(steps):
        grad = np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(4)])
        opt.step({"theta": -grad})
    return theta[:2], theta[2:]


def main():
    model, data = trained.train(latent=2)
    x = data.x_test[:5]
    log_px = exact.log_marginal(model, x).log_px                      # in float64, whatever the model's dtype
    mu, logvar = model.encode(x)
    rng = np.random.default_rng(0)

    print("Monte Carlo: the ELBO of test image 0 estimated from S draws of z, 300 repeats")
    for s in (1, 10, 100, 1000):
        estimates = [np.mean(elbo_of(model, x[0], mu[0], logvar[0], rng.standard_normal((s, 2))))
                     for _ in range(300)]
        print(f"  S = {s:4d}: mean {np.mean(estimates):9.3f}, standard deviation {np.std(estimates):7.3f}")

    print("\nimage  log p(x)  ELBO, encoder  ELBO, best Gaussian  approximation gap  amortization gap")
    eps_fit, eps_eval = rng.standard_normal((256, 2)), rng.standard_normal((20_000, 2))
    for i in range(len(x)):
        enc = float(np.mean(elbo_of(model, x[i], mu[i], logvar[i], eps_eval)))
        m, lv = best_gaussian(model, x[i], mu[i], logvar[i], eps_fit)
        best = float(np.mean(elbo_of(model, x[i], m, lv, eps_eval)))
        print(f"{i:5d} {log_px[i]:9.3f} {enc:14.3f} {best:20.3f} {log_px[i] - best:18.3f} {best - enc:17.3f}")


if __name__ == "__main__":
    main()
