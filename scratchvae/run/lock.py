"""One writer per run directory: the lock a training process holds while it writes a run.

    with RunLock("runs/demo"):          # RunInUseError if another process holds it
        ...                             # train, save, draw

The lock is the file ``.scratchvae.lock`` in the run directory, holding the
holder's process id, host and start time (JSON), so that the refusal names
who holds it. It is created with the user's umask and is the one file
scratchvae writes outside the atomic writes of ``scratchvae/atomic.py``:
creating it is the atomic step.

- POSIX: the holder keeps an exclusive ``fcntl.flock`` on the file. The
  kernel drops it when the process ends however it ends (``kill -9``
  included), so a lock file left behind by a dead process never blocks: the
  next trainer locks it and writes its own name into it.
- Elsewhere, or on a file system without ``flock``: the file is created with
  ``O_CREAT | O_EXCL``; an existing one whose process is gone (same host,
  ``os.kill(pid, 0)`` finds none) is stale and replaced; one of another host
  cannot be checked and blocks, with the message saying which file to remove.

Releasing removes the file (the holder still has it locked then, so no one
else can have locked the same file meanwhile); :class:`RunLock` releases on
every way out of its ``with`` block: return, error, KeyboardInterrupt.
Read-only commands take no lock.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:                     # not POSIX: the O_EXCL fallback
    fcntl = None

LOCK = ".scratchvae.lock"
_BUSY = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK}


class RunInUseError(RuntimeError):
    """Another process (or another object of this one) is writing the run directory."""


class RunLock:
    """An exclusive lock on the run directory ``directory`` (which must exist).

    Use as a context manager, or :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunInUseError` naming its holder."""
        if self.held:
            raise RuntimeError(f"{self.path}: this lock is held already")
        if fcntl is not None:
            for _ in range(20):                     # the holder removed the file as we opened it: again
                fd = self._flock()
                if fd is None:                      # no flock on this file system
                    break
                if fd >= 0:
                    self._fd = fd
                    self._write_holder()
                    return
            else:
                raise self._in_use(None)
        self._create()

    def release(self) -> None:
        """Remove the lock file and let go of it (nothing if not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

    # ------------------------------------------------------------------

    def _flock(self) -> Optional[int]:
        """A descriptor of the locked file; -1 to try again; None when the file system has no flock."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read(self.path)
            os.close(fd)
            if e.errno in _BUSY:
                raise self._in_use(holder) from None
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        if _same_file(fd, self.path):
            return fd
        os.close(fd)                                # locked a file its holder has just removed
        return -1

    def _create(self) -> None:
        """The fallback: create the file exclusively, replacing a stale one of a process that is gone."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = _read(self.path)
                if not _stale(holder):
                    raise self._in_use(holder) from None
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            self._fd = fd
            self._write_holder()
            return
        raise self._in_use(_read(self.path))

    def _write_holder(self) -> None:
        data = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(self._fd, 0)
        os.write(self._fd, data)                    # a fresh descriptor: at offset 0

    def _in_use(self, holder: Optional[dict]) -> RunInUseError:
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            who = f"this process ({os.getpid()}) already trains it"
        elif holder:
            who = (f"process {holder.get('pid')} on {holder.get('host')}"
                   + (f", since {holder['since']}" if holder.get("since") else ""))
        else:
            who = "another process"
        way_out = "wait for it to finish or stop it (Ctrl-C saves its checkpoint)"
        if fcntl is None:
            way_out += f"; if that process is gone, remove {self.path}"
        return RunInUseError(f"{self.directory} is in use: {who} is writing this run; {way_out}")


def _read(path: Path) -> Optional[dict]:
    """The holder a lock file names, or None (gone, empty, unreadable)."""
    try:
        holder = json.loads(path.read_bytes() or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _stale(holder: Optional[dict]) -> bool:
    """Is ``holder`` a process of this host that no longer runs? (Unknown: no.)"""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or os.name != "posix":
        return False                        # on Windows os.kill(pid, 0) would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False
