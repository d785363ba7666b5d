"""The training loop's heartbeat in status.json: while a run trains, its `step`, `phase`, `activity`
(training, or evaluating from the start of an evaluation) and `heartbeat_at` (wall-clock time) are
rewritten at most every HEARTBEAT_S seconds, one small atomic write per seed, so that
`flowarena status` tells a slow run from a hung one long before its first checkpoint. The loop asks
`due()` once per step: one read of a monotonic clock; the step is the host's counter, so a beat
never waits for the device."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from harness.run.members import Member

HEARTBEAT_S = 30.0  # while training, status.json is rewritten at least every HEARTBEAT_S plus one step


class Heartbeat:
    """When status.json is due for a heartbeat (`interval_s`, default HEARTBEAT_S, on `clock`), and
    the write itself."""

    def __init__(self, interval_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = HEARTBEAT_S if interval_s is None else interval_s
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        return self.clock() - self.last >= self.interval_s

    def expire(self) -> None:
        """Make the next `due()` true (after an evaluation: say at once that training goes on)."""
        self.last = -math.inf

    def beat(self, members: Sequence[Member], *, step: int, phase: str, activity: str = "training") -> None:
        self.last = self.clock()
        now = time.time()
        for member in members:
            member.run_dir.write_status(
                "running", step=step, phase=phase, activity=activity, heartbeat_at=now
            )
