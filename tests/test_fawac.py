"""FAWAC: the advantage weights against their closed form, the weighted-BC fixed point on a
two-mode bandit with a known critic, and where the critic and value targets come from."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from algorithms import registry
from algorithms.base import Batch, EnvSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = EnvSpec(obs_dim=2, action_dim=2, horizon=1)
TINY = {"hidden_dims": (64, 64), "num_critics": 2}
STATE = torch.tensor([0.3, -0.2])
MEMBER_OFFSETS = (0.0, 0.2)  # the known critic's two members: Q_k(s, a) = a_0 + offset_k
VALUE = 0.4  # the known V(s)


class KnownCritic(nn.Module):
    """Q_k(s, a) = a_0 + MEMBER_OFFSETS[k], shaped (*S, K, B) like EnsembleCritic."""

    def forward(self, obs, actions, frozen=False):
        return torch.stack([actions[..., 0] + offset for offset in MEMBER_OFFSETS], dim=-2)


class KnownValue(nn.Module):
    """V(s) = VALUE, shaped (*S, B, 1) like the value MLP."""

    def forward(self, obs):
        return torch.full((*obs.shape[:-1], 1), VALUE)


def make(seed=0, **overrides):
    config = registry.make_config("fawac", {**TINY, **overrides})
    return registry.create("fawac", SPEC, config, seed=seed)


def with_known_critic(agent):
    """A = mean_k Q_k - V = a_0 + 0.1 - 0.4 = a_0 - 0.3; only the flow learns."""
    agent.critic = KnownCritic()
    agent.value = KnownValue()
    return agent


def test_weights_are_the_clipped_exponentiated_advantage():
    """w = min(exp(inv_temp * (mean_k Q_k - V)), 100), by hand at four actions."""
    agent = with_known_critic(make(inv_temp=5.0))
    obs = STATE.expand(4, 2)
    actions = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.3, 0.0], [-0.5, 0.0]])
    weights, advantage = agent.advantage_weights(obs, actions)
    torch.testing.assert_close(advantage, torch.tensor([0.7, 0.2, 0.0, -0.8]))
    torch.testing.assert_close(weights, torch.tensor([math.exp(3.5), math.exp(1.0), 1.0, math.exp(-4.0)]))
    agent.config.inv_temp = 10.0  # exp(7) = 1097 is clipped to 100
    weights, _ = agent.advantage_weights(obs, actions)
    torch.testing.assert_close(weights, torch.tensor([100.0, math.exp(2.0), 1.0, math.exp(-8.0)]))


def two_mode_batch(size: int = 256) -> Batch:
    """One state; half the chunks at a = (0.5, 0), half at (-0.5, 0)."""
    a0 = torch.tensor([0.5, -0.5]).repeat(size // 2)
    actions = torch.stack([a0, torch.zeros(size)], dim=-1)[:, None, :]
    zeros = torch.zeros(size, 1)
    obs = STATE.expand(size, 2)
    return Batch(obs, actions, zeros, zeros.clone(), zeros + 1, zeros + 1, obs[:, None, :])


def trained_mean(inv_temp: float, steps: int = 300, settle: int = 100) -> tuple[float, float]:
    """Mean of a_0 and the mass on the upper mode after `steps` updates on the two-mode batch (the
    last `settle` at a tenth of the learning rate, to quiet the optimiser's noise)."""
    agent = with_known_critic(make(inv_temp=inv_temp, lr=3e-3))
    batch = two_mode_batch(128)
    for step in range(steps):
        if step == steps - settle:
            for group in agent.optimizer.param_groups:
                group["lr"] = 3e-4
        agent.update(batch)
    acted = agent.act(STATE.expand(4000, 2))
    return acted[:, 0].mean().item(), (acted[:, 0] > 0).float().mean().item()


def test_the_flow_reaches_the_weight_averaged_mean():
    """With modes at a_0 = +-0.5, A = a_0 - 0.3 and weights w_+- = exp(inv_temp (+-0.5 - 0.3)), the
    weighted-BC fixed point puts mass w_+ / (w_+ + w_-) = sigmoid(inv_temp) on the upper mode, so
    the mean of a_0 is 0.5 tanh(inv_temp / 2): 0 for plain BC, 0.231 at inv_temp 1, 0.381 at 2.
    Over seeds 0-2 the trained flows' means land within 0.02 of it and their upper masses within
    0.04 (a little above: a few samples fall between the modes)."""
    for inv_temp in (1.0, 2.0):
        mean, upper = trained_mean(inv_temp)
        assert abs(mean - 0.5 * math.tanh(inv_temp / 2)) < 0.04, (inv_temp, mean)
        assert abs(upper - 1 / (1 + math.exp(-inv_temp))) < 0.06, (inv_temp, upper)


def test_value_and_critic_targets():
    """L_V = mean_{k,b} valid (Q'_k(s, a) - V(s))^2 with the target critic; the TD target is
    r + gamma m (mean_k - rho std_k) Q'_k(s', a') with a' the flow's clipped sample."""
    agent = make(rho=0.5)
    agent.target_critic = KnownCritic()
    agent.value = KnownValue()
    batch = two_mode_batch(8)
    batch.masks.fill_(1.0)
    batch.rewards.copy_(torch.linspace(-1, 0, 8)[:, None])
    batch.valid[-1] = 0.0
    state = agent.generator.get_state()
    next_obs = batch.next_observations[:, -1]
    with torch.no_grad():
        next_actions = agent.policy_actions(next_obs)  # the loss's first draw
        qs = agent.critic(batch.observations, batch.flat_actions)
    agent.generator.set_state(state)
    _, metrics = agent.loss(batch)

    # Q'_k - V at a_0 = +-0.5: (0.1, 0.3) and (-0.9, -0.7); the last sample (a_0 = -0.5) is not valid
    per_sample = {0.5: (0.1**2 + 0.3**2) / 2, -0.5: (0.9**2 + 0.7**2) / 2}
    expected_value_loss = (4 * per_sample[0.5] + 3 * per_sample[-0.5]) / 8
    assert metrics["value_loss"].item() == pytest.approx(expected_value_loss, rel=1e-5)
    # members a'_0 and a'_0 + 0.2: mean a'_0 + 0.1, population std 0.1
    target = batch.rewards[:, 0] + 0.99 * (next_actions[:, 0] + 0.1 - 0.5 * 0.1)
    expected_critic_loss = ((qs - target).pow(2) * batch.valid[:, 0]).mean()
    assert metrics["critic_loss"].item() == pytest.approx(expected_critic_loss.item(), rel=1e-5)
