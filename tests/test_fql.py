"""FQL learns on a one-step problem whose best action is known."""

import numpy as np
import torch

from algorithms import registry
from algorithms.base import EnvSpec
from harness.run.data import ReplayBuffer

BEST_ACTION = np.array([0.5, -0.3], dtype=np.float32)


def bandit_buffer(n: int = 4000, seed: int = 0, state: np.ndarray | None = None) -> ReplayBuffer:
    """One-step episodes with uniform dataset actions and r = -||a - a*||^2, so Q = r; the
    observations are random, or all `state`."""
    rng = np.random.default_rng(seed)
    if state is None:
        observations = rng.normal(size=(n, 2)).astype(np.float32)
    else:
        observations = np.tile(state, (n, 1))
    actions = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    data = {
        "observations": observations,
        "actions": actions,
        "rewards": -((actions - BEST_ACTION) ** 2).sum(-1).astype(np.float32),
        "masks": np.zeros(n, np.float32),
        "terminals": np.ones(n, np.float32),
        "next_observations": observations,
    }
    return ReplayBuffer(data, horizon=1, discount=0.99, seed=seed)


def true_q(actions: torch.Tensor) -> torch.Tensor:
    return -((actions - torch.from_numpy(BEST_ACTION)) ** 2).sum(-1)


def test_fql_policy_moves_to_the_known_optimum():
    buffer = bandit_buffer()
    config = registry.make_config(
        "fql", {"hidden_dims": (64, 64), "num_critics": 2, "batch_size": 128, "lr": 1e-3, "alpha": 0.1}
    )
    agent = registry.create("fql", EnvSpec(2, 2, horizon=1), config, seed=0)
    test_obs = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    start_value = true_q(agent.act(test_obs)).mean().item()
    for _ in range(800):
        agent.update(buffer.sample(config.batch_size))
    actions = agent.act(test_obs)
    value = true_q(actions).mean().item()
    distance = (actions - torch.from_numpy(BEST_ACTION)).norm(dim=-1).mean().item()
    critic_value = agent.critic(test_obs, actions).mean().item()
    assert start_value < -0.3  # an untrained policy is far from the optimum
    assert value > -0.06, value  # the dataset's actions average about -1.0
    assert distance < 0.25, distance
    assert abs(critic_value - value) < 0.1  # the policy's Q estimate is accurate there
    assert actions.abs().max() <= 1.0


def test_actor_q_term_does_not_train_the_critic():
    """The -Q term of the actor loss reaches the one-step policy, never the critic."""
    buffer = bandit_buffer(200)
    config = registry.make_config("fql", {"hidden_dims": (16,), "num_critics": 2, "batch_size": 8})
    agent = registry.create("fql", EnvSpec(2, 2, horizon=1), config, seed=0)
    batch = buffer.sample(8)
    obs = batch.observations
    noise = torch.randn(8, 2)
    q = agent.critic(obs, agent.one_step_actions(obs, noise).clamp(-1, 1), frozen=True).mean()
    q.backward()
    assert all(p.grad is None for p in agent.critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.one_step.parameters())


def test_fql_act_shape_and_range_with_chunks():
    spec = EnvSpec(obs_dim=5, action_dim=3, horizon=4)
    config = registry.make_config("fql", {"hidden_dims": (16,), "num_critics": 2})
    agent = registry.create("fql", spec, config, seed=0)
    actions = agent.act(10 * torch.randn(7, 5))
    assert actions.shape == (7, 12)
    assert actions.abs().max() <= 1.0
