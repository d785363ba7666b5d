"""What every task source gives the harness (`TaskSource`), and what sources share: the dataset
fields, the action clip, the shape check of loaded transitions and the warning filter for MuJoCo
environments. No torch here: evaluation worker processes import it."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harness.errors import DataError

ACTION_CLIP = 1 - 1e-5
FIELDS = ("observations", "actions", "rewards", "masks", "terminals", "next_observations")


class TaskSource(Protocol):
    """Where a task's dataset and environment come from (OGBench, Minari, ...)."""

    name: str

    def owns(self, task: str) -> bool:
        """Whether `task` names a task of this source."""

    def make_env(self, task: str, **env_kwargs: Any) -> Any:
        """The task's evaluation environment: Box observations and actions, and at an episode's
        last step `info["success"]`, the number the records keep as success (0..1)."""

    def locate(self, task: str, dataset_dir: str | Path | None, shard_dir: str | None) -> list[Path]:
        """The task's dataset files (several: shards, loaded one at a time), or a DataError
        saying how to get them."""

    def load(self, path: Path, task: str, env: Any, *, sparse: bool) -> dict[str, np.ndarray]:
        """One file as float32 transitions with every key of FIELDS."""

    def reward_shift(self, task: str) -> float:
        """Added to every reward stored, offline and online (0 but for D4RL AntMaze's -1)."""


def hide_known_env_warnings() -> None:
    """Hide two known, harmless warnings in this process, and only them: gymnasium's "Box low's
    precision lowered by casting to float32" (MuJoCo environments build a float64-bounded Box when
    made, reset and asked for their action space, so a filter around `make` alone would not do),
    and glfw's "The DISPLAY environment variable is missing" (MuJoCo's renderer loads glfw when an
    environment is made; nothing here opens a window)."""
    warnings.filterwarnings(
        "ignore",
        message=r".*Box (low|high)'s precision lowered by casting to float32",
        category=UserWarning,
        module="gymnasium.spaces.box",
    )
    warnings.filterwarnings("ignore", message=r".*The DISPLAY environment variable is missing", module="glfw")


def sparse_rewards(rewards: np.ndarray) -> np.ndarray:
    """The sparse-reward rule of puzzle and scene: -1 where the reward is not 0, else 0 (float32)."""
    return np.where(rewards != 0, -1.0, 0.0).astype(np.float32)


def check_shapes(path: Path, data: Mapping[str, np.ndarray], env) -> None:
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
