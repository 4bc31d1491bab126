"""Byte counts as people read them, and how many the machine has: free disk
space and available memory. Each probe returns None where the platform does
not say, and callers then skip their check."""
from __future__ import annotations

import os
from typing import Optional

MEMINFO = "/proc/meminfo"


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


def available_memory() -> Optional[int]:
    """Bytes of memory that can be allocated without swapping: ``MemAvailable``
    of /proc/meminfo (Linux), else the free physical pages, else None."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024           # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
