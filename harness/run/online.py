"""The online phase's acting: the agent drives its own environment and every executed action is
stored in the replay buffer (docs/methods/qam.md, "Online phase").

The policy is asked for a chunk of H actions (fresh noise for every chunk, from an exploration
generator of its own) and the whole chunk is executed open loop, one buffer transition per
environment step: reward sparsified as the dataset's (r' = -1 if r != 0 else 0 on sparse
tasks), terminal = terminated or truncated, mask = 1 - terminated. At an episode end the rest of
the chunk is dropped and the environment is reset with a seed derived from the run seed and the
episode index. The environment is a separate instance from the evaluation environment. With
balanced sampling the warm-up steps before the first update act uniformly at random instead, one
action per step from the same generator (`random_steps`, as the RLPD reference).

Resume: `Explorer.state_dict` holds the online transitions (compactly, see
`ReplayBuffer.online_part`), the exploration generator, the episode index, where the current
episode starts in the buffer, the rest of the current chunk and the current observation.
`load_state_dict` appends the transitions to a buffer holding the offline data and restores the
environment mid-episode by resetting it with the episode's seed and replaying the episode's
actions (read back from the buffer); MuJoCo is deterministic on one machine, and a replay that
does not reproduce the saved observation is an error, never a silent divergence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from algorithms.base import Agent, GeneratorStack
from harness.errors import UserError
from harness.run.data import BufferMember, ReplayBuffer
from harness.run.evaluate import derive_seed

RESET_KEY = 3  # evaluation uses 1 (acting noise) and 2 (episode seeds) in its seed keys
EXPLORATION_KEY = 4


def online_reward(reward: float, sparse: bool, shift: float = 0.0) -> float:
    """The reward stored for one environment step: the dataset's sparse rule on sparse tasks, plus
    the task source's shift (D4RL AntMaze: -1, as its dataset's rewards)."""
    if sparse:
        return -1.0 if reward != 0 else 0.0
    return float(reward) + shift


def reset_seed(run_seed: int, episode: int) -> int:
    """The reset seed of online episode `episode` (0-based) of a run."""
    return derive_seed(run_seed, episode, RESET_KEY)


class Explorer:
    """One online environment acted in by `agent`, filling `buffer` one transition per step."""

    def __init__(
        self,
        env: Any,
        agent: Agent,
        buffer: ReplayBuffer | BufferMember,
        *,
        seed: int,
        sparse: bool,
        eval_params: Mapping[str, float] | None = None,
        random_steps: int = 0,
        reward_shift: float = 0.0,
    ) -> None:
        self.env, self.agent, self.buffer = env, agent, buffer
        self.seed, self.sparse, self.reward_shift = seed, sparse, reward_shift
        # online steps before this one act uniformly at random, one action at a time (balanced
        # sampling's warm-up, harness/run/balanced.py); the agent acts from this step on
        self.random_steps = random_steps
        self.eval_params = dict(eval_params or {})
        self.generator = torch.Generator(agent.device).manual_seed(derive_seed(seed, EXPLORATION_KEY))
        self.episode = 0  # index of the running episode = episodes finished so far
        self.episode_start = buffer.size  # buffer index of the running episode's first transition
        self.episode_return = 0.0  # of the environment's own rewards
        self.queue: list[np.ndarray] = []  # the rest of the current chunk
        self.observation: np.ndarray | None = None
        self.window = [0.0, 0.0, 0.0, 0.0]  # episodes, return, success, length since `metrics`

    # --- acting ---------------------------------------------------------------------------
    def start(self) -> None:
        """Begin the running episode: reset with its seed and drop the rest of any chunk."""
        self.observation, _ = self.env.reset(seed=reset_seed(self.seed, self.episode))
        self.episode_start = self.buffer.size
        self.episode_return = 0.0
        self.queue = []

    def step(self) -> None:
        """One environment step (asking the policy for a chunk when the last one is used up);
        `start` or `load_state_dict` comes first."""
        if not self.queue:
            self.queue = list(self.random_chunk() if self.acts_randomly else self.act())
        self.execute()

    @property
    def needs_chunk(self) -> bool:
        return not self.queue

    @property
    def acts_randomly(self) -> bool:
        """Whether the next step is a random warm-up step (online step < `random_steps`)."""
        return self.buffer.size - self.buffer.offline_size + 1 < self.random_steps

    def random_chunk(self) -> np.ndarray:
        """One action (1, action_dim) uniform in [-1, 1), from the exploration generator."""
        shape = (1, self.agent.spec.action_dim)
        action = torch.rand(shape, generator=self.generator, device=self.generator.device) * 2 - 1
        return action.cpu().numpy()

    def execute(self) -> None:
        """One environment step with the next action of the current chunk."""
        assert self.observation is not None, "Explorer.step before start() or load_state_dict()"
        action = self.queue.pop(0)
        next_observation, reward, terminated, truncated, info = self.env.step(action)
        self.episode_return += float(reward)
        self.buffer.add(
            observations=self.observation,
            actions=action,
            rewards=online_reward(reward, self.sparse, self.reward_shift),
            masks=1.0 - float(terminated),
            terminals=float(terminated or truncated),
            next_observations=next_observation,
        )
        if terminated or truncated:
            self.finish(float(info.get("success", 0.0)))
        else:
            self.observation = next_observation

    def act(self) -> np.ndarray:
        """A chunk (H, action_dim) for the current observation, drawn with the exploration
        generator; the agent's own acting generator is left as it was."""
        agent = self.agent
        obs = torch.as_tensor(self.observation[None], dtype=torch.float32, device=agent.device)
        saved = agent.act_generator.get_state()
        agent.act_generator.set_state(self.generator.get_state())
        agent.eval()
        try:
            # a method that needs gradients to act enables them itself
            with torch.no_grad(), agent.computing():
                chunk = agent.act(obs, **self.eval_params)
        finally:
            self.generator.set_state(agent.act_generator.get_state())
            agent.act_generator.set_state(saved)
            agent.train()
        return chunk.reshape(agent.spec.horizon, agent.spec.action_dim).cpu().numpy()

    def set_chunk(self, chunk: np.ndarray) -> None:
        """The chunk (H, action_dim) to execute next, acted elsewhere (ExplorerGroup)."""
        self.queue = list(chunk)

    def finish(self, success: float) -> None:
        length = self.buffer.size - self.episode_start
        for i, value in enumerate((1.0, self.episode_return, success, length)):
            self.window[i] += value
        self.episode += 1
        self.start()

    def metrics(self) -> dict[str, float | int]:
        """Online metrics for a train row: buffer size, episodes finished so far, and the mean
        return, success and length of those finished since the previous call (NaN if none)."""
        count, *totals = self.window
        self.window = [0.0, 0.0, 0.0, 0.0]
        means = [total / count if count else math.nan for total in totals]
        names = ("online_return", "online_success", "online_episode_length")
        return {"buffer_size": self.buffer.size, "online_episodes": self.episode, **dict(zip(names, means))}

    # --- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "transitions": self.buffer.online_part(),
            "offline_size": self.buffer.offline_size,
            "generator": self.generator.get_state(),
            "episode": self.episode,
            "episode_start": self.episode_start - self.buffer.offline_size,
            "queue": torch.as_tensor(np.array(self.queue, dtype=np.float32)).reshape(
                len(self.queue), self.agent.spec.action_dim
            ),
            "observation": torch.as_tensor(self.observation),
            "window": list(self.window),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the online transitions into a buffer holding the same offline data, and the
        environment mid-episode. Raises UserError when either does not match the checkpoint."""
        if state["offline_size"] != self.buffer.offline_size:
            raise UserError(
                f"the checkpoint's online phase followed {state['offline_size']} offline transitions, "
                f"but the dataset now holds {self.buffer.offline_size}: the dataset changed since the "
                f"run started; restore it, or move the run directory away to start over"
            )
        self.buffer.add_online_part(state["transitions"])
        self.generator.set_state(state["generator"].cpu())
        self.episode = int(state["episode"])
        self.window = [float(v) for v in state["window"]]
        self.replay_episode(self.buffer.offline_size + int(state["episode_start"]))
        expected = state["observation"].cpu().numpy()
        if not np.array_equal(self.observation, expected):
            self.replay_failed(f"max difference {np.abs(self.observation - expected).max():.3g}")
        self.queue = list(state["queue"].cpu().numpy())

    def replay_episode(self, episode_start: int) -> None:
        """Reset with the running episode's seed and execute its recorded actions again."""
        self.observation, _ = self.env.reset(seed=reset_seed(self.seed, self.episode))
        self.episode_start, self.episode_return, self.queue = episode_start, 0.0, []
        actions = self.buffer.read("actions", episode_start, self.buffer.size).cpu().numpy()
        for i, action in enumerate(actions):
            self.observation, reward, terminated, truncated, _ = self.env.step(action)
            self.episode_return += float(reward)
            if terminated or truncated:  # a recorded episode end would have started a new episode
                self.replay_failed(f"the episode ended after {i + 1} of {len(actions)} actions")

    def replay_failed(self, detail: str) -> None:
        raise UserError(
            f"cannot resume the online phase: resetting a fresh environment with online episode "
            f"{self.episode}'s seed and replaying its {self.buffer.size - self.episode_start} recorded "
            f"actions did not reproduce the checkpoint's observation ({detail}). The simulation is not "
            f"deterministic across this resume (another machine, or other mujoco/ogbench versions?). "
            f"Resume where the run started, or move the run directory away to start over."
        )


class ExplorerGroup:
    """The explorers of stacked seeds, one per seed, stepping together: the seeds that need a
    chunk get it from one call of the stacked agent, each drawing from its own exploration
    generator exactly as a lone Explorer of that seed would (the others' generators are left as
    they were)."""

    def __init__(self, agent: Agent, explorers: list[Explorer]) -> None:
        self.agent, self.explorers = agent, explorers

    def step(self) -> None:
        needing = [i for i, explorer in enumerate(self.explorers) if explorer.needs_chunk]
        for i in [i for i in needing if self.explorers[i].acts_randomly]:
            self.explorers[i].set_chunk(self.explorers[i].random_chunk())
        needing = [i for i in needing if self.explorers[i].needs_chunk]
        if needing:
            chunks = self.act(needing)
            for i in needing:
                self.explorers[i].set_chunk(chunks[i])
        for explorer in self.explorers:
            explorer.execute()

    def act(self, needing: list[int]) -> np.ndarray:
        """Chunks (S, H, action_dim) for every seed's observation; only those of `needing` count."""
        agent, generators = self.agent, self.agent.act_generator
        assert isinstance(generators, GeneratorStack) and len(generators) == len(self.explorers)
        saved = generators.get_state()
        for i in needing:
            generators[i].set_state(self.explorers[i].generator.get_state())
        obs = np.stack([explorer.observation for explorer in self.explorers])[:, None]
        agent.eval()
        try:
            # a method that needs gradients to act enables them itself
            with torch.no_grad(), agent.computing():
                obs_tensor = torch.as_tensor(obs, dtype=torch.float32, device=agent.device)
                chunks = agent.act(obs_tensor, **self.explorers[0].eval_params)
        finally:
            for i in needing:
                self.explorers[i].generator.set_state(generators[i].get_state())
            generators.set_state(saved)
            agent.train()
        return chunks.reshape(len(self.explorers), agent.spec.horizon, agent.spec.action_dim).cpu().numpy()
