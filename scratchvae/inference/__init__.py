"""Inference with a trained model: evaluation (ELBO, importance-weighted
log p(x), active units), exact log p(x) and the true posterior by quadrature
for a latent of size 1 or 2 (``exact``), latent interpolation
(``interpolate``), completion of missing pixels, a Gaussian-mixture sampler
of codes (``gmm``) and sample quality judged by a classifier trained on the
real images (``quality``). They use the model's public API only."""
