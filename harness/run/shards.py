"""A task's offline dataset as the trainer sees it (`OfflineData`, read through the task's source,
harness/run/sources/): one file, or the shards of a
100M dataset, the next shard every SHARD_ROTATION_STEPS updates in both phases, and the swap of
a replay buffer's dataset part for the next shard in the online phase (`swap_offline`), which
keeps the online transitions.

Which shard a step uses follows the QAM reference (its main.py): offline update i trains on shard
(i // R) mod N; after the switch the online loop counts its own steps j = 1, 2, ... and moves on
at every j that is a multiple of R, so online step j uses shard (offline_steps // R + j // R) mod N
(the same as (step // R) mod N when offline_steps is a multiple of R, as in the paper's 1M).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from harness.run.data import ReplayBuffer
from harness.run.sources import source_for

SHARD_ROTATION_STEPS = 1000  # R: the QAM reference's dataset_replace_interval


class OfflineData:
    """The offline dataset of a task: one file, or 100M shards rotated every `rotation_steps`
    updates (default SHARD_ROTATION_STEPS, read when the object is made)."""

    def __init__(
        self,
        task: str,
        dataset_dir: str | Path | None,
        env,
        *,
        sparse: bool,
        shard_dir: str | None = None,
        rotation_steps: int | None = None,
    ) -> None:
        self.task, self.env, self.sparse = task, env, sparse
        self.source = source_for(task)
        self.files = self.source.locate(task, dataset_dir, shard_dir)
        self.sharded = shard_dir is not None
        self.rotation_steps = rotation_steps or SHARD_ROTATION_STEPS
        self.current = -1

    def shard_for_step(self, step: int, offline_steps: int | None = None) -> int:
        """Index of the shard that update `step` (1-based) trains on; a step after
        `offline_steps` is an online step, counted from the switch (module docstring)."""
        if not self.sharded:
            return 0
        r = self.rotation_steps
        if offline_steps is None or step <= offline_steps:
            return (step // r) % len(self.files)
        return (offline_steps // r + (step - offline_steps) // r) % len(self.files)

    def load(self, index: int = 0) -> dict[str, np.ndarray]:
        self.current = index
        return self.source.load(self.files[index], self.task, self.env, sparse=self.sparse)


def swap_offline(buffer: ReplayBuffer, data: Mapping[str, np.ndarray]) -> int:
    """Replace the dataset part of `buffer` (every member's) by `data`, keeping each member's
    online transitions in order after it. Returns how far the online transitions moved (the new
    dataset size minus the old; 0 for shards of one size, the 100M datasets' case)."""
    old, new = buffer.offline_size, len(data["observations"])
    sizes = list(buffer.sizes)
    if new == old:
        # Same size, same capacity: load_offline rewrites the dataset rows in place and leaves
        # the online rows; only the members' sizes need restoring.
        buffer.load_offline(data, buffer.capacity)
        buffer.sizes = sizes
        return 0
    parts = [buffer.online_part(member) for member in range(buffer.members)]
    buffer.load_offline(data, new + buffer.online_capacity)
    for member, part in enumerate(parts):
        if len(part["observations"]):
            buffer.add_online_part(part, member)
    return new - old
