"""IFQL: the expectile value loss against its closed form, best-of-N selection by the ensemble's
minimum, and on a one-state bandit the value at its expectile and selected actions beating plain
BC samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fql import BEST_ACTION, bandit_buffer, true_q
from torch import nn

from algorithms import registry
from algorithms.base import Batch, EnvSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = EnvSpec(obs_dim=2, action_dim=2, horizon=1)
TINY = {"hidden_dims": (64, 64), "num_critics": 2}
STATE = np.array([0.3, -0.7], np.float32)


def make(seed=0, **overrides):
    config = registry.make_config("ifql", {**TINY, **overrides})
    return registry.create("ifql", SPEC, config, seed=seed)


class LinearMembers(nn.Module):
    """Q_k(s, a) = slopes[k] * a_0 + offsets[k], shaped (*S, K, B) like EnsembleCritic."""

    def __init__(self, slopes, offsets):
        super().__init__()
        self.slopes, self.offsets = slopes, offsets

    def forward(self, obs, actions, frozen=False):
        return torch.stack([s * actions[..., 0] + o for s, o in zip(self.slopes, self.offsets)], dim=-2)


class TableValue(nn.Module):
    """V(s) = s_0, shaped (*S, B, 1) like the value MLP."""

    def forward(self, obs):
        return obs[..., :1]


def test_expectile_value_loss_by_hand():
    """Target members 1 and 3 (a_0 = 1): pessimistic target 2 - 0.5 * 1 = 1.5. V = 1.0 gives
    u = 0.5 >= 0, weight kappa: 0.9 * 0.25; V = 2.5 gives u = -1, weight 1 - kappa: 0.1 * 1.
    The loss is their plain mean (not weighted by `valid`): 0.1625."""
    agent = make(kappa=0.9, rho=0.5)
    agent.target_critic = LinearMembers(slopes=(1.0, 3.0), offsets=(0.0, 0.0))
    agent.value = TableValue()
    obs = torch.tensor([[1.0, 0.0], [2.5, 0.0]])
    actions = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss, values = agent.value_loss(obs, actions)
    assert loss.item() == pytest.approx((0.9 * 0.25 + 0.1 * 1.0) / 2)
    torch.testing.assert_close(values, torch.tensor([1.0, 2.5]))
    agent.config.kappa = 0.5  # the symmetric case is half the squared error
    assert agent.value_loss(obs, actions)[0].item() == pytest.approx((0.5 * 0.25 + 0.5 * 1.0) / 2)


def test_selection_takes_the_highest_minimum_over_the_ensemble():
    """Members 2 a_0 and 0.2 - 0.5 a_0: the minimum prefers a_0 = 0 (0 vs -0.3), the mean would
    prefer a_0 = 1 (0.1 vs 0.85). Two states, three candidates each."""
    agent = make()
    agent.critic = LinearMembers(slopes=(2.0, -0.5), offsets=(0.0, 0.2))
    candidates = torch.tensor(
        [
            [[1.0, 0.1], [0.0, 0.2], [0.5, 0.3]],  # minima -0.3, 0.0, -0.05
            [[-0.4, 0.4], [1.0, 0.5], [0.2, 0.6]],  # minima -0.8, -0.3, 0.1
        ]
    )
    chosen = agent.select(torch.zeros(2, 2), candidates)
    torch.testing.assert_close(chosen, torch.tensor([[0.0, 0.2], [0.2, 0.6]]))


@pytest.fixture(scope="module")
def bandit_agent():
    """200 updates on the one-state bandit (uniform data, r = -||a - a*||^2, one-step episodes),
    the last 50 at a tenth of the learning rate; a fast target (tau 0.05) so that V's regression
    target has caught up with the critic by then."""
    buffer = bandit_buffer(4000, state=STATE)
    agent = make(kappa=0.9, rho=0.0, lr=3e-3, batch_size=256, target_tau=0.05)
    for step in range(200):
        if step == 150:
            for group in agent.optimizer.param_groups:
                group["lr"] = 3e-4
        agent.update(buffer.sample(256))
    return agent


def expectile(values: np.ndarray, kappa: float) -> float:
    """The kappa-expectile: the root of kappa E[(x - m)_+] = (1 - kappa) E[(m - x)_+], by bisection."""
    low, high = float(values.min()), float(values.max())
    for _ in range(60):
        m = (low + high) / 2
        excess = (
            kappa * np.clip(values - m, 0, None).mean() - (1 - kappa) * np.clip(m - values, 0, None).mean()
        )
        low, high = (m, high) if excess > 0 else (low, m)
    return (low + high) / 2


def test_value_sits_at_the_expectile_of_the_data_returns(bandit_agent):
    """Q -> r (one-step episodes), so V -> the 0.9-expectile of r over the data's actions: about
    -0.43, far above the mean reward -1.0. Seeds 0-2 land within 0.02 of it."""
    agent = bandit_agent
    actions = np.random.default_rng(1).uniform(-1, 1, size=(200_000, 2))
    rewards = -((actions - BEST_ACTION) ** 2).sum(-1)  # the data's reward distribution
    with torch.no_grad():
        value = agent.state_value(torch.from_numpy(STATE)[None]).item()
    assert abs(value - expectile(rewards, 0.9)) < 0.05, (value, expectile(rewards, 0.9))
    assert value > rewards.mean() + 0.4


def test_best_of_n_beats_a_plain_bc_sample(bandit_agent):
    """Best of 32: the selected chunk's true Q averages about -0.04 (seeds 0-2); one plain flow
    sample's about -0.8 (the data's -1.0, a little sharpened by the short training)."""
    agent = bandit_agent
    obs = torch.from_numpy(STATE).expand(1000, 2)
    chosen = agent.act(obs)
    noise = torch.randn(1000, 1, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = agent.candidates(obs, noise)[:, 0]
    chosen_q, plain_q = true_q(chosen).mean().item(), true_q(plain).mean().item()
    assert chosen_q > plain_q + 0.6, (chosen_q, plain_q)
    assert chosen_q > -0.1, chosen_q
    assert (chosen - torch.from_numpy(BEST_ACTION)).norm(dim=-1).mean() < 0.3


def test_critic_target_bootstraps_from_the_online_value():
    """y = R_H + gamma^H m_H V(s_{t+H}) with V the online value network (here V(s) = s_0): no
    next action is sampled, and `valid` of the last step weights the squared errors."""
    spec = EnvSpec(obs_dim=2, action_dim=1, horizon=2, discount=0.9)
    agent = registry.create("ifql", spec, registry.make_config("ifql", TINY), seed=0)
    agent.value = TableValue()
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        observations=torch.randn(6, 2, generator=g),
        actions=torch.rand(6, 2, 1, generator=g) * 2 - 1,
        rewards=torch.randn(6, 2, generator=g),
        masks=torch.tensor([[1.0, 1.0]] * 5 + [[1.0, 0.0]]),
        valid=torch.tensor([[1.0, 1.0]] * 4 + [[1.0, 0.0]] * 2),
        terminals=torch.zeros(6, 2),
        next_observations=torch.randn(6, 2, 2, generator=g),
    )
    _, metrics = agent.loss(batch)
    target = batch.rewards[:, -1] + 0.9**2 * batch.masks[:, -1] * batch.next_observations[:, -1, 0]
    with torch.no_grad():
        qs = agent.critic(batch.observations, batch.flat_actions)  # (K, B)
    expected = ((qs - target).pow(2) * batch.valid[:, -1]).mean()
    assert metrics["critic_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
