"""CGQL: the guided sampling velocity v + coef * g per mode, the MSE and LINEX noisy-critic losses
and their minimisers, and guidance that raises the true Q on a bandit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_fql import BEST_ACTION, bandit_buffer, true_q
from torch import Tensor, nn

from algorithms import registry
from algorithms.base import EnvSpec
from algorithms.cgql import guided_sample, noisy_critic_loss
from algorithms.registry import RegistryError

TINY = {"hidden_dims": (16,), "num_critics": 2, "batch_size": 8}


class HandCritic(nn.Module):
    """Two members Q_j(s, a, t) = -w_j t ||a - c||^2, w = (1, 3), c = 1: the mean's action gradient
    is -4 t (a - c). The critic sees [a, t] as its action input."""

    def forward(self, obs: Tensor, action_and_time: Tensor, frozen: bool = False) -> Tensor:
        a, t = action_and_time[..., :-1], action_and_time[..., -1]
        sq = (a - 1.0).pow(2).sum(-1) * t
        return torch.stack([-1.0 * sq, -3.0 * sq], dim=-2)


class HandFlow(nn.Module):
    """v(s, x, t) = scale * x."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, obs: Tensor, x: Tensor, t: float, frozen: bool = False) -> Tensor:
        return self.scale * x


def hand_agent(method: str, **overrides):
    config = registry.make_config(method, {**TINY, "flow_steps": 2, "inv_temp": 2.0, **overrides})
    agent = registry.create(method, EnvSpec(1, 1, horizon=1), config, seed=0)
    agent.critic = HandCritic()  # the online critic guides
    agent.target_critic = None  # never used by the sampler
    agent.target_flow = HandFlow(-1.0)  # the target flow samples (target_guidance)
    agent.flow = HandFlow(100.0)
    return agent


# Two Euler steps (h = 1/2) from x_0 = (1, -1) with v = -x, tau = 2, coef = 0.1, c = 1:
# step 0 (t = 0, no guidance) gives x_1 = x_0 / 2 = (0.5, -0.5). Step 1 at t = 1/2:
#   u = -x_1 + 0.1 (2 (1 - 1/2) grad + x_1) / (1/2),  grad = -4 t* (x_1 - 1)
#   simple (t* = 1):  grad = (2, 6),  u = (0, 1.6),     x_2 = x_1 + u / 2 = (0.5, 0.3)
#   mse    (t* = 1/2): grad = (1, 3),  u = (-0.2, 1.0), x_2 = (0.4, 0.0)
#   no guidance (tau = 0): x_2 = x_1 / 2 = (0.25, -0.25)
@pytest.mark.parametrize(
    ("method", "inv_temp", "expected"),
    [
        ("cgql", 2.0, [0.5, 0.3]),
        ("cgql-m", 2.0, [0.4, 0.0]),
        ("cgql-l", 2.0, [0.4, 0.0]),
        ("cgql", 0.0, [0.25, -0.25]),
    ],
)
def test_guided_velocity_is_v_plus_coef_times_the_modes_guidance(method, inv_temp, expected):
    agent = hand_agent(method, inv_temp=inv_temp)
    noise = torch.tensor([[1.0], [-1.0]])
    got = agent.guided_actions(torch.zeros(2, 1), noise)
    torch.testing.assert_close(got.squeeze(-1), torch.tensor(expected))


def test_guidance_with_the_online_flow_when_target_guidance_is_off():
    agent = hand_agent("cgql", target_guidance=False)
    agent.flow = HandFlow(-1.0)
    agent.target_flow = HandFlow(100.0)
    got = agent.guided_actions(torch.zeros(2, 1), torch.tensor([[1.0], [-1.0]]))
    torch.testing.assert_close(got.squeeze(-1), torch.tensor([0.5, 0.3]))


# K = 2 members x B = 2 samples, valid = (1, 0.5), tau = 2, isd_clip = 5.
NOISY_Q = torch.tensor([[0.0, 1.0], [-1.0, -3.0]])
TARGET_Q = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
VALID = torch.tensor([1.0, 0.5])


def test_mse_noisy_loss_on_a_hand_example():
    # squared errors (1, 0; 1, 9), weighted by valid: 1 + 0 + 1 + 4.5 = 6.5, over K x B = 4
    loss = noisy_critic_loss(NOISY_Q, TARGET_Q, VALID, "mse", 2.0, 5.0)
    assert loss.item() == pytest.approx(6.5 / 4)


def test_linex_noisy_loss_and_its_clip_on_a_hand_example():
    # d = tau (y - q) = (2, 0; 2, 6); d = 6 > 5 is clipped to the linear branch d itself:
    # (e^2 + 0) * 1 + (e^0 + 2) * 0.5 + (e^2 - 2) * 1 + 6 * 0.5 = 2 e^2 + 2.5, over 4
    q = NOISY_Q.clone().requires_grad_(True)
    loss = noisy_critic_loss(q, TARGET_Q, VALID, "linex", 2.0, 5.0)
    assert loss.item() == pytest.approx((2 * math.e**2 + 2.5) / 4)
    (grad,) = torch.autograd.grad(loss, q)
    # d/dq (exp(tau (y - q)) + tau q) = tau (1 - exp(d)); d/dq of the clipped d = -tau
    expected = torch.tensor([[2 * (1 - math.e**2), 0.5 * 2 * (1 - 1)], [2 * (1 - math.e**2), 0.5 * -2.0]]) / 4
    torch.testing.assert_close(grad, expected)


def test_mse_and_linex_minimisers_are_the_mean_and_the_soft_maximum():
    """Over a sample of targets y, the MSE loss is stationary at mean(y) and the LINEX loss at
    (1 / tau) log mean exp(tau y), the noisy critic each mode learns."""
    y = torch.tensor([-1.0, 0.0, 0.5, -2.0]).reshape(1, 4)
    valid = torch.ones(4)
    tau = 2.0
    minimisers = {"mse": y.mean().item(), "linex": (torch.logsumexp(tau * y, -1) - math.log(4)).item() / tau}
    assert minimisers["mse"] == pytest.approx(-0.625)
    assert minimisers["linex"] == pytest.approx(-0.01627, abs=1e-4)
    for mode, q_star in minimisers.items():
        for offset, sign in ((0.0, 0), (0.1, 1), (-0.1, -1)):
            q = torch.full((1, 4), q_star + offset, requires_grad=True)
            (grad,) = torch.autograd.grad(noisy_critic_loss(q, y, valid, mode, tau, 5.0), q)
            total = grad.sum().item()
            if sign == 0:
                assert abs(total) < 1e-5, (mode, total)
            else:
                assert total * sign > 1e-3, (mode, offset, total)


def test_noisy_coef_weights_the_noisy_critic_loss_and_simple_has_none():
    batch = bandit_buffer(200).sample(8)
    losses, metrics = {}, {}
    for coef in (0.0, 0.5):
        config = registry.make_config("cgql-l", {**TINY, "noisy_coef": coef, "inv_temp": 3.0})
        agent = registry.create("cgql-l", EnvSpec(2, 2, horizon=1), config, seed=0)
        losses[coef], metrics[coef] = agent.loss(batch)
    noisy = metrics[0.5]["noisy_critic_loss"]
    assert noisy.item() > 0.1
    torch.testing.assert_close(metrics[0.0]["noisy_critic_loss"], noisy)
    torch.testing.assert_close(losses[0.5] - losses[0.0], 0.5 * noisy)
    simple = registry.create("cgql", EnvSpec(2, 2, horizon=1), registry.make_config("cgql", TINY), seed=0)
    assert "noisy_critic_loss" not in simple.loss(batch)[1]


def test_mode_is_a_typed_string_key_and_unknown_modes_are_refused():
    config = registry.make_config("cgql", {"mode": "mse", "inv_temp": "10", "noisy_coef": "0.1"})
    assert (config.mode, config.inv_temp, config.noisy_coef) == ("mse", 10.0, 0.1)
    assert registry.make_config("cgql-l").mode == "linex"
    assert registry.make_config("cgql-m").mode == "mse"
    with pytest.raises(RegistryError, match="simple, mse, linex"):
        registry.make_config("cgql", {"mode": "exp"})


def test_act_shape_and_range_with_chunks():
    config = registry.make_config("cgql", {**TINY, "inv_temp": 10.0, "guidance_coef": 1.0})
    agent = registry.create("cgql", EnvSpec(obs_dim=5, action_dim=3, horizon=4), config, seed=0)
    actions = agent.act(10 * torch.randn(7, 5))
    assert actions.shape == (7, 12)
    assert actions.abs().max() <= 1.0


def test_guidance_raises_the_true_q_on_a_bandit(one_thread):
    """Trained briefly on uniform actions with Q = -||a - a*||^2, the guided samples (simple mode,
    inv_temp 10, coef 0.1, the paper's most common row) score higher than the same noise unguided."""
    buffer = bandit_buffer(2000, state=np.zeros(2, np.float32))
    overrides = {"hidden_dims": (64, 64), "num_critics": 2, "batch_size": 64, "lr": 1e-3, "inv_temp": 10.0}
    config = registry.make_config("cgql", overrides)
    agent = registry.create("cgql", EnvSpec(2, 2, horizon=1), config, seed=0)
    for _ in range(120):
        agent.update(buffer.sample(config.batch_size))
    obs = torch.zeros(512, 2)
    state = agent.act_generator.get_state()
    guided = true_q(agent.act(obs)).mean().item()
    agent.act_generator.set_state(state)
    agent.config = registry.make_config("cgql", {**overrides, "inv_temp": 0.0})
    unguided = true_q(agent.act(obs)).mean().item()
    assert unguided < -0.7, unguided  # the BC flow: about uniform actions (mean -0.89)
    assert guided > -0.5 and guided > unguided + 0.4, (guided, unguided)


# The bandit's exact flow and noisy critics: for x = x_t the posterior of each action dim a_i is
# proportional to exp(-(x_i - t a_i)^2 / (2 (1 - t)^2)) on [-1, 1] (a uniform prior), evaluated on a grid.
GRID = torch.linspace(-1, 1, 401)
BEST = torch.from_numpy(BEST_ACTION)


def posterior(x: Tensor, t: float) -> Tensor:
    """(..., 2) -> posterior weights (..., 2, grid)."""
    return torch.softmax(-0.5 * ((x.unsqueeze(-1) - t * GRID) / (1 - t)) ** 2, -1)


def exact_velocity(x: Tensor, t: float) -> Tensor:
    """The BC flow's velocity (E[a | x_t] - x) / (1 - t)."""
    return ((posterior(x, t) * GRID).sum(-1) - x) / (1 - t)


def exact_mse_critic(x: Tensor, t: float) -> Tensor:
    """MSE mode's fixed point E[Q(a) | x_t] (the clean Q at t = 1)."""
    if t == 1.0:
        return true_q(x)
    return -(posterior(x, t) * (GRID - BEST.unsqueeze(-1)) ** 2).sum((-2, -1))


@pytest.mark.parametrize(("clean_value", "floor"), [(True, -0.1), (False, -0.7)])
def test_guidance_with_the_exact_critic_raises_the_true_q(clean_value, floor):
    """The sampler at the paper's setting (inv_temp 10, coef 0.1) on the bandit's exact BC flow:
    unguided samples average Q = -0.89; guided by the clean Q (simple mode) about -0.01, by
    MSE mode's fixed point E[Q | x_t] about -0.62."""
    noise = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    unguided = true_q(guided_sample(exact_velocity, exact_mse_critic, noise, 10, 0.0, 0.1, clean_value))
    guided = true_q(guided_sample(exact_velocity, exact_mse_critic, noise, 10, 10.0, 0.1, clean_value))
    assert unguided.mean().item() == pytest.approx(-0.89, abs=0.03)
    assert guided.mean().item() > max(floor, unguided.mean().item() + 0.2)
