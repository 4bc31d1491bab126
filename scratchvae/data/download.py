"""Fetch the official files of a named data set, verified by SHA-256.

Only the standard library is used (``urllib``).  For each of the four files:

* if it is already in the destination with an accepted SHA-256, skip it;
* otherwise stream it from the first mirror that answers into a temporary
  file in the destination folder, hashing as it goes;
* check that as many bytes arrived as the server announced, and that the
  SHA-256 is one recorded in :data:`scratchvae.data.datasets.DATASETS`;
* only then rename the temporary file to its final name.

On any failure the temporary file is removed, so the destination never holds
a partial or unverified file under a real name.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .._version import __version__
from ..atomic import atomic_write
from .datasets import DATASETS, canonical_name, default_cache_dir

ProgressFn = Optional[Callable[[str], object]]
_CHUNK = 1 << 20  # 1 MiB


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, network failure, short transfer)."""


class ChecksumError(DownloadError):
    """A fetched file's SHA-256 is not one we recorded for it."""


def sha256_file(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file's bytes, as 64 lowercase hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _user_agent() -> str:
    return f"scratchvae/{__version__} (python urllib)"


def _size(n: int) -> str:
    """Human-readable size: ``'29.5 kB'``, ``'26.4 MB'``."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _fetch(url: str, final: Path, accepted: Tuple[str, ...], progress: ProgressFn,
           timeout: float) -> None:
    """Download ``url`` to ``final`` atomically, checking length and SHA-256."""
    label = final.name
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, \
                atomic_write(final) as out:
            announced = resp.headers.get("Content-Length")
            total = int(announced) if announced and announced.isdigit() else None
            digest = hashlib.sha256()
            done = 0
            next_report = 0.0
            if progress:
                size = _size(total) if total is not None else "unknown size"
                progress(f"{label}: downloading {url} ({size})")
            while True:
                try:
                    block = resp.read(_CHUNK)
                except http.client.IncompleteRead as exc:
                    block = exc.partial
                    digest.update(block)
                    done += len(block)
                    break
                if not block:
                    break
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress and total:
                    frac = done / total
                    if frac >= next_report:
                        progress(f"{label}: {_size(done)} / {_size(total)} ({frac:.0%})")
                        next_report = frac + 0.1
                elif progress and done >= next_report * 1e6:
                    progress(f"{label}: {_size(done)} so far")
                    next_report = done / 1e6 + 8
            if total is not None and done != total:
                raise DownloadError(
                    f"{url}: truncated transfer, received {done} of the {total} bytes "
                    "announced; nothing was saved. Try again (the connection dropped or "
                    "the server cut the file short).")
            got = digest.hexdigest()
            if got not in accepted:
                raise ChecksumError(
                    f"{url}: SHA-256 mismatch for {label}: got {got}, expected "
                    f"{' or '.join(accepted)}; the file was not saved. The server sent a "
                    "different file (a corrupted copy, an error page, or a changed "
                    "upstream); try again later or use another mirror (base_url).")
            if progress:
                progress(f"{label}: {_size(done)}, SHA-256 verified")
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP error {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: cannot connect ({exc.reason})") from exc
    except (socket.timeout, TimeoutError) as exc:
        raise DownloadError(f"{url}: timed out after {timeout} s") from exc
    except (http.client.HTTPException, ConnectionError) as exc:
        raise DownloadError(f"{url}: connection failed ({type(exc).__name__}: {exc})") from exc


def _normalise_files(files: Mapping[str, Union[str, Iterable[str]]]) -> Dict[str, Tuple[str, ...]]:
    out: Dict[str, Tuple[str, ...]] = {}
    for fname, digests in files.items():
        if isinstance(digests, str):
            digests = (digests,)
        out[fname] = tuple(d.strip().lower() for d in digests)
    return out


def _already_verified(final: Path, accepted: Tuple[str, ...], progress: ProgressFn) -> bool:
    """Whether ``final`` is already there with an accepted SHA-256 (reported either way if it is there)."""
    if not final.is_file():
        return False
    if sha256_file(final) in accepted:
        if progress:
            progress(f"{final.name}: already present, SHA-256 verified")
        return True
    if progress:
        progress(f"{final.name}: present but its SHA-256 does not match; fetching again")
    return False


def _fetch_from_mirrors(urls: List[str], final: Path, accepted: Tuple[str, ...], key: str, progress: ProgressFn,
                        timeout: float) -> None:
    """Fetch ``final`` from the first of ``urls`` that delivers it whole and verified; if none does, raise
    its one error, or one listing every mirror's (a :class:`ChecksumError` if each was one)."""
    errors: List[DownloadError] = []
    for url in urls:
        try:
            _fetch(url, final, accepted, progress, timeout)
            return
        except DownloadError as exc:
            errors.append(exc)
            if progress and len(urls) > 1:
                progress(f"{final.name}: failed ({exc}); trying the next mirror")
    if len(errors) == 1:
        raise errors[0]
    kind = ChecksumError if all(isinstance(e, ChecksumError) for e in errors) else DownloadError
    raise kind(f"could not fetch {final.name} for {key!r}; every mirror failed:\n"
               + "\n".join(f"  - {e}" for e in errors)) from errors[-1]


def download(
    name: str,
    dest_dir: Optional[Union[str, os.PathLike]] = None,
    *,
    base_url: Optional[str] = None,
    progress: ProgressFn = print,
    timeout: float = 60,
    files: Optional[Mapping[str, Union[str, Iterable[str]]]] = None,
) -> Path:
    """Fetch and verify the four files of a named data set.

    Parameters
    ----------
    name:
        ``mnist``, ``fashion-mnist`` or ``kmnist``.
    dest_dir:
        Folder to put the files in (created if needed).  Default
        ``~/.cache/scratchvae/<name>``, the place :func:`find_dataset` looks.
    base_url:
        Fetch ``<base_url>/<file name>`` instead of the official mirrors
        (a mirror of your own, or a local test server; ``file://`` works).
    progress:
        Called with one line of text per event (start, about every 10 % as
        "bytes so far / total", verified, skipped); ``None`` for silence.
    timeout:
        Seconds to wait for the server on each connection and read.
    files:
        File name -> accepted SHA-256 hex digest(s), replacing the recorded
        table (for tests and private mirrors).  With it, ``name`` need not be
        a known data set if ``base_url`` is given.

    Returns
    -------
    Path
        The destination folder, holding the verified files.

    Raises
    ------
    ChecksumError
        A file arrived whole but with a SHA-256 we do not accept.
    DownloadError
        HTTP error, network failure or a transfer shorter than announced.
        The message lists what was tried.
    """
    key = canonical_name(name)
    spec = DATASETS.get(key)
    if spec is None and (files is None or base_url is None):
        raise ValueError(f"cannot download {name!r}: known data sets are {', '.join(DATASETS)}")
    table = _normalise_files(files) if files is not None else dict(spec.sha256)  # type: ignore[union-attr]
    dest = Path(dest_dir).expanduser() if dest_dir is not None else default_cache_dir(key)
    dest.mkdir(parents=True, exist_ok=True)

    for fname, accepted in table.items():
        final = dest / fname
        if _already_verified(final, accepted, progress):
            continue
        if base_url is not None:
            urls = [base_url.rstrip("/") + "/" + fname]
        else:
            urls = spec.urls(fname)  # type: ignore[union-attr]
        _fetch_from_mirrors(urls, final, accepted, key, progress, timeout)
    return dest
