"""Atomic file writes: a reader sees the old file or the new one, never half of one.

One rule for every file the library writes (checkpoints, histories, arrays,
pictures, data files): the bytes go to a temporary file beside the target,
``.<name>.scratchvae-<host>-<pid>-<random>.part`` (``host``: 8 hex digits of
a hash of this machine's name, ``pid``: the writing process), which is
flushed, fsync'ed and renamed over the target. If anything fails, the
temporary is removed and the old file is left as it was; the
:class:`WriteError` names the file and the cause (for a full disk, the bytes
needed and free).

Principles:

- A command writes only the files it was asked to write. A process killed
  mid-write leaves its temporary behind; :func:`remove_stale_temporaries`
  deletes those, and only those: names of exactly the form above, written on
  this machine by a process that no longer runs. Only ``train`` calls it, on
  its own run directory; a command that reads a file (``sample``,
  ``evaluate``, ...) never deletes anything beside it.
- Files are created with the user's umask and replaced with their old mode:
  a new file gets ``0o666 & ~umask`` (what ``open()`` and ``np.save`` give),
  a file that replaces another keeps the mode of the one it replaces.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator, List, Optional, Union

from .sizes import format_bytes, free_disk

PathLike = Union[str, "os.PathLike[str]"]

#: errors of the file system (not of whatever the writer reads from) that a WriteError explains
FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
               errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}
_FULL = {errno.ENOSPC, errno.EDQUOT}
#: this machine, in a temporary's name: process ids of other machines (a shared disk) are not asked about
HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
#: what marks a temporary as this library's: the prefix of its random part
MARKER = "scratchvae"
#: a temporary's name: the target's, the marker, the machine, the writing process, 8 random characters
#: (those of :func:`tempfile.mkstemp`)
TEMPORARY = re.compile(rf"^\.(?P<name>.+)\.{MARKER}-(?P<host>[0-9a-f]{{8}})-(?P<pid>[1-9][0-9]{{0,9}})-"
                       r"[a-z0-9_]{8}\.part$")
#: where Linux tells a process its umask without changing it
PROC_STATUS = "/proc/self/status"


class WriteError(OSError):
    """A file could not be written. The message names the file and the cause;
    ``errno`` is the file system's error number, ``path`` the file."""

    def __init__(self, message: str, code: Optional[int] = None, path=None):
        super().__init__(message)
        self.errno, self.path = code, None if path is None else Path(path)


@contextlib.contextmanager
def atomic_write(path: PathLike, size: Optional[int] = None) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path``; on success rename it to ``path``.

    Use as ``with atomic_write(p, size=len(data)) as f: f.write(data)``.
    ``size`` (bytes, exact or a close estimate) is checked against the free
    space before anything is written, and named when the disk is full. The
    temporary (in the same directory, so the rename stays on one file
    system) is flushed and fsync'ed, then moved over ``path`` with
    ``os.replace``. If the body raises, or the process is interrupted, the
    temporary is deleted and ``path`` is left as it was: there is never a
    partial file under the final name. The final file gets the mode of the
    file it replaces, or, if new, ``0o666 & ~umask`` (as ``open()`` does).
    Raises :class:`WriteError` for a failure of the file system.
    """
    path = Path(path)
    if size is not None:
        free = free_disk(path.parent)
        if free is not None and size > free:
            raise WriteError(f"cannot write {path}: not enough space on the device: it needs "
                             f"{format_bytes(size)}, {format_bytes(free)} free", errno.ENOSPC, path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name), suffix=".part")
    except OSError as e:
        raise _write_error(path, e, size, 0) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException as e:
        written = _size_of(tmp)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno in FILE_ERRNOS:
            raise _write_error(path, e, size, written) from None
        raise
    _fsync_dir(path.parent)


def temporary_prefix(name: str) -> str:
    """The start of the name of :func:`atomic_write`'s temporary for a file ``name``."""
    return f".{name}.{MARKER}-{HOST}-{os.getpid()}-"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it
    (``Umask:`` of /proc/self/status), else set to 0o077 and back at once
    (``os.umask`` is the only other way to ask, and it is process-wide)."""
    try:
        with open(PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The mode a file written to ``path`` gets: that of the file it replaces,
    else what ``open()`` would give a new one under the current umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`); returns the path."""
    with atomic_write(path, size=len(data)) as f:
        f.write(data)
    return Path(path)


def check_writable(directory: PathLike) -> None:
    """Raise :class:`WriteError` now if no file can be created in ``directory``
    (read-only, no permission), rather than after an hour of work."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise WriteError(f"cannot write into {directory}: {e.strerror or e}", e.errno, directory) from None


def make_dirs(directory: PathLike) -> List[Path]:
    """Create ``directory`` and its missing parents; return those it created,
    deepest first (for :func:`remove_empty`). Raises :class:`WriteError`."""
    directory = Path(directory)
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        cause = "it is a file" if directory.is_file() else e.strerror or str(e)
        raise WriteError(f"cannot make the directory {directory}: {cause}", e.errno, directory) from None
    return missing


def remove_empty(directories: List[Path]) -> None:
    """Remove those of ``directories`` (deepest first) that are empty, so that
    a failed command leaves no trace of the directories it made."""
    for d in directories:
        remove_stale_temporaries(d)
        try:
            d.rmdir()
        except OSError:            # not empty (or gone): keep it and its parents
            return


def remove_stale_temporaries(directory: PathLike) -> List[str]:
    """Delete the temporaries of :func:`atomic_write` in ``directory`` whose
    process no longer runs: those a ``kill -9`` or a power cut left behind.

    Only names of exactly the form :data:`TEMPORARY` count, written on this
    machine (:data:`HOST`) by a process that is gone; any other file, however
    it is named (a user's ``.notes.draft001.part``, an older scratchvae's
    temporary), is left alone. Only ``train`` calls this, on the run
    directory it writes into. Returns the names removed; a directory that
    cannot be read or changed is left alone."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = TEMPORARY.match(name)
        if m and m.group("host") == HOST and not _running(m.group("pid")):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def _running(pid: str) -> bool:
    """Does process ``pid`` run on this machine? (True where that cannot be told.)"""
    if os.name != "posix":                     # no way to ask: keep it
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _write_error(path: Path, e: OSError, size: Optional[int], written: int) -> WriteError:
    """The :class:`WriteError` for the file system error ``e`` while writing ``path``."""
    if e.errno in _FULL:
        free = free_disk(path.parent)
        needed = (f"it needs {format_bytes(size)}" if size is not None
                  else f"{format_bytes(written)} were written when it filled up")
        return WriteError(f"cannot write {path}: no space left on the device: {needed}, "
                          f"{'an unknown amount' if free is None else format_bytes(free)} free", e.errno, path)
    if e.errno == errno.ENOENT and not path.parent.is_dir():
        return WriteError(f"cannot write {path}: there is no directory {path.parent}", e.errno, path)
    return WriteError(f"cannot write {path}: {e.strerror or e}", e.errno, path)


def _size_of(tmp: str) -> int:
    try:
        return os.stat(tmp).st_size
    except OSError:
        return 0


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
