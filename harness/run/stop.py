"""The stop request: a flag that a signal handler may set (`request_stop`) and the training loop
reads at every step boundary, where it checkpoints and returns "preempted"."""

from __future__ import annotations

import threading

_stop = threading.Event()


def request_stop() -> None:
    """Ask the running training loop to checkpoint at the next step boundary and return
    "preempted" (safe to call from a signal handler, e.g. on Slurm preemption)."""
    _stop.set()


def clear_stop() -> None:
    _stop.clear()


def stop_requested() -> bool:
    return _stop.is_set()
