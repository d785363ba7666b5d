"""Balanced (symmetric) sampling, RLPD's way of mixing prior data into online learning
(`--balanced-sampling`, Budget.balanced_sampling): in the online phase every batch takes
floor(B / 2) chunks from the offline dataset and the rest from the online transitions, offline half
first, as the QAM reference's main.py does for its RLPD runs. Offline chunks start uniformly over
[0, N_offline - H] and online ones over the online transitions' own [0, N_online - H], so no chunk
mixes the two. Both halves are drawn with the replay buffer's generator (one per stacked member,
in the checkpoint as for uniform sampling): member i of a stack draws exactly the batch a lone
buffer of its seed draws. The same flag makes the online warm-up act uniformly at random
(harness/run/online.py, `Explorer.random_steps`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from algorithms.base import Batch, GeneratorStack
from harness.run.data import ReplayBuffer


def halves(batch_size: int) -> tuple[int, int]:
    """(offline, online) chunk counts of one balanced batch."""
    return batch_size // 2, batch_size - batch_size // 2


def sample_balanced(
    buffer: ReplayBuffer, batch_size: int, stack: Sequence[int] = (), members: Sequence[int] | None = None
) -> Batch:
    """B chunks for every entry of `stack`, half offline and half online; with stacked members,
    entry i from member members[i] (default all), as ReplayBuffer.sample."""
    stack = tuple(stack)
    if isinstance(buffer.generator, GeneratorStack):
        members = list(range(buffer.members) if members is None else members)
        if stack != (len(members),):
            raise ValueError(
                f"sampling {len(members)} stacked members needs stack=({len(members)},), got {stack}"
            )
        generators = [buffer.generator[m] for m in members]
    else:
        members, generators = [0], [buffer.generator]
    count = 1 if isinstance(buffer.generator, GeneratorStack) else math.prod(stack)
    starts = torch.stack([_starts(buffer, g, m, count, batch_size) for g, m in zip(generators, members)])
    key = tuple(members)
    if key not in buffer._member_index:  # made once: a copy from the host would wait for a GPU
        buffer._member_index[key] = torch.tensor(members, device=buffer.device).unsqueeze(-1)
    index = buffer._member_index[key].expand_as(starts)
    batch = buffer.chunks(starts.flatten(), index.flatten() if buffer.members > 1 else None)
    return Batch(*(t.reshape(*stack, batch_size, *t.shape[1:]) for t in batch.tensors()))


def _starts(
    buffer: ReplayBuffer, generator: torch.Generator, member: int, count: int, batch_size: int
) -> torch.Tensor:
    """Start indices (count * B,) of one member: per batch its offline half, then its online half;
    all offline draws come first, then all online draws."""
    offline, online = halves(batch_size)
    n_online = buffer.sizes[member] - buffer.offline_size
    if n_online < buffer.horizon or buffer.offline_size < buffer.horizon:
        raise RuntimeError(
            f"balanced sampling needs a chunk of {buffer.horizon} transitions on both sides; the buffer "
            f"holds {buffer.offline_size} offline and {n_online} online transitions"
        )
    device = buffer.device
    high = buffer.offline_size - buffer.horizon + 1
    offline_starts = torch.randint(0, high, (count, offline), generator=generator, device=device)
    high = n_online - buffer.horizon + 1
    online_starts = torch.randint(0, high, (count, online), generator=generator, device=device)
    return torch.cat([offline_starts, online_starts + buffer.offline_size], dim=1).flatten()
