"""OGBench data: loading single-task datasets through ogbench's own loader, and the chunked
sequence sampler of DESIGN.md (vectorised torch, on the training device).

Loading: `ogbench.load_dataset` then `ogbench.relabel_utils.relabel_dataset` (rewards and masks
of the fixed task), exactly what `ogbench.make_env_and_datasets` does for a single-task name,
without requiring the -val file. Sparse rewards (puzzle, scene): r' = -1 if r != 0 else 0.
Dataset actions are clipped to +-(1 - 1e-5). 100M datasets are directories of .npz shards
(sorted, -val files excluded); training rotates to the next shard every 1000 updates.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from algorithms.base import Batch
from harness.errors import DataError, UserError

ACTION_CLIP = 1 - 1e-5
SHARD_ROTATION_STEPS = 1000
FIELDS = ("observations", "actions", "rewards", "masks", "terminals", "next_observations")


def _task_parts(task: str) -> list[str]:
    parts = task.split("-")
    if "singletask" not in parts or len(parts) < 4:
        raise UserError(
            f"{task!r} is not an OGBench single-task name (expected e.g. cube-double-play-singletask-task1-v0)"
        )
    return parts


def dataset_name(task: str) -> str:
    """cube-double-play-singletask-task1-v0 -> cube-double-play-v0 (ogbench's own rule)."""
    parts = _task_parts(task)
    pos = parts.index("singletask")
    return "-".join(parts[:pos] + parts[-1:])


def env_name(task: str) -> str:
    """cube-double-play-singletask-task1-v0 -> cube-double-singletask-task1-v0."""
    parts = _task_parts(task)
    pos = parts.index("singletask")
    return "-".join(parts[: pos - 1] + parts[pos:])


def base_env_name(task: str) -> str:
    """cube-double-play-singletask-task1-v0 -> cube-double-v0, the name `flowarena datagen` takes."""
    parts = _task_parts(task)
    pos = parts.index("singletask")
    return "-".join(parts[: pos - 1] + parts[-1:])


def make_env(task: str, **env_kwargs):
    """The task's evaluation environment, made by ogbench."""
    import gymnasium
    import ogbench

    try:
        return ogbench.make_env_and_datasets(task, env_only=True, **env_kwargs)
    except gymnasium.error.Error as error:
        raise UserError(f"ogbench has no environment for task {task!r} ({error})") from None


def default_dataset_dir() -> Path:
    return Path("~/.ogbench/data").expanduser()


def dataset_files(task: str, dataset_dir: str | Path | None, shard_dir: str | None = None) -> list[Path]:
    """The training file of `task` (or its sorted shards), with a message saying how to get
    the data when it is missing."""
    root = Path(dataset_dir).expanduser() if dataset_dir else default_dataset_dir()
    name = dataset_name(task)
    if shard_dir:
        directory = root / shard_dir
        shards = sorted(p for p in directory.glob("*.npz") if not p.name.endswith("-val.npz"))
        if not shards:
            raise DataError(
                f"no dataset shards (*.npz) for {task} in {directory}. The 100M datasets are downloaded from "
                f"https://rail.eecs.berkeley.edu/datasets/ogbench/{shard_dir}/ into that directory; "
                f"or pass --dataset-dir pointing at a directory that holds {shard_dir}/"
            )
        return shards
    path = root / f"{name}.npz"
    if not path.exists():
        raise DataError(
            f"dataset {name} not found: {path} does not exist. Download it (needs internet) with\n"
            f"  python -c \"import ogbench; ogbench.download_datasets(['{name}'], '{root}')\"\n"
            f"or generate an OGBench-format dataset with ogbench's scripted oracles:\n"
            f"  flowarena datagen --env {base_env_name(task)} --episodes 1000 --out {root}"
        )
    return [path]


def load_transitions(path: Path, task: str, env, *, sparse: bool) -> dict[str, np.ndarray]:
    """One dataset file as transitions with the task's rewards and masks (numpy, float32)."""
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset

    try:
        data = load_dataset(str(path), add_info=True)
        relabel_dataset(env_name(task), env, data)
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path} is not a readable OGBench dataset ({type(error).__name__}: {error}). "
            f"Delete it and download or generate it again."
        ) from None
    rewards = data["rewards"].astype(np.float32)
    if sparse:
        rewards = np.where(rewards != 0, -1.0, 0.0).astype(np.float32)
    transitions = {
        "observations": data["observations"],
        "actions": np.clip(data["actions"], -ACTION_CLIP, ACTION_CLIP),
        "rewards": rewards,
        "masks": data["masks"].astype(np.float32),
        "terminals": data["terminals"].astype(np.float32),
        "next_observations": data["next_observations"],
    }
    _check_shapes(path, transitions, env)
    return transitions


def _check_shapes(path: Path, data: Mapping[str, np.ndarray], env) -> None:
    obs_dim = env.observation_space.shape[-1]
    action_dim = env.action_space.shape[-1]
    n = len(data["observations"])
    if n == 0:
        raise DataError(f"{path} holds no transitions")
    if data["observations"].shape[-1] != obs_dim or data["actions"].shape[-1] != action_dim:
        raise DataError(
            f"{path} has observations of size {data['observations'].shape[-1]} and actions of size "
            f"{data['actions'].shape[-1]}, but the environment expects {obs_dim} and {action_dim}: "
            f"is it the dataset of another task?"
        )
    if any(len(v) != n for v in data.values()):
        raise DataError(f"{path} has arrays of different lengths")
    if not all(np.isfinite(v).all() for v in data.values()):
        raise DataError(f"{path} contains NaN or infinite values")


class ReplayBuffer:
    """Transitions on the training device, sampled as action chunks.

    Starts hold the offline dataset; `add` appends online transitions up to `capacity`;
    `online_part`/`add_online_part` save and restore those for a checkpoint.
    `sample` draws start indices uniformly over [0, size - H] and builds the chunk exactly:
    after the first terminal inside a chunk, steps get valid 0, add no reward, keep the mask
    and repeat the last valid step's next observation."""

    def __init__(
        self,
        data: Mapping[str, np.ndarray],
        *,
        horizon: int,
        discount: float,
        device: torch.device | str = "cpu",
        seed: int = 0,
        capacity: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.horizon = horizon
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.offsets = torch.arange(horizon, device=self.device)
        self.discounts = discount ** torch.arange(horizon, device=self.device, dtype=torch.float32)
        self.capacity = 0
        self.storage: dict[str, torch.Tensor] = {}
        self.size = 0
        self.load_offline(data, capacity)

    def load_offline(self, data: Mapping[str, np.ndarray], capacity: int | None = None) -> None:
        """(Re)fill the buffer with an offline dataset (also used to rotate 100M shards)."""
        n = len(data["observations"])
        capacity = max(capacity or n, n)
        if capacity != self.capacity:
            self.storage = {
                key: torch.empty(
                    (capacity, *np.shape(data[key])[1:]), dtype=torch.float32, device=self.device
                )
                for key in FIELDS
            }
            self.capacity = capacity
        for key in FIELDS:
            self.storage[key][:n] = torch.as_tensor(
                np.asarray(data[key], dtype=np.float32), device=self.device
            )
        self.size = n
        self.offline_size = n

    def add(self, **transition: np.ndarray | float) -> None:
        """Append one transition (observations, actions, rewards, masks, terminals,
        next_observations)."""
        if self.size >= self.capacity:
            raise RuntimeError(f"replay buffer is full ({self.capacity} transitions)")
        for key in FIELDS:
            self.storage[key][self.size] = torch.as_tensor(transition[key], dtype=torch.float32)
        self.size += 1

    def sample(self, batch_size: int, stack: Sequence[int] = ()) -> Batch:
        n = math.prod(stack) * batch_size
        high = self.size - self.horizon + 1
        starts = torch.randint(0, high, (n,), generator=self.generator, device=self.device)
        batch = self.chunks(starts)
        return Batch(*(t.reshape(*stack, batch_size, *t.shape[1:]) for t in batch.tensors()))

    def chunks(self, starts: torch.Tensor) -> Batch:
        """The chunks starting at `starts` (n,), built without a per-sample loop."""
        s = self.storage
        steps = starts[:, None] + self.offsets  # (n, H)
        terminals = torch.cummax(s["terminals"][steps], dim=1).values
        valid = torch.ones_like(terminals)
        valid[:, 1:] = 1.0 - terminals[:, :-1]
        rewards = torch.cumsum(s["rewards"][steps] * self.discounts * valid, dim=1)
        masks = torch.cummin(torch.where(valid > 0, s["masks"][steps], 1.0), dim=1).values
        last_valid_step = starts[:, None] + torch.cumsum(valid, dim=1).long() - 1
        return Batch(
            observations=s["observations"][starts],
            actions=s["actions"][steps],
            rewards=rewards,
            masks=masks,
            valid=valid,
            terminals=terminals,
            next_observations=s["next_observations"][last_valid_step],
        )

    def online_part(self) -> dict[str, torch.Tensor]:
        """The transitions added after the offline data, on the CPU, compactly: next observations
        are kept only where they differ from the following transition's observation (episode
        ends and the last transition), as `next_index` and `next_values`."""
        part = {key: self.storage[key][self.offline_size : self.size].cpu() for key in FIELDS}
        observations, next_observations = part["observations"], part.pop("next_observations")
        differs = torch.ones(len(observations), dtype=torch.bool)
        differs[:-1] = (next_observations[:-1] != observations[1:]).any(dim=-1)
        part["next_index"] = differs.nonzero().squeeze(-1)
        part["next_values"] = next_observations[part["next_index"]]
        return part

    def add_online_part(self, part: Mapping[str, torch.Tensor]) -> None:
        """Append transitions saved by `online_part` to a buffer that holds only offline data."""
        if self.size != self.offline_size:
            raise RuntimeError("online transitions can only be restored into a buffer holding offline data")
        observations = part["observations"]
        n = len(observations)
        if self.size + n > self.capacity:
            raise RuntimeError(f"{n} online transitions do not fit a buffer of capacity {self.capacity}")
        next_observations = torch.empty_like(observations)
        next_observations[:-1] = observations[1:]
        next_observations[part["next_index"]] = part["next_values"]
        for key in FIELDS:
            value = next_observations if key == "next_observations" else part[key]
            self.storage[key][self.size : self.size + n] = value.to(self.device)
        self.size += n

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "size": self.size, "offline_size": self.offline_size}

    def load_state_dict(self, state: Mapping) -> None:
        self.generator.set_state(state["generator"])


class OfflineData:
    """The offline dataset of a task: one file, or 100M shards rotated every 1000 updates."""

    def __init__(
        self, task: str, dataset_dir: str | Path | None, env, *, sparse: bool, shard_dir: str | None = None
    ) -> None:
        self.task, self.env, self.sparse = task, env, sparse
        self.files = dataset_files(task, dataset_dir, shard_dir)
        self.sharded = shard_dir is not None
        self.current = -1

    def shard_for_step(self, step: int) -> int:
        """Index of the shard that update `step` (1-based) trains on."""
        return (step // SHARD_ROTATION_STEPS) % len(self.files) if self.sharded else 0

    def load(self, index: int = 0) -> dict[str, np.ndarray]:
        self.current = index
        return load_transitions(self.files[index], self.task, self.env, sparse=self.sparse)
