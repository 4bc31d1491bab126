"""Inference with a trained model: evaluation (ELBO, importance-weighted
log p(x), active units) and completion of missing pixels. Both use the
model's public API only."""
