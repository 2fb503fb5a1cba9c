"""How much memory this machine has free: MemAvailable from /proc/meminfo, else psutil, else the free pages."""

from __future__ import annotations

import os


def available_ram() -> int:
    """Bytes of RAM available to new allocations without swapping."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
