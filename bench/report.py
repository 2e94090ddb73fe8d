"""What every bench's results file shares: the machine line and how the file is written."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """`x86_64, 2 CPUs, Python 3.11.7, load 0.4 at start`: the numbers are this machine's,
    and the load says whether something else shared it."""
    load = os.getloadavg()[0]
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load {load:.1f} at start"
    )


def publish(path: Path, text: str) -> None:
    """Write the results file and print it (a CLI bench, not a service: the table is its
    output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
