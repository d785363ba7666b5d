"""Evaluating a run's agent on its evaluation grid: every eval-parameter setting, for each seed of
a lone or stacked agent, with episode seeds and acting noise that depend only on (run seed,
step, setting), so a setting evaluated again later gives the same numbers; and the evals rows of
the results (harness/run/records.py)."""

from __future__ import annotations

import zlib
from typing import Any

from algorithms.base import Agent
from harness.run.envs import LocalEnvs, SlotView, WorkerEnvs
from harness.run.evaluate import EvalResult, derive_seed, episode_seeds, run_episodes
from harness.run.spec import eval_setting


def evaluate_grid(
    agent: Agent, envs: Any, *, seed: int, step: int, episodes: int, grid: list[dict[str, float]]
) -> list[tuple[str, EvalResult]]:
    """Evaluate each eval-parameter setting. Episode seeds and the acting noise depend only on
    (run seed, step, setting), so evaluating a setting again later gives the same numbers. Unset
    declared parameters take the agent's defaults (`eval_setting`), also in the label. `envs`: a
    list of environments or LocalEnvs / WorkerEnvs (the same number gives the same numbers)."""
    slots = envs if isinstance(envs, (LocalEnvs, WorkerEnvs, SlotView)) else LocalEnvs(envs)
    return evaluate_seeds(agent, slots, seeds=[seed], step=step, episodes=episodes, grid=grid)[0]


def evaluate_seeds(
    agent: Agent, envs: Any, *, seeds: list[int], step: int, episodes: int, grid: list[dict[str, float]]
) -> list[list[tuple[str, EvalResult]]]:
    """`evaluate_grid` for every seed of an agent (a lone agent and [its seed], or stacked seeds),
    each seed on its len(envs) / len(seeds) slots with its own episode seeds and acting noise: the
    numbers each seed would get evaluated alone."""
    results: list[list[tuple[str, EvalResult]]] = [[] for _ in seeds]
    agent.eval()
    for given in grid:
        params, label = eval_setting(agent.eval_params, given)
        key = zlib.crc32(label.encode())
        noise_seeds = [derive_seed(seed, step, key, 1) for seed in seeds]
        if agent.stack:
            agent.act_generator.manual_seed(noise_seeds)
        else:
            agent.act_generator.manual_seed(noise_seeds[0])
        episode_lists = [episode_seeds(seed, step, 2, n=episodes) for seed in seeds]
        stats = run_episodes(agent, envs, episodes=episodes, seeds=episode_lists, eval_params=params)
        for member, member_stats in enumerate(stats):
            assert member_stats is not None
            results[member].append((label, member_stats.result()))
    agent.train()
    return results


def eval_rows(
    results: list[tuple[str, EvalResult]], keys: dict[str, Any], *, step: int, wall_time_s: float
) -> list[dict[str, Any]]:
    """evals rows of `evaluate_grid` results; `keys` holds sweep, method, variant, task, domain,
    seed and phase."""
    return [
        {
            **keys,
            "step": step,
            "success": result.success,
            "return": result.episode_return,
            "episode_length": result.episode_length,
            "n_episodes": result.n_episodes,
            "eval_params": label,
            "wall_time_s": wall_time_s,
        }
        for label, result in results
    ]
