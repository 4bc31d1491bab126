"""Temporary: flat.py moved to :mod:`scratchvae.flat`; this shim goes once vae.py imports it there."""
from ..flat import FlatDict, pack, zeros_like  # noqa: F401
