"""OGBench tasks: the single-task datasets read through ogbench's own loader and the evaluation
environment ogbench makes.

Loading: `ogbench.load_dataset` then `ogbench.relabel_utils.relabel_dataset` (rewards and masks
of the fixed task), exactly what `ogbench.make_env_and_datasets` does for a single-task name,
without requiring the -val file. Sparse rewards (puzzle, scene): r' = -1 if r != 0 else 0.
Dataset actions are clipped to +-(1 - 1e-5). 100M datasets are directories of .npz shards
(sorted, -val files excluded), rotated by harness/run/shards.py. This source takes every task
that no other source claims, so a name it cannot parse gets its message.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError, UserError
from harness.run.sources.base import ACTION_CLIP, check_shapes, hide_known_env_warnings, sparse_rewards


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
            + _generate_hint(task, root)
        )
    return [path]


def _generate_hint(task: str, root: Path) -> str:
    """How to make a missing dataset here: ogbench's oracles make play and noisy manipulation data;
    navigate and stitch data come from trained navigation policies, which only the download has."""
    kind = dataset_name(task).split("-")[-2]
    if kind not in ("play", "noisy") or task.split("-")[0] not in ("cube", "scene", "puzzle"):
        return f"({kind} data comes from trained navigation policies: only the download has it)"
    flag = " --dataset-type noisy" if kind == "noisy" else ""
    return (
        f"or generate an OGBench-format dataset with ogbench's scripted oracles:\n"
        f"  flowarena datagen --env {base_env_name(task)}{flag} --episodes 1000 --out {root}"
    )


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
        rewards = sparse_rewards(rewards)
    transitions = {
        "observations": data["observations"],
        "actions": np.clip(data["actions"], -ACTION_CLIP, ACTION_CLIP),
        "rewards": rewards,
        "masks": data["masks"].astype(np.float32),
        "terminals": data["terminals"].astype(np.float32),
        "next_observations": data["next_observations"],
    }
    check_shapes(path, transitions, env)
    return transitions


class OGBenchSource:
    """Tasks `<domain>-singletask[-task<N>]-v0`, read from OGBench .npz files."""

    name = "ogbench"

    def owns(self, task: str) -> bool:
        return True  # the fallback: its errors name what an OGBench task looks like

    def make_env(self, task: str, **env_kwargs: Any) -> Any:
        """The task's evaluation environment, made by ogbench."""
        import gymnasium
        import ogbench

        hide_known_env_warnings()
        try:
            return ogbench.make_env_and_datasets(task, env_only=True, **env_kwargs)
        except gymnasium.error.Error as error:
            raise UserError(f"ogbench has no environment for task {task!r} ({error})") from None

    def locate(self, task: str, dataset_dir: str | Path | None, shard_dir: str | None) -> list[Path]:
        return dataset_files(task, dataset_dir, shard_dir)

    def load(self, path: Path, task: str, env: Any, *, sparse: bool) -> dict[str, np.ndarray]:
        return load_transitions(path, task, env, sparse=sparse)

    def reward_shift(self, task: str) -> float:
        return 0.0


SOURCE = OGBenchSource()
