"""Progress bars that suit both a terminal and a log file (Slurm output, CI)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(*args: Any, enabled: bool = True, **kwargs: Any) -> tqdm:
    """tqdm to stderr, refreshed every second on a terminal and every 30 s in a log file."""
    kwargs.setdefault("mininterval", 1.0 if sys.stderr.isatty() else 30.0)
    return tqdm(*args, disable=not enabled, file=sys.stderr, **kwargs)
