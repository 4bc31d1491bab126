"""Atomic file writes: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path``; on success rename it to ``path``.

    Use as ``with atomic_write(p) as f: f.write(...)``.  The temporary file
    (``.<name>.<random>.part`` in the same directory, so the rename stays on
    one file system) is flushed and fsync'ed, then moved over ``path`` with
    ``os.replace``.  If the body raises, or the process is interrupted, the
    temporary file is deleted and ``path`` is left as it was: there is never a
    partial file under the final name.  The final file gets mode 0o644.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable by fsync'ing its directory (best effort, POSIX)."""
    if os.name != "posix":
        return
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
