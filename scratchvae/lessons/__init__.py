"""Variational inference, lesson by lesson: one-dimensional targets, families
and gradient estimators (:mod:`.vi`), and the special functions they need
(:mod:`.special`). They stand apart from the VAE."""
