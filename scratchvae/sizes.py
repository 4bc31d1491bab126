"""Byte counts as people read them, and how many the machine has: free disk
space. The probe returns None where the platform does not say, and callers
then skip their check."""
from __future__ import annotations

import os
from typing import Optional


def format_bytes(n: int) -> str:
    """``19,234,567`` -> ``'19.2 MB (19,234,567 bytes)'``; small counts as ``'512 bytes'``."""
    n = int(n)
    for unit, size in (("TB", 10 ** 12), ("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def free_disk(directory) -> Optional[int]:
    """Bytes an unprivileged writer may still put into the file system of ``directory``."""
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):          # no such directory, or not POSIX
        return None
    return st.f_bavail * st.f_frsize
