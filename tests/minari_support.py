"""Small Minari datasets made here from the real gymnasium-robotics AntMaze and Adroit environments,
with Minari's own dataset-creation API (`create_dataset_from_buffers`, which needs no jax):
random actions, a few short episodes, and an evaluation spec whose episodes are short."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np

ANTMAZE_ID = "D4RL/antmaze/umaze-v1"
ADROIT_ID = "D4RL/pen/human-v2"
# Minari's umaze evaluation map: reset cell "r" and goal cell "g" fixed
UMAZE_EVAL_MAP = [[1, 1, 1, 1, 1], [1, 0, 0, "r", 1], [1, 0, 1, 1, 1], [1, 0, 0, "g", 1], [1, 1, 1, 1, 1]]
PEN_REF_SCORES = (-50.0, 950.0)  # made up for the test dataset: Minari's are in its metadata
AUTHORSHIP = {
    "author": "flowarena tests",
    "author_email": "dev@flowarena.local",
    "code_permalink": "tests/minari_support.py",
    "algorithm_name": "uniform random actions",
    "description": "a few short episodes of random actions, for flowarena's tests",
}


def _episode(env, rng: np.random.Generator, seed: int, length: int, episode_id: int):
    from minari.data_collector import EpisodeBuffer

    observation, _ = env.reset(seed=seed)
    observations, actions, rewards, terminations, truncations = [observation], [], [], [], []
    for step in range(length):
        action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        observation, reward, terminated, truncated, _ = env.step(action)
        observations.append(observation)
        actions.append(action)
        rewards.append(float(reward))
        terminations.append(bool(terminated))
        truncations.append(bool(truncated) or step == length - 1)
        if terminated or truncated:
            break
    if isinstance(observation, dict):
        observations = {key: [o[key] for o in observations] for key in observation}
    return EpisodeBuffer(
        id=episode_id,
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminations=terminations,
        truncations=truncations,
    )


def make_dataset(
    root: Path, dataset_id: str, *, episodes: int = 3, length: int = 20, eval_steps: int = 8, seed: int = 0
) -> Path:
    """A Minari dataset `dataset_id` (ANTMAZE_ID or ADROIT_ID) under the store `root`; returns root."""
    import gymnasium
    import gymnasium_robotics
    import minari

    gymnasium.register_envs(gymnasium_robotics)
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)  # where Minari writes; restored below
    if dataset_id == ANTMAZE_ID:
        env = gymnasium.make("AntMaze_UMaze-v4", continuing_task=True, reset_target=False)
        eval_spec = copy.deepcopy(env.spec)
        eval_spec.kwargs["maze_map"] = UMAZE_EVAL_MAP
        scores: dict[str, float] = {}
    else:
        env = gymnasium.make("AdroitHandPen-v1")
        eval_spec = copy.deepcopy(env.spec)
        scores = {"ref_min_score": PEN_REF_SCORES[0], "ref_max_score": PEN_REF_SCORES[1]}
    eval_spec.max_episode_steps = eval_steps
    rng = np.random.default_rng(seed)
    buffers = [_episode(env, rng, seed + i, length, i) for i in range(episodes)]
    try:
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env, eval_env=eval_spec, data_format="hdf5", **scores, **AUTHORSHIP
        )
    finally:
        env.close()
        if saved is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved
    return root
