"""An out-of-tree kernel backend for scratchvae (see kernels.py)."""
