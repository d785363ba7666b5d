"""OGBench-format datasets made here with ogbench's own scripted oracles: play and noisy data.

The procedure follows OGBench's `data_gen_scripts/generate_manipspace.py`: the environment in
data-collection mode, an oracle per target task (cube, button, drawer, window), a new random
target whenever the oracle finishes, per-episode stacking probabilities, and scene's health check.
`play` data: the plan oracles (their own smoothed noise). `noisy` data: the closed-loop Markov
oracles, each episode with a noise level xi ~ U(0, noise) and Gaussian noise of std
xi * (1, 1, 1, 3, 10) added to every action (x, y, z, yaw, gripper), and with probability
`p_random_action` (OGBench's commands.sh: 0.1 for cube and scene, 0.2 for puzzle) a uniformly
random action instead. Files: `<out>/<domain>-<type>-v0.npz` and `-val.npz` with
observations, actions, terminals, qpos, qvel (and button_states), loadable by
`ogbench.make_env_and_datasets` unchanged. A fixed seed gives the same file (for a fixed number
of worker processes, `workers`, which collect blocks of episodes at once).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import UserError
from harness.progress import Progress, progress_bar

SUPPORTED_DOMAINS = ("cube", "scene", "puzzle")
DATASET_TYPES = ("play", "noisy")
# OGBench's commands.sh: the chance of a uniformly random action in each family's noisy data
NOISY_RANDOM_ACTION = {"cube": 0.1, "scene": 0.1, "puzzle": 0.2}
NOISE_SCALES = np.array([1.0, 1.0, 1.0, 3.0, 10.0])  # x, y, z, yaw, gripper: times the episode's xi
STITCH_NOTE = (
    "stitch datasets come from trained navigation policies that are not available here: download "
    "them with ogbench.download_datasets"
)


@dataclass(frozen=True)
class Collection:
    """How episodes are collected (sent to worker processes)."""

    env_name: str
    episode_length: int
    noise: float = 0.1  # play: the plan oracles' noise; noisy: the largest per-episode xi
    noise_smoothing: float = 0.5  # play only
    dataset_type: str = "play"
    p_random_action: float = 0.0  # noisy only
    min_norm: float = 0.4  # noisy only: the Markov oracles' minimum action norm

    @property
    def noisy(self) -> bool:
        return self.dataset_type == "noisy"


def dataset_name_for(env_name: str, dataset_type: str = "play") -> str:
    """cube-double-v0 -> cube-double-play-v0."""
    stem, version = env_name.rsplit("-", 1)
    return f"{stem}-{dataset_type}-{version}"


def _check_env_name(env_name: str) -> None:
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    domain = env_name.split("-")[0]
    if domain not in SUPPORTED_DOMAINS or "singletask" in env_name:
        raise UserError(
            f"datagen makes play and noisy data for the manipulation domains {', '.join(SUPPORTED_DOMAINS)} "
            f"(e.g. cube-double-v0, scene-v0, puzzle-3x3-v0); got {env_name!r}"
            + (f"; {STITCH_NOTE}" if "maze" in domain else "")
        )
    if env_name not in gymnasium.registry:
        known = sorted(
            k for k in gymnasium.registry if k.split("-")[0] in SUPPORTED_DOMAINS and "singletask" not in k
        )
        raise UserError(
            f"unknown environment {env_name!r}; known: {', '.join(k for k in known if 'visual' not in k)}"
        )


def _make_oracles(env, how: Collection) -> dict:
    if how.noisy:
        return _markov_oracles(env, how.env_name, how.min_norm)
    return _plan_oracles(env, how.env_name, how.noise, how.noise_smoothing)


def _markov_oracles(env, env_name: str, min_norm: float) -> dict:
    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

    if env_name.startswith("cube"):
        return {"cube": CubeMarkovOracle(env=env, min_norm=min_norm)}
    if env_name.startswith("scene"):
        return {
            "cube": CubeMarkovOracle(env=env, min_norm=min_norm, max_step=100),
            "button": ButtonMarkovOracle(env=env, min_norm=min_norm),
            "drawer": DrawerMarkovOracle(env=env, min_norm=min_norm),
            "window": WindowMarkovOracle(env=env, min_norm=min_norm),
        }
    return {"button": ButtonMarkovOracle(env=env, min_norm=min_norm, gripper_always_closed=True)}


def _plan_oracles(env, env_name: str, noise: float, noise_smoothing: float) -> dict:
    from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
    from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
    from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

    kwargs = dict(env=env, noise=noise, noise_smoothing=noise_smoothing)
    if env_name.startswith("cube"):
        return {"cube": CubePlanOracle(**kwargs)}
    if env_name.startswith("scene"):
        return {
            "cube": CubePlanOracle(**kwargs),
            "button": ButtonPlanOracle(**kwargs),
            "drawer": DrawerPlanOracle(**kwargs),
            "window": WindowPlanOracle(**kwargs),
        }
    return {"button": ButtonPlanOracle(gripper_always_closed=True, **kwargs)}


def _stack_probability(env_name: str) -> float:
    if "single" in env_name:
        return 0.0
    if "double" in env_name:
        return np.random.uniform(0.0, 0.25)
    if "triple" in env_name:
        return np.random.uniform(0.05, 0.35)
    if "quadruple" in env_name:
        return np.random.uniform(0.1, 0.5)
    return 0.5


def _scene_episode_is_healthy(episode_qpos: np.ndarray) -> bool:
    """OGBench's check: the cube stays visible unless it is in the drawer."""
    block_xyzs = episode_qpos[:, 14:17]
    if (block_xyzs[:, 1] >= 0.29).any():
        return False
    return not ((block_xyzs[:, 1] <= -0.3) & ((block_xyzs[:, 2] < 0.06) | (block_xyzs[:, 2] > 0.08))).any()


def _collect_episode(
    env, oracles: dict, how: Collection, episode_seed: int | None, progress: Progress
) -> dict:
    episode = defaultdict(list)
    ob, info = env.reset(seed=episode_seed)
    p_stack = _stack_probability(how.env_name)
    xi = np.random.uniform(0, how.noise) if how.noisy else 0.0  # numpy's draws in OGBench's order
    agent = oracles[info["privileged/target_task"]]
    agent.reset(ob, info)
    done = False
    while not done:
        action = np.clip(_action(env, agent, ob, info, how, xi), -1, 1)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if agent.done:
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
            agent = oracles[agent_info["privileged/target_task"]]
            agent.reset(agent_ob, agent_info)
        episode["observations"].append(ob)
        episode["actions"].append(action)
        episode["terminals"].append(done)
        episode["qpos"].append(info["prev_qpos"])
        episode["qvel"].append(info["prev_qvel"])
        if "prev_button_states" in info:
            episode["button_states"].append(info["prev_button_states"])
        ob = next_ob
        progress.update(1)
    return episode


def _action(env, agent, ob, info, how: Collection, xi: float) -> np.ndarray:
    """The oracle's action; noisy data: with Gaussian noise xi * NOISE_SCALES, or with probability
    p_random_action a uniformly random one."""
    if how.noisy and np.random.rand() < how.p_random_action:
        space = env.action_space  # drawn from numpy's seeded generator: the same file for a seed
        return np.random.uniform(space.low, space.high)
    action = np.asarray(agent.select_action(ob, info))
    if how.noisy:
        action = action + np.random.normal(0, xi * NOISE_SCALES[: action.shape[-1]], action.shape)
    return action


def _to_arrays(episodes: list[dict]) -> dict[str, np.ndarray]:
    dtypes = {"terminals": bool, "button_states": np.int64}
    keys = episodes[0].keys()
    return {k: np.array([v for ep in episodes for v in ep[k]], dtype=dtypes.get(k, np.float32)) for k in keys}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with fixed zip timestamps (same seed -> same bytes), written to a
    temporary file and renamed."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
            archive.writestr(
                zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                member.getvalue(),
                compress_type=zipfile.ZIP_DEFLATED,
            )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def generate(
    env_name: str,
    episodes: int,
    out: str | Path,
    *,
    episode_length: int = 1000,
    seed: int = 0,
    noise: float = 0.1,
    noise_smoothing: float = 0.5,
    dataset_type: str = "play",
    p_random_action: float | None = None,
    val_episodes: int | None = None,
    workers: int = 1,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Generate `episodes` training episodes (and episodes // 10, at least 1, validation
    episodes) of `episode_length` transitions each. Returns the train and val paths.
    `dataset_type` play or noisy; `p_random_action` (noisy) defaults to OGBench's for the family.

    `workers` > 1 processes collect contiguous blocks of the episodes at once: the first block
    with `seed` (so it starts as the one-worker file does), block w with a seed derived from
    (seed, w). A fixed (seed, workers) gives the same file."""
    _check_env_name(env_name)
    if episodes < 1 or episode_length < 1 or workers < 1:
        raise UserError("datagen needs --episodes >= 1, --episode-length >= 1 and --workers >= 1")
    if dataset_type not in DATASET_TYPES:
        raise UserError(f"--dataset-type must be one of {', '.join(DATASET_TYPES)}, got {dataset_type!r}")
    if p_random_action is None:
        p_random_action = NOISY_RANDOM_ACTION[env_name.split("-")[0]] if dataset_type == "noisy" else 0.0
    if not 0 <= p_random_action <= 1 or (p_random_action > 0 and dataset_type != "noisy"):
        raise UserError(f"--p-random-action must be in [0, 1] with noisy data, got {p_random_action!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = dataset_name_for(env_name, dataset_type)
    train_path, val_path = out / f"{name}.npz", out / f"{name}-val.npz"
    n_val = max(1, episodes // 10) if val_episodes is None else val_episodes

    n_total = episodes + n_val
    blocks = [n_total // workers + (1 if w < n_total % workers else 0) for w in range(min(workers, n_total))]
    settings = Collection(env_name, episode_length, noise, noise_smoothing, dataset_type, p_random_action)
    total = n_total * (episode_length + 1)
    with progress_bar(total=total, desc=f"datagen {name}", unit="step", enabled=progress) as bar:
        if len(blocks) == 1:
            collected = _collect_block(settings, n_total, seed, bar)
        else:
            collected = _collect_in_workers(settings, blocks, seed, bar)
    _save_npz(train_path, _to_arrays(collected[:episodes]))
    _save_npz(val_path, _to_arrays(collected[episodes:]))
    return train_path, val_path


def _collect_block(how: Collection, count: int, seed: int, bar: Any) -> list[dict]:
    """`count` episodes from a fresh environment, numpy's global generator seeded with `seed`."""
    from harness.run.sources.base import hide_known_env_warnings

    hide_known_env_warnings()
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments, also in a worker process)

    env_name = how.env_name
    # Each episode records episode_length + 1 observations; ogbench's loader turns them into
    # episode_length transitions.
    env = gymnasium.make(
        env_name, terminate_at_goal=False, mode="data_collection", max_episode_steps=how.episode_length + 1
    )
    oracles = _make_oracles(env, how)
    np.random.seed(seed)  # the oracles' plan noise (and noisy data's noise) use numpy's global generator
    collected = []
    for index in range(count):
        reset_seed = seed if index == 0 else None
        while True:
            episode = _collect_episode(env, oracles, how, reset_seed, bar)
            reset_seed = None
            if not env_name.startswith("scene") or _scene_episode_is_healthy(np.array(episode["qpos"])):
                break
            bar.update(-len(episode["observations"]))
        collected.append(episode)
    env.close()
    return collected


def _block_seed(seed: int, block: int) -> int:
    return seed if block == 0 else int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


def _collect_in_workers(settings: Collection, blocks: list[int], seed: int, bar: Any) -> list[dict]:
    """The blocks in one spawned process each, in block order; their steps count on `bar`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    with ProcessPoolExecutor(
        len(blocks), mp_context=context, initializer=_init_worker, initargs=(counter,)
    ) as pool:
        futures = [
            pool.submit(_worker_block, settings, n, _block_seed(seed, w)) for w, n in enumerate(blocks)
        ]
        while wait(futures, timeout=1.0).not_done:
            bar.update(counter.value - bar.n)
        bar.update(counter.value - bar.n)
        return [episode for future in futures for episode in future.result()]


_STEPS: Any = None  # a worker process's handle on the parent's step counter


def _init_worker(counter: Any) -> None:
    global _STEPS
    _STEPS = counter


class _SharedSteps:
    """A worker's stand-in for the progress bar: adds its steps to the parent's counter."""

    def update(self, n: int = 1) -> None:
        with _STEPS.get_lock():
            _STEPS.value += n


def _worker_block(settings: Collection, count: int, seed: int) -> list[dict]:
    episodes = _collect_block(settings, count, seed, _SharedSteps())
    return [{key: np.asarray(values) for key, values in episode.items()} for episode in episodes]
