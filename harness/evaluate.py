"""Evaluation episodes with full action-chunk execution.

The policy outputs a chunk of H actions; the environment executes all of them open loop before
the policy is asked again, and a chunk is cut short when its episode ends. Several
environments run in lockstep so the policy is called once per chunk for all of them. Success
is `info['success']` at the episode's last step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from algorithms.base import Agent


@dataclass
class EvalResult:
    success: float
    episode_return: float
    episode_length: float
    n_episodes: int


def episode_seeds(*key: int, n: int) -> list[int]:
    """n environment seeds derived from `key` (e.g. run seed, step, eval variant)."""
    return [int(s) for s in np.random.SeedSequence(list(key)).generate_state(n)]


def derive_seed(*key: int) -> int:
    return episode_seeds(*key, n=1)[0]


def evaluate(
    agent: Agent,
    envs: Sequence,
    *,
    episodes: int,
    seeds: Sequence[int],
    eval_params: Mapping[str, float] | None = None,
) -> EvalResult:
    """Run `episodes` episodes (episode i resets with seeds[i]) over `envs` in lockstep."""
    horizon, action_dim = agent.spec.horizon, agent.spec.action_dim
    eval_params = dict(eval_params or {})
    pending = list(range(episodes))
    running: dict[int, int] = {}  # env slot -> episode index
    observations: dict[int, np.ndarray] = {}
    success = np.zeros(episodes)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes)

    def start(slot: int) -> None:
        if pending:
            episode = pending.pop(0)
            observations[slot], _ = envs[slot].reset(seed=seeds[episode])
            running[slot] = episode
        else:
            running.pop(slot, None)

    for slot in range(min(len(envs), episodes)):
        start(slot)
    while running:
        slots = sorted(running)
        obs = torch.as_tensor(
            np.stack([observations[s] for s in slots]), dtype=torch.float32, device=agent.device
        )
        with torch.no_grad():  # a method that needs gradients to act enables them itself
            chunks = agent.act(obs, **eval_params)
        chunks = chunks.reshape(len(slots), horizon, action_dim).cpu().numpy()
        for slot, chunk in zip(slots, chunks):
            episode = running[slot]
            for action in chunk:
                observations[slot], reward, terminated, truncated, info = envs[slot].step(action)
                returns[episode] += reward
                lengths[episode] += 1
                if terminated or truncated:
                    success[episode] = float(info["success"])
                    start(slot)
                    break
    return EvalResult(float(success.mean()), float(returns.mean()), float(lengths.mean()), episodes)
