"""QSM and DAC (algorithms/dcgql.py): the VP schedule, the guided reverse chain in closed form with a
hand-made critic and denoiser, each actor loss on a hand example, the two sampler clip flags, typed
overrides, and a short training run on the bandit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_fql import bandit_buffer, true_q
from torch import Tensor, nn

from algorithms import registry
from algorithms.base import Agent, EnvSpec
from algorithms.dcgql import Schedule, ddpm_sample, reverse_step
from algorithms.registry import RegistryError

TINY = {"hidden_dims": (32, 32), "num_critics": 2, "batch_size": 8}
W = torch.tensor([1.0, -2.0])  # the hand-made critic's action gradient


class LinearCritic(nn.Module):
    """Two members, Q_1 = w . a and Q_2 = w . a + 1: grad_a mean_k Q_k = w everywhere."""

    def forward(self, obs: Tensor, actions: Tensor, frozen: bool = False) -> Tensor:
        q = actions @ W
        return torch.stack([q, q + 1])


class HalfDenoiser(nn.Module):
    """eps(s, x, t) = x / 2."""

    def forward(self, obs: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        return 0.5 * x


def make(method: str, **overrides) -> Agent:
    config = registry.make_config(method, {**TINY, **overrides})
    return registry.create(method, EnvSpec(2, 2, horizon=1), config, seed=0)


def test_vp_schedule_matches_its_closed_form():
    for steps in (5, 10):
        schedule = Schedule.make("vp", steps)
        assert schedule.alpha_hats[0] == 1.0 and schedule.betas[0] == 0.0
        # sum_t (b_min / T + (b_max - b_min) (2t - 1) / (2 T^2)) = b_min + (b_max - b_min) / 2
        assert schedule.alpha_hats[steps] == pytest.approx(math.exp(-5.05), rel=1e-12)
    assert Schedule.make("vp", 10).betas[1] == pytest.approx(1 - math.exp(-0.0595), rel=1e-12)


def test_one_reverse_step_in_closed_form():
    schedule = Schedule.make("vp", 10)
    t = 4
    abar, abar_prev, beta = schedule.alpha_hats[t], schedule.alpha_hats[t - 1], schedule.betas[t]
    x = torch.tensor([[0.3, -0.2, 0.9]])
    eps = torch.tensor([[0.1, 0.4, -3.0]])
    x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    assert x0[0, 2] > 1  # the third coordinate's x0 lies outside the box
    torch.testing.assert_close(reverse_step(x, eps, t, schedule, clip_before=False), x0)
    mean = (math.sqrt(abar_prev) * beta * x0.clamp(-1, 1) + math.sqrt(1 - beta) * (1 - abar_prev) * x) / (
        1 - abar
    )
    torch.testing.assert_close(reverse_step(x, eps, t, schedule, clip_before=True), mean)
    # at t = 1 the posterior mean is clip(x0) itself (abar_0 = 1)
    x0_first = (x - math.sqrt(1 - schedule.alpha_hats[1]) * eps) / math.sqrt(schedule.alpha_hats[1])
    torch.testing.assert_close(reverse_step(x, eps, 1, schedule, clip_before=True), x0_first.clamp(-1, 1))


def chain_gain(schedule: Schedule, slope: float) -> float:
    """K with x_0(tau) - x_0(0) = tau K w for the denoiser eps = slope x - tau w and no clipping:
    each step maps x_t to ((1 - slope r_t) x_t + tau r_t w) / sqrt(abar_t), r_t = sqrt(1 - abar_t),
    so the gap d between guided and unguided chains becomes ((1 - slope r_t) d + tau r_t w) / sqrt(abar_t)."""
    gain = 0.0
    for t in range(schedule.steps, 0, -1):
        root = math.sqrt(1 - schedule.alpha_hats[t])
        gain = ((1 - slope * root) * gain + root) / math.sqrt(schedule.alpha_hats[t])
    return gain


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_guided_chain_moves_samples_up_the_q_gradient_by_tau(tau):
    """With the QSM fixed point eps = -tau grad Q of a linear critic Q = w . a, the reverse chain
    ends tau K w away from the unguided chain (same x_T and noise): Q rises by tau K |w|^2."""
    schedule = Schedule.make("vp", 5)
    generator = torch.Generator().manual_seed(0)
    x_last = torch.randn(6, 2, generator=generator)
    noises = [torch.randn(6, 2, generator=generator) for _ in range(schedule.steps - 1)]

    def run(weight: float) -> Tensor:
        def denoise(x: Tensor, t: int) -> Tensor:
            return 0.2 * x - weight * W  # a known base denoiser plus the guidance

        return ddpm_sample(denoise, x_last, noises, schedule, clip_before=False, clip_after=False)

    moved = run(tau) - run(0.0)
    gain = chain_gain(schedule, 0.2)
    assert gain > 1
    torch.testing.assert_close(moved, (tau * gain * W).expand(6, 2), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(moved @ W, torch.full((6,), tau * gain * 5.0), rtol=1e-5, atol=1e-4)


class Recorder:
    """A denoiser pushing hard toward +infinity (eps = -5) that records every x_t it sees."""

    def __init__(self) -> None:
        self.inputs: list[Tensor] = []

    def __call__(self, x: Tensor, t: int) -> Tensor:
        self.inputs.append(x.clone())
        return torch.full_like(x, -5.0)


@pytest.mark.parametrize("before, after", [(False, False), (True, False), (False, True)])
def test_clip_flags_clip_where_configured(before, after):
    schedule = Schedule.make("vp", 10)
    generator = torch.Generator().manual_seed(1)
    x_last = torch.randn(32, 3, generator=generator)
    noises = [torch.randn(32, 3, generator=generator) for _ in range(schedule.steps - 1)]
    recorder = Recorder()
    out = ddpm_sample(recorder, x_last, noises, schedule, clip_before=before, clip_after=after)
    intermediate = torch.stack(recorder.inputs[1:]).abs().max().item()  # x_{T-1} .. x_1
    if after:
        assert intermediate <= 1.0 and out.abs().max() <= 1.0
    else:
        assert intermediate > 1.0  # the noise of the later steps leaves the box
    last_x0 = (recorder.inputs[-1] + 5 * math.sqrt(1 - schedule.alpha_hats[1])) / math.sqrt(
        schedule.alpha_hats[1]
    )
    if before:  # the last step returns clip(x0): in the box without clip_sampler_after
        torch.testing.assert_close(out, last_x0.clamp(-1, 1))
    elif not after:
        torch.testing.assert_close(out, last_x0)
        assert out.max() > 1.0


def hand_batch() -> tuple[Tensor, ...]:
    obs = torch.zeros(2, 2)
    actions = torch.tensor([[0.2, -0.4], [0.6, 0.1]])
    noise = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    steps = torch.tensor([1, 10])
    valid = torch.tensor([1.0, 0.0])
    return obs, actions, noise, steps, valid


@pytest.mark.parametrize("method", ["qsm", "dac"])
def test_actor_losses_equal_their_formulas(method):
    agent = make(method, alpha=3.0, inv_temp=2.0)
    agent.actor, agent.target_critic = HalfDenoiser(), LinearCritic()
    obs, actions, noise, steps, valid = hand_batch()
    abar = torch.tensor([agent.schedule.alpha_hats[1], agent.schedule.alpha_hats[10]]).unsqueeze(-1)
    noisy = abar.sqrt() * actions + (1 - abar).sqrt() * noise
    eps = 0.5 * noisy
    bc = ((noise - eps) ** 2).mean(-1)
    if method == "qsm":
        q_term = ((-2.0 * W - eps) ** 2).mean(-1)
    else:
        q_term = ((1 - abar).sqrt() * W * eps).mean(-1)
    expected = (3.0 * bc * valid + q_term * valid).mean()  # the second sample is invalid: weight 0
    loss, metrics = agent.actor_loss(obs, actions, valid, steps, noise)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["bc_loss"].item() == pytest.approx((bc * valid).mean().item(), rel=1e-6)


def test_qsm_loss_vanishes_at_the_scaled_q_gradient():
    agent = make("qsm", alpha=0.0, inv_temp=4.0)
    agent.target_critic = LinearCritic()

    class Fixed(nn.Module):
        def forward(self, obs: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
            return (-4.0 * W).expand_as(x)

    agent.actor = Fixed()
    obs, actions, noise, steps, _ = hand_batch()
    loss, _ = agent.actor_loss(obs, actions, torch.ones(2), steps, noise)
    assert loss.item() == 0.0


@pytest.mark.parametrize("use_target", [True, False])
def test_q_gradient_is_taken_at_the_noisy_action_of_the_configured_critic(use_target):
    """Q(a) = -||a - c||^2 in the chosen critic has gradient -2 (x_t - c) at the noised action."""
    agent = make("qsm", use_target_critic_grad=use_target)
    centre = torch.tensor([0.3, -0.1])

    class Quadratic(nn.Module):
        def forward(self, obs: Tensor, actions: Tensor, frozen: bool = False) -> Tensor:
            return -((actions - centre) ** 2).sum(-1).expand(2, -1)

    if use_target:
        agent.target_critic = Quadratic()
    else:
        agent.critic = Quadratic()
    x = torch.tensor([[1.5, 0.0], [-2.0, 0.4]])  # outside the box: not clipped
    torch.testing.assert_close(agent.q_gradient(torch.zeros(2, 2), x), -2 * (x - centre))


def test_actor_loss_gives_no_gradient_to_either_critic():
    agent = make("dac")
    obs, actions, noise, steps, valid = hand_batch()
    loss, _ = agent.actor_loss(obs, actions, valid, steps, noise)
    loss.backward()
    assert all(p.grad is None for p in [*agent.critic.parameters(), *agent.target_critic.parameters()])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())


def test_typed_overrides_and_bad_values():
    config = registry.make_config("qsm", {"clip_sampler_before": "true", "actor_loss_type": "dac"})
    assert config.clip_sampler_before is True and config.actor_loss_type == "dac"
    assert registry.make_config("dac", {"clip_sampler_before": "false"}).clip_sampler_before is False
    # what `--set KEY=VALUE` goes through: strings typed by the config's fields
    parsed = registry.parse_overrides("dac", {"clip_sampler_after": "on", "actor_loss_type": "qsm"})
    assert parsed == {"clip_sampler_after": True, "actor_loss_type": "qsm"}
    assert (
        registry.make_config("qsm").clip_sampler_after and not registry.make_config("dac").clip_sampler_after
    )
    with pytest.raises(RegistryError, match="actor_loss_type"):
        registry.make_config("qsm", {"actor_loss_type": "awr"})
    with pytest.raises(RegistryError, match="alpha > 0"):
        registry.make_config("dac", {"alpha": "0"})


@pytest.mark.parametrize("method", ["qsm", "dac"])
def test_short_training_on_the_bandit_beats_the_dataset(one_thread, method):
    buffer = bandit_buffer(state=np.zeros(2, np.float32))
    dataset_value = true_q(buffer.sample(4000).flat_actions).mean().item()  # about -1.0
    config = registry.make_config(
        method, {"hidden_dims": (64, 64), "num_critics": 2, "batch_size": 64, "lr": 1e-3}
    )
    agent = registry.create(method, EnvSpec(2, 2, horizon=1), config, seed=0)
    obs = torch.zeros(512, 2)
    for _ in range(200):
        agent.update(buffer.sample(config.batch_size))
    actions = agent.act(obs)
    assert actions.abs().max() <= 1.0
    value = true_q(actions).mean().item()
    assert value > dataset_value + 0.3, (value, dataset_value)
