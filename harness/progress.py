"""Progress output that suits both a terminal and a log file (Slurm output, CI): bars, and
messages that do not break them. The bars are analysis/progress.py's (the one place that makes
them, importable by both analysis/ and harness/): tqdm on a terminal, and in a log one plain line
(count, rate, ETA, last success) at most every 30 s instead of carriage-return redraws."""

from __future__ import annotations

from analysis.progress import Progress, progress_bar, write

__all__ = ["Progress", "progress_bar", "say"]


def say(message: str, enabled: bool = True) -> None:
    """A line on stderr that leaves a running progress bar intact."""
    if enabled:
        write(message)
