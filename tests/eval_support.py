"""A cheap environment and policies for the evaluation tests; importable by the worker processes
that harness.run.envs.WorkerEnvs spawns (the tests directory is on their sys.path)."""

from __future__ import annotations

import numpy as np
import torch

from algorithms.base import Agent, BaseConfig, EnvSpec

SPEC = EnvSpec(obs_dim=3, action_dim=2, horizon=3)


class CoinEnv:
    """Observation [seed fraction, t, running sum of actions]; an episode lasts up to `max_steps`
    steps and terminates early (a success) once the running sum exceeds `goal`. Reward: the
    action's first coordinate. Deterministic given the seed and the actions."""

    def __init__(self, max_steps: int = 8, goal: float = 1.5) -> None:
        self.max_steps, self.goal = max_steps, goal

    def reset(self, seed: int):
        self.seed, self.t, self.total = seed, 0, 0.0
        return self.obs(), {}

    def obs(self) -> np.ndarray:
        return np.array([self.seed % 1000 / 1000, self.t, self.total])

    def step(self, action: np.ndarray):
        self.t += 1
        self.total += float(np.sum(action))
        terminated = self.total > self.goal
        truncated = self.t >= self.max_steps and not terminated
        return self.obs(), float(action[0]), terminated, truncated, {"success": terminated}

    def close(self) -> None:
        pass


def coin_env() -> CoinEnv:
    return CoinEnv()


class NoisyPolicy(Agent):
    """Chunks of uniform noise in [-1, 1] plus a drift that depends on the observation: a
    stochastic policy whose episodes succeed with a probability strictly between 0 and 1."""

    name = "noisy-policy-test"

    def __init__(self, seed: int = 0, spec: EnvSpec = SPEC) -> None:
        super().__init__(spec, BaseConfig(), device="cpu", seed=seed)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        noise = self.rand(*obs.shape[:-1], self.spec.chunk_dim, generator=self.act_generator) * 2 - 1
        return (noise + 0.1 * obs[..., :1]).clamp(-1, 1)


class SeedPolicy(Agent):
    """Deterministic: every action is a fixed function of the observation."""

    name = "seed-policy-test"

    def __init__(self, spec: EnvSpec = SPEC) -> None:
        super().__init__(spec, BaseConfig(), device="cpu", seed=0)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        value = torch.sin(1000 * obs[..., :1]) * 0.6 + 0.05 * obs[..., 1:2]
        return value.expand(*obs.shape[:-1], self.spec.chunk_dim).clamp(-1, 1)
