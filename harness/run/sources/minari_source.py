"""D4RL tasks through Minari (AntMaze and Adroit), with the conventions of the FQL and QAM authors'
D4RL loader (`envs/d4rl_utils.py` in both), docs/d4rl.md:

    episode ends  terminal = 1 where a transition's next observation is not the next transition's
                  observation (and at the last transition); on Adroit also where the dataset
                  says terminated
    masks         1 - the dataset's terminations
    rewards       AntMaze: r - 1 (offline and online; the environment's own 0/1 reward is what
                  an evaluation's return sums); Adroit: as recorded
    actions       clipped to +-(1 - 1e-5), as every dataset here

Observations: Adroit's are vectors. AntMaze's are Minari's dicts; the vector is
[achieved_goal (x, y), observation (the rest of qpos, then qvel), desired_goal]: its first 29
numbers are D4RL's AntMaze observation, and the goal follows because Minari's data was collected
towards goals that change between episodes (its rewards are relative to them).

Evaluation environment: made from the dataset's recorded evaluation spec (`eval_env_spec`, else
`env_spec`). AntMaze's is made with `continuing_task=False`, so an episode ends when the ant
reaches the goal, as D4RL's evaluation mazes do; its success is the environment's. An Adroit
episode's success is its normalized return (R - ref_min_score) / (ref_max_score - ref_min_score)
from the dataset's metadata, so the records' success x 100 is D4RL's normalized score.

Datasets are read from Minari's store: `MINARI_DATASETS_PATH`, else ~/.minari/datasets.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError, UserError
from harness.run.sources.base import ACTION_CLIP, check_shapes, hide_known_env_warnings, sparse_rewards
from suites import d4rl

CONTINUITY_TOLERANCE = 1e-6  # the authors' threshold on ||s'_i - s_{i+1}||
ANTMAZE_KEYS = ("achieved_goal", "observation", "desired_goal")
INSTALL = "pip install 'flowarena[d4rl]'"
REWARD_SHIFT = {d4rl.ANTMAZE: -1.0, d4rl.ADROIT: 0.0}


def store_root() -> Path:
    """Minari's local dataset root (Minari's own rule), without creating it."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path("~/.minari/datasets").expanduser())


def _require_packages() -> None:
    try:
        # its import prints a notice on stderr about Adroit's reward change in 1.2.1 (docs/d4rl.md)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import gymnasium_robotics  # noqa: F401
        import minari  # noqa: F401
    except ImportError as error:
        raise DataError(f"D4RL tasks need minari and gymnasium-robotics ({error}): {INSTALL}") from None


def dataset_path(task: str) -> Path:
    """The task's Minari data directory in the local store, or a DataError with the command that
    fetches it."""
    _require_packages()
    dataset_id = d4rl.minari_id(task)
    data = store_root() / dataset_id / "data"
    if not data.is_dir():
        raise DataError(
            f"Minari dataset {dataset_id} not found in {store_root()} (MINARI_DATASETS_PATH, else "
            f"~/.minari/datasets). Download it once (needs internet) with\n"
            f"  minari download {dataset_id}\n"
            f"(with MINARI_DATASETS_PATH set as for this run, if you use it)"
        )
    return data


def open_dataset(path: Path) -> Any:
    """The MinariDataset in a data directory."""
    from minari import MinariDataset

    try:
        return MinariDataset(path)
    except (OSError, ValueError, KeyError) as error:
        raise DataError(
            f"{path} is not a readable Minari dataset ({type(error).__name__}: {error})"
        ) from None


def flatten(observations: Any) -> np.ndarray:
    """Minari observations (an array, or AntMaze's dict of arrays) as one float32 array (..., d)."""
    if isinstance(observations, dict):
        return np.concatenate([np.asarray(observations[k], np.float32) for k in ANTMAZE_KEYS], axis=-1)
    return np.asarray(observations, np.float32)


def authors_conventions(
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    dataset_terminals: np.ndarray,
    next_observations: np.ndarray,
    family: str,
) -> dict[str, np.ndarray]:
    """Transitions (in order, episodes back to back) with the FQL/QAM loader's episode ends, masks,
    reward shift and action clip (module docstring)."""
    dataset_terminals = np.asarray(dataset_terminals, np.float32)
    gaps = np.linalg.norm(observations[1:] - next_observations[:-1], axis=-1) > CONTINUITY_TOLERANCE
    terminals = np.ones(len(observations), np.float32)
    terminals[:-1] = gaps
    if family == d4rl.ADROIT:
        terminals[:-1] = np.maximum(terminals[:-1], dataset_terminals[:-1] == 1)
    return {
        "observations": observations.astype(np.float32),
        "actions": np.clip(actions, -ACTION_CLIP, ACTION_CLIP).astype(np.float32),
        "rewards": (np.asarray(rewards, np.float32) + REWARD_SHIFT[family]).astype(np.float32),
        "masks": 1.0 - dataset_terminals,
        "terminals": terminals,
        "next_observations": next_observations.astype(np.float32),
    }


def dataset_arrays(dataset: Any) -> dict[str, np.ndarray]:
    """A MinariDataset's episodes back to back as transition arrays (observations flattened)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "actions", "rewards", "terminals")}
    for episode in dataset.iterate_episodes():
        states = flatten(episode.observations)
        parts["obs"].append(states[:-1])
        parts["next"].append(states[1:])
        parts["actions"].append(np.asarray(episode.actions, np.float32))
        parts["rewards"].append(np.asarray(episode.rewards, np.float32))
        parts["terminals"].append(np.asarray(episode.terminations, np.float32))
    if not parts["obs"]:
        return {k: np.zeros((0,), np.float32) for k in parts}
    return {k: np.concatenate(v) for k, v in parts.items()}


def reference_scores(dataset: Any) -> tuple[float, float]:
    """The dataset's (ref_min_score, ref_max_score), or a DataError."""
    metadata = dataset.storage.metadata
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if low is None or high is None or not high > low:
        raise DataError(
            f"Minari dataset {dataset.id} has no usable ref_min_score/ref_max_score "
            f"({low!r}, {high!r}): Adroit's success is the normalized return and needs them"
        )
    return float(low), float(high)


class D4RLEnv:
    """The evaluation environment of a D4RL task: flat observations, and at an episode's end
    `info["success"]` (AntMaze: the environment's; Adroit: the normalized return)."""

    def __init__(self, env: Any, family: str, scores: tuple[float, float] | None) -> None:
        import gymnasium

        self.env, self.family, self.scores = env, family, scores
        size = sum(space.shape[-1] for space in self._parts(env.observation_space))
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = env.action_space
        self.episode_return = 0.0

    @staticmethod
    def _parts(space: Any) -> list[Any]:
        return [space[k] for k in ANTMAZE_KEYS] if hasattr(space, "spaces") else [space]

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.episode_return = 0.0
        observation, info = self.env.reset(seed=seed, options=options)
        return flatten(observation), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.episode_return += float(reward)
        if terminated or truncated:
            info = {**info, "success": self.success(info)}
        return flatten(observation), float(reward), bool(terminated), bool(truncated), info

    def success(self, info: dict) -> float:
        if self.family == d4rl.ANTMAZE:
            return float(info.get("success", 0.0))
        low, high = self.scores  # type: ignore[misc]
        return (self.episode_return - low) / (high - low)

    def close(self) -> None:
        self.env.close()


class MinariSource:
    """D4RL's AntMaze and Adroit datasets in Minari's store (suites/d4rl.py names them)."""

    name = "minari"

    def owns(self, task: str) -> bool:
        return d4rl.is_d4rl(task)

    def make_env(self, task: str, **env_kwargs: Any) -> D4RLEnv:
        dataset = open_dataset(dataset_path(task))  # imports gymnasium_robotics quietly first
        import gymnasium
        import gymnasium_robotics

        if dataset.env_spec is None:
            raise DataError(f"Minari dataset {dataset.id} records no environment spec to evaluate in")
        gymnasium.register_envs(gymnasium_robotics)
        hide_known_env_warnings()
        family = d4rl.family(task)
        kwargs = {"continuing_task": False, **env_kwargs} if family == d4rl.ANTMAZE else env_kwargs
        scores = reference_scores(dataset) if family == d4rl.ADROIT else None
        env = dataset.recover_environment(eval_env=True, **kwargs)  # the recorded eval spec
        return D4RLEnv(env, family, scores)

    def locate(self, task: str, dataset_dir: str | Path | None, shard_dir: str | None) -> list[Path]:
        if dataset_dir:
            raise UserError(
                f"{task} is read from Minari's store, not from --dataset-dir {dataset_dir}: set "
                f"MINARI_DATASETS_PATH={dataset_dir} instead (Minari's own setting)"
            )
        return [dataset_path(task)]

    def load(self, path: Path, task: str, env: Any, *, sparse: bool) -> dict[str, np.ndarray]:
        data = dataset_arrays(open_dataset(path))
        transitions = authors_conventions(
            data["obs"], data["actions"], data["rewards"], data["terminals"], data["next"], d4rl.family(task)
        )
        if sparse:
            transitions["rewards"] = sparse_rewards(transitions["rewards"])
        check_shapes(path, transitions, env)
        return transitions

    def reward_shift(self, task: str) -> float:
        return REWARD_SHIFT[d4rl.family(task)]


SOURCE = MinariSource()
