"""The memory a model needs, estimated from its sizes before anything is
allocated, and the guard that refuses what does not fit.

NumPy asked for too much either fails with a bare ``MemoryError`` or, with
Linux's overcommit, succeeds and the process is killed later when the pages
are touched. So the model estimates first and raises
:class:`NotEnoughMemoryError` (a ``MemoryError``) with the bytes needed and
available instead. The estimates are upper bounds of a few percent, not
exact accounts: each counts the large arrays (weights, activations and their
gradients), not Python's small objects.
"""
from __future__ import annotations

from typing import Iterable, Tuple

from ..sizes import available_memory, format_bytes


class NotEnoughMemoryError(MemoryError):
    """An allocation that does not fit in the memory available; the message
    gives the bytes needed and available."""


def require(nbytes: int, what: str) -> None:
    """Raise :class:`NotEnoughMemoryError` if ``nbytes`` exceed the memory
    available now (nothing is checked where the platform does not say)."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise NotEnoughMemoryError(f"{what} would take about {format_bytes(nbytes)} of memory, but only "
                                   f"{format_bytes(available)} is available; use smaller sizes")


def init_bytes(shapes: Iterable[Tuple[int, int]], extra: int, itemsize: int) -> int:
    """Bytes to make a model's parameters and gradients: linear layers of the
    given (fan_in, fan_out), plus ``extra`` other parameters. Each weight is
    drawn in float64 and copied into the dict and then the flat buffer; the
    gradients take one more buffer."""
    sizes = [(fan_in + 1) * fan_out for fan_in, fan_out in shapes]
    return (sum(sizes) + extra) * 3 * itemsize + 8 * max(sizes, default=0)


def step_bytes(model, n: int, samples: int = 1) -> int:
    """Bytes of the workspace of one training step of ``model`` (a VAE) on n
    examples with ``samples`` draws of z each: per row (n samples rows) z, its
    noise and every decoder layer's output, each with its gradient, and the
    likelihood's gradient (d); per example the encoder's outputs, mu and
    logvar, each with its gradient. A VampPrior's K pseudo-inputs are encoded
    with the batch (n + K encoder rows, their inputs and input gradients); a
    flow adds its parameters per example and their gradient."""
    k, d = model.latent_dim, model.input_dim
    per_row = 2 * (k + sum(layer.fan_out for layer in model.decoder.layers)) + d + 5
    if samples > 1:                                     # x and c repeated per sample
        per_row += d + model.context_dim
    per_example = 2 * (sum(layer.fan_out for layer in model.encoder.layers) + 2 * k) + 2
    rows_enc = n + model.pseudo_inputs
    extra = 2 * rows_enc * d if model.pseudo_inputs else 0
    extra += 2 * n * model.q_flow.width(k)
    return (n * samples * per_row + rows_enc * per_example + extra) * model.dtype.itemsize


def decode_bytes(model, n: int) -> int:
    """Bytes to decode n codes: z, every decoder layer's output (kept for the
    backward) and the likelihood's mean."""
    per_row = model.latent_dim + sum(layer.fan_out for layer in model.decoder.layers) + model.input_dim
    return n * per_row * model.dtype.itemsize
