"""Read and write IDX files, the format MNIST and its relatives ship in.

An IDX file is a small header followed by the array's elements in C order,
all big-endian:

    bytes 0-1   two zero bytes
    byte  2     type code (see ``TYPE_CODES``)
    byte  3     number of dimensions, ``ndim`` (at least 1)
    4 * ndim    the size of each dimension, unsigned 32-bit
    ...         prod(sizes) elements of the given type

The files are usually distributed gzip-compressed (``*.gz``).  The reader
recognises gzip by its magic bytes (``1f 8b``), whatever the file is called;
the writer compresses when the path ends in ``.gz``.

Every problem with a file (bad magic, unknown type, a header that does not
match the amount of data, trailing bytes, a broken gzip stream) raises
:class:`IDXError`, a ``ValueError`` whose message names the file, says what is
wrong with it and what to do about it.

Writes are atomic (:func:`scratchvae.atomic.atomic_write`): the data go to a temporary file in
the destination directory, which is flushed, fsync'ed and then renamed over
the final name, so a crash never leaves a half-written file under that name.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import IO, Optional, Union

import numpy as np

from ..atomic import atomic_write

PathLike = Union[str, "os.PathLike[str]"]

#: IDX type code -> NumPy dtype of one element (as stored: big-endian).
TYPE_CODES = {
    0x08: np.dtype(">u1"),  # unsigned byte
    0x09: np.dtype(">i1"),  # signed byte
    0x0B: np.dtype(">i2"),  # short
    0x0C: np.dtype(">i4"),  # int
    0x0D: np.dtype(">f4"),  # float
    0x0E: np.dtype(">f8"),  # double
}

#: The reverse mapping, keyed by the native dtype (``np.dtype("uint8")``, ...).
_CODE_OF_DTYPE = {dt.newbyteorder("="): code for code, dt in TYPE_CODES.items()}

_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 24  # 16 MiB per read call

_DEFAULT_HINT = (
    "The file is damaged or was not downloaded completely: delete it and "
    "fetch it again (for a named data set: `scratchvae download NAME`)."
)


class IDXError(ValueError):
    """An IDX file is truncated, corrupt or not an IDX file at all."""


def _fail(path: Path, problem: str, hint: Optional[str] = None) -> IDXError:
    """Build an :class:`IDXError` naming the file, the problem and the remedy."""
    return IDXError(f"{path}: {problem}. {hint or _DEFAULT_HINT}")


def _read_exactly(f: IO[bytes], buf: memoryview) -> int:
    """Fill ``buf`` from ``f``; return the number of bytes read (less at EOF)."""
    total = 0
    n = len(buf)
    while total < n:
        got = f.readinto(buf[total:min(n, total + _READ_CHUNK)])
        if not got:
            break
        total += got
    return total


def _describe_magic(head: bytes) -> str:
    """Explain what the first bytes of a non-IDX file look like."""
    if head[:1] in (b"<", b"{") or head.lower().startswith(b"<!doc"):
        return "it looks like a text or HTML page (a failed download?)"
    return "an IDX file starts with two zero bytes, this one with " + head[:2].hex(" ")


def read_idx(path: PathLike, *, expect_ndim: Optional[int] = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a NumPy array.

    Parameters
    ----------
    path:
        The file.  Compression is detected from the content (gzip magic
        bytes), not from the name.
    expect_ndim:
        If given, the number of dimensions the caller needs (e.g. 3 for an
        image file ``(n, 28, 28)``, 1 for a label file ``(n,)``); any other
        count raises :class:`IDXError`.

    Returns
    -------
    np.ndarray
        A writable, C-contiguous array in native byte order with the shape
        recorded in the header; dtype uint8, int8, int16, int32, float32 or
        float64 according to the type code.

    Raises
    ------
    IDXError
        Bad magic number, unknown type code, zero or unexpected number of
        dimensions, data shorter (truncated) or longer (trailing bytes) than
        the header announces, or a broken gzip stream.
    FileNotFoundError
        The file does not exist.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        head = raw.read(2)
        raw.seek(0)
        if head != _GZIP_MAGIC:
            return _read_stream(path, raw, os.fstat(raw.fileno()).st_size, expect_ndim)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_stream(path, f, None, expect_ndim)
        except IDXError:
            raise
        except (OSError, EOFError, zlib.error) as exc:
            # gzip.BadGzipFile is an OSError; a cut-off stream raises EOFError;
            # a damaged deflate block raises zlib.error.
            raise _fail(path, f"broken gzip stream ({type(exc).__name__}: {exc})") from exc


def _read_stream(
    path: Path, f: IO[bytes], file_size: Optional[int], expect_ndim: Optional[int]
) -> np.ndarray:
    """Parse header and payload from an open binary stream.

    ``file_size`` is the size in bytes of an uncompressed file (lets us check
    the length before allocating), or None for a gzip stream.
    """
    magic = f.read(4)
    if len(magic) < 4:
        raise _fail(path, f"truncated IDX file: only {len(magic)} bytes, not even a header")
    if magic[0] != 0 or magic[1] != 0:
        raise _fail(path, f"not an IDX file (bad magic number {magic.hex(' ')}): "
                    + _describe_magic(magic))
    code, ndim = magic[2], magic[3]
    if code not in TYPE_CODES:
        known = ", ".join(f"0x{c:02X} ({TYPE_CODES[c].newbyteorder('=').name})"
                          for c in TYPE_CODES)
        raise _fail(path, f"unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise _fail(path, "IDX header declares 0 dimensions")
    if expect_ndim is not None and ndim != expect_ndim:
        raise _fail(
            path,
            f"expected a {expect_ndim}-dimensional IDX array but the header declares "
            f"{ndim} dimensions",
            "Check that the file is the right one (image files are *-idx3-*, label "
            "files *-idx1-*) and re-download it if it is damaged "
            "(`scratchvae download NAME`).",
        )
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise _fail(path, f"truncated IDX header: {ndim} dimensions declared but the "
                    "file ends inside the list of sizes")
    shape = tuple(int(s) for s in np.frombuffer(dims_raw, dtype=">u4"))
    dtype = TYPE_CODES[code]
    header_bytes = 4 + 4 * ndim
    n_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    what = f"header announces shape {shape} of {dtype.newbyteorder('=').name} ({n_bytes} bytes)"

    if file_size is not None:  # raw file: check the length before reading
        present = file_size - header_bytes
        if present < n_bytes:
            raise _fail(path, f"truncated IDX file: {what} but only {present} bytes follow")
        if present > n_bytes:
            raise _fail(path, f"{present - n_bytes} trailing bytes after the IDX data: {what}")

    try:
        buf = np.empty(n_bytes, dtype=np.uint8)
    except (MemoryError, ValueError) as exc:
        raise _fail(path, f"{what}, more than can be allocated; the header is "
                    "probably corrupt") from exc
    got = _read_exactly(f, memoryview(buf))
    if got < n_bytes:
        raise _fail(path, f"truncated IDX file: {what} but the data end after {got} bytes")
    extra = f.read(1)  # for gzip this also reaches the end and checks the CRC
    if extra:
        raise _fail(path, f"trailing bytes after the IDX data: {what}")

    arr = buf.view(dtype).reshape(shape)
    if dtype.itemsize == 1:
        return arr.view(dtype.newbyteorder("="))
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray, *, compresslevel: int = 6) -> None:
    """Write ``array`` to ``path`` in IDX format, atomically.

    Parameters
    ----------
    path:
        Destination.  Gzip-compressed when the name ends in ``.gz``, raw
        otherwise.  The directory must exist.
    array:
        At least 1-D, each dimension below 2**32, of dtype uint8, int8,
        int16, int32, float32 or float64 (the IDX standard types).  Stored
        big-endian in C order.
    compresslevel:
        gzip level 1-9 (only used for ``.gz``).

    Raises
    ------
    TypeError
        The dtype has no IDX type code.
    ValueError
        0-D array, more than 255 dimensions, or a dimension too large.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODE_OF_DTYPE:
        names = ", ".join(dt.name for dt in _CODE_OF_DTYPE)
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code; use one of {names}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: IDX stores 1 to 255 dimensions, got a {array.ndim}-D array")
    if any(s >= 2**32 for s in array.shape):
        raise ValueError(f"write_idx: dimension too large for IDX in shape {array.shape}")

    header = bytes([0, 0, _CODE_OF_DTYPE[native], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    # Big-endian copy in C order, seen as plain bytes for writing.
    payload = np.ascontiguousarray(array, dtype=native.newbyteorder(">")).reshape(-1).view(np.uint8)

    with atomic_write(path) as f:
        if path.name.endswith(".gz"):
            inner_name = path.name[:-3]
            with gzip.GzipFile(filename=inner_name, mode="wb", fileobj=f,
                               compresslevel=compresslevel, mtime=0) as gz:
                gz.write(header)
                gz.write(payload)
        else:
            f.write(header)
            f.write(payload)
