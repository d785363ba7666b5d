"""Evaluation episodes with full action-chunk execution, many at once.

The policy outputs a chunk of H actions; the environment executes all of them open loop before
the policy is asked again, and a chunk is cut short when its episode ends. Success is
`info['success']` at the episode's last step.

Parallel episodes: `n` environment slots run in lockstep. Every round the policy is called once
for all slots (a batch of n observations; idle slots are padded with their last observation and
their actions dropped), then every running slot executes its chunk, and slots whose episode
ended take the next pending episode in slot order. Episode i always resets with seeds[i], and
the acting noise comes from the agent's acting generator, so an evaluation is deterministic for
a fixed number of slots, and its episodes are distributed exactly as one-at-a-time episodes
(each gets fresh noise for every chunk); changing `n` changes which noise an episode gets, so the
number of slots belongs to a run's identity (Budget.eval_envs). Where the slots are stepped, in
this process or in worker processes (harness/run/envs.py), never changes the numbers.

Stacked seeds: with an agent of S stacked seeds, member m owns slots [m n, (m + 1) n) and its
own episode seeds; one call acts for every member, observations shaped (S, n, obs), so each
member draws its noise from its own acting generator exactly as it would alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from algorithms.base import Agent
from harness.run.envs import LocalEnvs, SlotView, WorkerEnvs

DEFAULT_EVAL_ENVS = 10  # environment slots per evaluation (at most the number of episodes); an
# OGBench manipulation environment holds about 150 MB, so this is also a memory budget


@dataclass
class EvalResult:
    success: float
    episode_return: float
    episode_length: float
    n_episodes: int


@dataclass
class EpisodeStats:
    """Per-episode outcomes of one evaluation (episode i reset with seeds[i])."""

    success: np.ndarray
    returns: np.ndarray
    lengths: np.ndarray

    @classmethod
    def zeros(cls, episodes: int) -> EpisodeStats:
        return cls(np.zeros(episodes), np.zeros(episodes), np.zeros(episodes))

    def result(self) -> EvalResult:
        return EvalResult(
            float(self.success.mean()),
            float(self.returns.mean()),
            float(self.lengths.mean()),
            len(self.success),
        )


def episode_seeds(*key: int, n: int) -> list[int]:
    """n environment seeds derived from `key` (e.g. run seed, step, eval variant)."""
    return [int(s) for s in np.random.SeedSequence(list(key)).generate_state(n)]


def derive_seed(*key: int) -> int:
    return episode_seeds(*key, n=1)[0]


def default_eval_envs(episodes: int, requested: int = DEFAULT_EVAL_ENVS) -> int:
    """Environment slots an evaluation of `episodes` episodes uses."""
    return max(1, min(episodes, requested))


def evaluate(
    agent: Agent,
    envs: Sequence[Any] | LocalEnvs | WorkerEnvs | SlotView,
    *,
    episodes: int,
    seeds: Sequence[int],
    eval_params: Mapping[str, float] | None = None,
) -> EvalResult:
    """Run `episodes` episodes (episode i resets with seeds[i]) over the slots of `envs` (a list
    of environments, or LocalEnvs / WorkerEnvs) in lockstep, for an agent of one seed."""
    slots = envs if isinstance(envs, (LocalEnvs, WorkerEnvs, SlotView)) else LocalEnvs(envs)
    stats = run_episodes(agent, slots, episodes=episodes, seeds=[seeds], eval_params=eval_params)[0]
    assert stats is not None
    return stats.result()


def run_episodes(
    agent: Agent,
    envs: LocalEnvs | WorkerEnvs | SlotView,
    *,
    episodes: int,
    seeds: Sequence[Sequence[int]],
    eval_params: Mapping[str, float] | None = None,
    active: Sequence[bool] | None = None,
) -> list[EpisodeStats | None]:
    """Episodes of every member (one per stacked seed, or one for a lone agent): member m plays
    `episodes` episodes with seeds[m] on its slots. Inactive members play none (None)."""
    members = len(seeds)
    if agent.stack not in ((), (members,)) or (not agent.stack and members != 1):
        raise ValueError(f"an agent with stack {agent.stack} cannot evaluate {members} members")
    return _Lockstep(agent, envs, members, episodes, seeds, active).run(dict(eval_params or {}))


class _Lockstep:
    """The bookkeeping of `run_episodes`: which episode each slot plays, and the outcomes."""

    def __init__(
        self,
        agent: Agent,
        envs: LocalEnvs | WorkerEnvs | SlotView,
        members: int,
        episodes: int,
        seeds: Sequence[Sequence[int]],
        active: Sequence[bool] | None,
    ) -> None:
        self.agent, self.envs, self.members, self.seeds = agent, envs, members, seeds
        self.n = len(envs) // members
        active = list(active) if active is not None else [True] * members
        self.pending = [deque(range(episodes) if on else ()) for on in active]
        self.running: list[dict[int, int]] = [{} for _ in range(members)]  # slot -> episode
        self.stats = [EpisodeStats.zeros(episodes) if on else None for on in active]
        self.observations = np.zeros((members, self.n, agent.spec.obs_dim), dtype=np.float32)

    def run(self, eval_params: dict[str, float]) -> list[EpisodeStats | None]:
        self.start([list(range(self.n)) for _ in range(self.members)])
        while any(self.running):
            chunks = self.act(eval_params)
            requests = [
                (m * self.n + slot, chunks[m, slot])
                for m in range(self.members)
                for slot in sorted(self.running[m])
            ]
            finished: list[list[int]] = [[] for _ in range(self.members)]
            for (index, _), outcome in zip(requests, self.envs.step_chunks(requests)):
                m, slot = divmod(index, self.n)
                stats, episode = self.stats[m], self.running[m][slot]
                assert stats is not None
                for reward in outcome.rewards:
                    stats.returns[episode] += reward
                stats.lengths[episode] += len(outcome.rewards)
                self.observations[m, slot] = outcome.observation
                if outcome.done:
                    stats.success[episode] = outcome.success
                    finished[m].append(slot)
            self.start(finished)
        return self.stats

    def start(self, slots: list[list[int]]) -> None:
        """Give each listed slot (in order) its member's next pending episode, or idle it."""
        requests = []
        for m, member_slots in enumerate(slots):
            for slot in member_slots:
                if self.pending[m]:
                    episode = self.pending[m].popleft()
                    self.running[m][slot] = episode
                    requests.append((m * self.n + slot, self.seeds[m][episode]))
                else:
                    self.running[m].pop(slot, None)
        for (index, _), observation in zip(requests, self.envs.reset(requests)):
            self.observations[index // self.n, index % self.n] = observation

    def act(self, eval_params: dict[str, float]) -> np.ndarray:
        """Chunks (members, n, H, action_dim) for every slot's current observation."""
        agent = self.agent
        obs = torch.as_tensor(self.observations, device=agent.device)
        if not agent.stack:
            obs = obs[0]
        # a method that needs gradients to act enables them itself
        with torch.no_grad(), agent.computing():
            chunks = agent.act(obs, **eval_params)
        shape = (self.members, self.n, agent.spec.horizon, agent.spec.action_dim)
        return chunks.reshape(shape).cpu().numpy()
