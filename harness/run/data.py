"""The replay buffer and its chunked sequence sampler of docs/methods/qam.md (vectorised torch, on
the training device). Datasets come from the task sources (harness/run/sources/).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from algorithms.base import Batch, GeneratorStack
from harness.run.envs import make_env as make_env  # re-exported: the harness's one way to make an env
from harness.run.sources.base import FIELDS


class ReplayBuffer:
    """Transitions on the training device, sampled as action chunks.

    Starts hold the offline dataset; `add` appends online transitions up to `capacity`;
    `online_part`/`add_online_part` save and restore those for a checkpoint.
    `sample` draws start indices uniformly over [0, size - H] and builds the chunk exactly:
    after the first terminal inside a chunk, steps get valid 0, add no reward, keep the mask
    and repeat the last valid step's next observation.

    Stacked seeds: built with a list of seeds, the buffer has one member per seed. Members share
    the offline data; each has its own sampling generator and its own online transitions (after
    the offline rows, one region of `capacity - offline_size` rows per member), and
    `sample(B, stack=(S,))` draws member i's B chunks from its own data with its own generator,
    exactly the indices a lone buffer of that seed draws. `member(i)` is member i with the API of a
    lone buffer (for the online phase and checkpoints)."""

    def __init__(
        self,
        data: Mapping[str, np.ndarray],
        *,
        horizon: int,
        discount: float,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
        capacity: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.horizon = horizon
        seeds = [seed] if isinstance(seed, int) else list(seed)
        self.members = len(seeds)
        made = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        self.generator: torch.Generator | GeneratorStack = (
            made[0] if isinstance(seed, int) else GeneratorStack(made)
        )
        self.offsets = torch.arange(horizon, device=self.device)
        self.discounts = discount ** torch.arange(horizon, device=self.device, dtype=torch.float32)
        self.capacity = 0  # per member: offline rows + that member's online rows
        self.storage: dict[str, torch.Tensor] = {}
        self.sizes = [0] * self.members
        self._member_index: dict[tuple[int, ...], torch.Tensor] = {}
        self.load_offline(data, capacity)

    # --- layout: a member's logical index -> row of the storage --------------------------------
    @property
    def online_capacity(self) -> int:
        return self.capacity - self.offline_size

    def row(self, index: int, member: int = 0) -> int:
        return index if index < self.offline_size else index + member * self.online_capacity

    def rows(self, index: torch.Tensor, member: torch.Tensor | int = 0) -> torch.Tensor:
        """Storage rows of logical indices (`member` broadcast against `index`)."""
        if self.members == 1:
            return index
        return torch.where(index < self.offline_size, index, index + member * self.online_capacity)

    @property
    def size(self) -> int:
        """Transitions of the (first) member: offline plus online."""
        return self.sizes[0]

    def load_offline(self, data: Mapping[str, np.ndarray], capacity: int | None = None) -> None:
        """(Re)fill the buffer with an offline dataset (also used to rotate 100M shards)."""
        n = len(data["observations"])
        capacity = max(capacity or n, n)
        rows = n + self.members * (capacity - n)
        if capacity != self.capacity or len(self.storage.get("observations", ())) != rows:
            self.storage = {
                key: torch.empty((rows, *np.shape(data[key])[1:]), dtype=torch.float32, device=self.device)
                for key in FIELDS
            }
            self.capacity = capacity
        for key in FIELDS:
            self.storage[key][:n] = torch.as_tensor(
                np.asarray(data[key], dtype=np.float32), device=self.device
            )
        self.sizes = [n] * self.members
        self.offline_size = n

    def add(self, member: int = 0, **transition: np.ndarray | float) -> None:
        """Append one transition (observations, actions, rewards, masks, terminals,
        next_observations) to a member's online part."""
        if self.sizes[member] >= self.capacity:
            raise RuntimeError(f"replay buffer is full ({self.capacity} transitions)")
        row = self.row(self.sizes[member], member)
        for key in FIELDS:
            self.storage[key][row] = torch.as_tensor(transition[key], dtype=torch.float32)
        self.sizes[member] += 1

    def read(self, key: str, start: int, end: int, member: int = 0) -> torch.Tensor:
        """Field `key` of a member's transitions start..end-1 (all offline or all online)."""
        if end <= start:
            return self.storage[key][:0]
        return self.storage[key][self.row(start, member) : self.row(end - 1, member) + 1]

    def sample(
        self, batch_size: int, stack: Sequence[int] = (), members: Sequence[int] | None = None
    ) -> Batch:
        """B chunks for every entry of `stack`. A buffer of stacked members gives entry i the
        chunks of member members[i] (default: all members, `stack == (members,)`)."""
        if isinstance(self.generator, GeneratorStack):
            return self._sample_members(batch_size, tuple(stack), list(members or range(self.members)))
        n = math.prod(stack) * batch_size
        high = self.size - self.horizon + 1
        starts = torch.randint(0, high, (n,), generator=self.generator, device=self.device)
        batch = self.chunks(starts)
        return Batch(*(t.reshape(*stack, batch_size, *t.shape[1:]) for t in batch.tensors()))

    def _sample_members(self, batch_size: int, stack: tuple[int, ...], members: list[int]) -> Batch:
        if stack != (len(members),):
            raise ValueError(
                f"sampling {len(members)} stacked members needs stack=({len(members)},), got {stack}"
            )
        generators = self.generator
        assert isinstance(generators, GeneratorStack)
        starts = torch.stack(
            [
                torch.randint(
                    0,
                    self.sizes[m] - self.horizon + 1,
                    (batch_size,),
                    generator=generators[m],
                    device=self.device,
                )
                for m in members
            ]
        )
        key = tuple(members)
        if key not in self._member_index:  # made once: a copy from the host would wait for a GPU
            self._member_index[key] = torch.tensor(members, device=self.device).unsqueeze(-1)
        index = self._member_index[key].expand_as(starts)
        batch = self.chunks(starts.flatten(), index.flatten())
        return Batch(*(t.reshape(len(members), batch_size, *t.shape[1:]) for t in batch.tensors()))

    def chunks(self, starts: torch.Tensor, members: torch.Tensor | None = None) -> Batch:
        """The chunks starting at logical indices `starts` (n,) of `members` (n,; default member 0),
        built without a per-sample loop."""
        s = self.storage
        member = 0 if members is None else members[:, None]
        steps = self.rows(starts[:, None] + self.offsets, member)  # (n, H)
        terminals = torch.cummax(s["terminals"][steps], dim=1).values
        valid = torch.ones_like(terminals)
        valid[:, 1:] = 1.0 - terminals[:, :-1]
        rewards = torch.cumsum(s["rewards"][steps] * self.discounts * valid, dim=1)
        masks = torch.cummin(torch.where(valid > 0, s["masks"][steps], 1.0), dim=1).values
        last_valid_step = self.rows(starts[:, None] + torch.cumsum(valid, dim=1).long() - 1, member)
        return Batch(
            observations=s["observations"][steps[:, 0]],
            actions=s["actions"][steps],
            rewards=rewards,
            masks=masks,
            valid=valid,
            terminals=terminals,
            next_observations=s["next_observations"][last_valid_step],
        )

    def online_part(self, member: int = 0) -> dict[str, torch.Tensor]:
        """A member's transitions added after the offline data, on the CPU, compactly: next
        observations are kept only where they differ from the following transition's observation
        (episode ends and the last transition), as `next_index` and `next_values`."""
        part = {key: self.read(key, self.offline_size, self.sizes[member], member).cpu() for key in FIELDS}
        observations, next_observations = part["observations"], part.pop("next_observations")
        differs = torch.ones(len(observations), dtype=torch.bool)
        differs[:-1] = (next_observations[:-1] != observations[1:]).any(dim=-1)
        part["next_index"] = differs.nonzero().squeeze(-1)
        part["next_values"] = next_observations[part["next_index"]]
        return part

    def add_online_part(self, part: Mapping[str, torch.Tensor], member: int = 0) -> None:
        """Append transitions saved by `online_part` to a member that holds only offline data."""
        size = self.sizes[member]
        if size != self.offline_size:
            raise RuntimeError("online transitions can only be restored into a buffer holding offline data")
        observations = part["observations"]
        n = len(observations)
        if size + n > self.capacity:
            raise RuntimeError(f"{n} online transitions do not fit a buffer of capacity {self.capacity}")
        next_observations = torch.empty_like(observations)
        next_observations[:-1] = observations[1:]
        next_observations[part["next_index"]] = part["next_values"]
        row = self.row(size, member)
        for key in FIELDS:
            value = next_observations if key == "next_observations" else part[key]
            self.storage[key][row : row + n] = value.to(self.device)
        self.sizes[member] += n

    def member(self, index: int) -> BufferMember:
        return BufferMember(self, index)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "size": self.size, "offline_size": self.offline_size}

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"])


class BufferMember:
    """Member `index` of a ReplayBuffer with stacked members, seen as a lone buffer: what the
    online phase and a seed's own checkpoint use."""

    def __init__(self, buffer: ReplayBuffer, index: int) -> None:
        self.buffer, self.index = buffer, index

    @property
    def size(self) -> int:
        return self.buffer.sizes[self.index]

    @property
    def offline_size(self) -> int:
        return self.buffer.offline_size

    @property
    def capacity(self) -> int:
        return self.buffer.capacity

    @property
    def generator(self) -> torch.Generator:
        generator = self.buffer.generator
        return generator[self.index] if isinstance(generator, GeneratorStack) else generator

    def add(self, **transition: np.ndarray | float) -> None:
        self.buffer.add(self.index, **transition)

    def read(self, key: str, start: int, end: int) -> torch.Tensor:
        return self.buffer.read(key, start, end, self.index)

    def online_part(self) -> dict[str, torch.Tensor]:
        return self.buffer.online_part(self.index)

    def add_online_part(self, part: Mapping[str, torch.Tensor]) -> None:
        self.buffer.add_online_part(part, self.index)

    def state_dict(self) -> dict:
        """The state a lone buffer of this member's seed would have."""
        return {"generator": self.generator.get_state(), "size": self.size, "offline_size": self.offline_size}

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"])
