"""BAM: its gradient is the discrete basic adjoint of the memoryless SDE (closed form on linear
velocities), how that adjoint relates to QAM's lean adjoint, which networks and noise the agent's loss
uses, and the tilt it learns (pi_b exp(tau Q / N), the reference's scaling) on two one-state problems."""

import math

import numpy as np
import pytest
import torch
from test_fql import BEST_ACTION, bandit_buffer
from test_qam import (
    BEHAVIOUR_STD,
    GaussianBehaviourVelocity,
    QuadraticQ,
    grads,
    make,
    random_batch,
    record_calls,
    replay_act_noise,
    tilted_target,
)
from test_qam_adjoint import A, D, H, N, linear_velocity

from algorithms import registry
from algorithms.bam import basic_adjoint_objective
from algorithms.base import Batch, EnvSpec
from algorithms.flow import euler_ode, lean_adjoint, memoryless_sde, memoryless_sigmas, sample_actions

EYE = torch.eye(D, dtype=torch.float64)
CENTER = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
PRECISION = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]], dtype=torch.float64)
TAU = 1.7


def quadratic_value(actions: torch.Tensor) -> torch.Tensor:
    """Q(a) = -1/2 (a - c)^T P (a - c), so that -tau grad Q(x_N) = tau P (x_N - c)."""
    diff = actions - CENTER
    return -0.5 * (diff @ PRECISION * diff).sum(-1)


def draws(batch: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, D, generator=g, dtype=torch.float64)
    return x0, torch.randn(N - 1, batch, D, generator=g, dtype=torch.float64)


def test_the_gradient_is_the_discrete_basic_adjoint_in_closed_form():
    """v_f = (1 + t) W x + t c (W, c learned), v_b = (1 + t) A x + t b, quadratic Q. With
    r_k = v_f(x_k, t_k) - v_b(x_k, t_k) and M_k = I + h (2 (1 + t_k) W - I / (t_k + h)), the gradient of
    -tau Q(x_N) + sum_{k<N-1} (2 / sigma_k^2) ||r_k||^2 is the backward recursion
        a_N = tau P (x_N - c),  a_{N-1}^T = a_N^T (I + h (1 + t_{N-1}) A)       (last step: the base's ODE)
        a_k^T = a_{k+1}^T M_k + (4 / sigma_k^2) r_k^T (1 + t_k) (W - A)        (fine Jacobian + running cost)
    dJ/dx_0 = a_0 and dJ/dW = sum_k [2 h (1 + t_k) a_{k+1} + (4 / sigma_k^2) (1 + t_k) r_k] x_k^T."""
    g = torch.Generator().manual_seed(5)
    weight = (A + 0.3 * torch.randn(D, D, generator=g, dtype=torch.float64)).requires_grad_(True)
    shift = torch.randn(D, generator=g, dtype=torch.float64).requires_grad_(True)

    def fine(x: torch.Tensor, t: float) -> torch.Tensor:
        return (1 + t) * x @ weight.T + t * shift

    x0, noise = draws()
    x0.requires_grad_(True)
    loss, value, cost = basic_adjoint_objective(fine, linear_velocity, quadratic_value, x0, noise, N, TAU)
    grad_x0, grad_w, grad_c = torch.autograd.grad(loss.sum(), [x0, weight, shift])

    sigmas = memoryless_sigmas(N)
    with torch.no_grad():
        states = memoryless_sde(fine, linear_velocity, x0, noise, N)
        w, c = weight.detach(), shift.detach()
        residuals = [fine(states[k], k * H) - linear_velocity(states[k], k * H) for k in range(N - 1)]
        expected_cost = sum((2 / sigmas[k] ** 2) * residuals[k].pow(2).sum(-1) for k in range(N - 1))
        torch.testing.assert_close(cost, expected_cost)
        torch.testing.assert_close(value, quadratic_value(states[N]))
        adjoint = TAU * (states[N] - CENTER) @ PRECISION
        adjoint = adjoint @ (EYE + H * (1 + (N - 1) * H) * A)
        expected_w, expected_c = torch.zeros_like(w), torch.zeros_like(c)
        for k in reversed(range(N - 1)):
            t, scale = k * H, 4 / sigmas[k] ** 2
            expected_w += (2 * H * (1 + t) * adjoint + scale * (1 + t) * residuals[k]).T @ states[k]
            expected_c += (2 * H * t * adjoint + scale * t * residuals[k]).sum(0)
            step_jacobian = EYE + H * (2 * (1 + t) * w - EYE / (t + H))
            adjoint = adjoint @ step_jacobian + scale * residuals[k] @ ((1 + t) * (w - A))
    torch.testing.assert_close(grad_x0, adjoint, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_w, expected_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_c, expected_c, rtol=1e-10, atol=1e-10)


def test_with_v_f_equal_to_a_time_free_v_b_it_is_the_lean_recursion_but_for_the_last_step():
    """v_f = v_b = A x: the running cost vanishes and BAM's adjoint a_0 = dJ/dx_0 follows QAM's lean
    recursion for k < N - 1, but its last step is the base's plain ODE step (Jacobian h A, not
    h (2 A - I)). So a_0 equals the lean adjoint started from a_N (I + h A)(I + h (2 A - I))^-1 and
    differs from the one started from a_N; with v_f != v_b the two differ whatever the start."""

    def base(x: torch.Tensor, t: float) -> torch.Tensor:
        return x @ A.T

    def adjoint_at_x0(fine) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        x0, noise = draws(seed=1)
        x0.requires_grad_(True)
        loss, _, cost = basic_adjoint_objective(fine, base, quadratic_value, x0, noise, N, TAU)
        (grad,) = torch.autograd.grad(loss.sum(), x0)
        with torch.no_grad():
            states = memoryless_sde(fine, base, x0, noise, N)
        return grad, states, cost

    grad, states, cost = adjoint_at_x0(base)
    assert cost.abs().max() == 0
    terminal = TAU * (states[N] - CENTER) @ PRECISION
    moved = terminal @ (EYE + H * A) @ torch.linalg.inv(EYE + H * (2 * A - EYE))
    torch.testing.assert_close(grad, lean_adjoint(base, states, moved, N)[0], rtol=1e-10, atol=1e-10)
    gap = (grad - lean_adjoint(base, states, terminal, N)[0]).abs().max()
    assert gap > 0.02 * grad.abs().max()

    grad, states, _ = adjoint_at_x0(lambda x, t: base(x, t) + 0.3 * torch.tanh(x))
    terminal = TAU * (states[N] - CENTER) @ PRECISION
    moved = terminal @ (EYE + H * A) @ torch.linalg.inv(EYE + H * (2 * A - EYE))
    assert (grad - lean_adjoint(base, states, moved, N)[0]).abs().max() > 0.2 * grad.abs().max()


# --- the agent ---------------------------------------------------------------------------------
def bam_by_hand(agent, obs: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, clip: bool, critic):
    """The BAM loss written out step by step with the agent's networks, for comparison."""
    sigmas, base, tau = memoryless_sigmas(N), agent.target_base_flow, agent.config.inv_temp
    x, cost = x0, 0.0
    for k in range(N - 1):
        t = k * H
        velocity = agent.fine_flow(obs, x, t)
        cost = cost + (2 / sigmas[k] ** 2) * (velocity - base(obs, x, t)).pow(2).sum(-1)
        x = x + H * (2 * velocity - x / (t + H)) + math.sqrt(H) * sigmas[k] * eps[k]
    x = x + H * base(obs, x, (N - 1) * H)
    qs = critic(obs, x.clamp(-1, 1) if clip else x)
    value = qs.mean(0) - agent.config.rho * qs.std(0, unbiased=False)
    return (-tau * value + cost).mean(), x


def test_the_loss_uses_the_online_pessimistic_critic_unclipped_and_the_target_base():
    """The agent's loss equals the hand-written one with the same noise (x_0, then eps_1..eps_{N-1}),
    and not the variants with the target critic or a clipped x_N (both made to matter here)."""
    agent = make("bam", inv_temp=10.0, rho=0.5)
    with torch.no_grad():  # online and target networks apart, as after training
        for target in (agent.target_critic, agent.target_base_flow):
            for p in target.parameters():
                p.add_(0.3 * torch.randn_like(p))
    obs = random_batch().observations
    state = agent.generator.get_state()
    loss, metrics = agent.adjoint_matching(obs)
    g = torch.Generator().set_state(state)
    x0 = torch.randn(16, 4, generator=g)
    eps = torch.randn(N - 1, 16, 4, generator=g)
    with torch.no_grad():
        expected, x_final = bam_by_hand(agent, obs, x0, eps, False, agent.critic)
        clipped, _ = bam_by_hand(agent, obs, x0, eps, True, agent.critic)
        with_target, _ = bam_by_hand(agent, obs, x0, eps, False, agent.target_critic)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics["bam_loss"], expected)
    assert (x_final.abs() > 1).any()
    assert abs(clipped - expected) > 1e-3 and abs(with_target - expected) > 1e-3


@pytest.mark.parametrize("target_base", [True, False])
def test_gradients_flow_through_the_sde_into_v_f_only(target_base):
    """Unlike QAM, every SDE state after x_0 carries v_f's graph; the BAM loss gives v_f a gradient
    and none to the critic or v_b (frozen there, also when the online v_b is used); the total loss's
    critic and v_b gradients are their own losses'."""
    agent = make("bam", target_base=target_base)
    calls = record_calls(agent.fine_flow)
    loss, metrics = agent.loss(random_batch())
    sde_calls = calls[-(N - 1) :]
    assert not sde_calls[0]["x_grad"] and all(call["x_grad"] for call in sde_calls[1:])
    obs = random_batch(seed=1).observations
    bam_loss, _ = agent.adjoint_matching(obs)
    assert sum(g.abs().sum() for g in grads(bam_loss, list(agent.fine_flow.parameters()))) > 0
    for module in (agent.critic, agent.base_flow):
        assert all(g.abs().sum() == 0 for g in grads(bam_loss, list(module.parameters())))
    for module, own_loss in [(agent.base_flow, "bc_loss"), (agent.critic, "critic_loss")]:
        params = list(module.parameters())
        for g_total, g_own in zip(grads(loss, params), grads(metrics[own_loss], params)):
            torch.testing.assert_close(g_total, g_own)


def test_acts_with_the_ode_of_v_f_and_with_v_b_at_inv_temp_0_and_has_no_qam_variant_keys():
    obs = torch.randn(9, 3)
    for inv_temp, flow in [(10.0, "fine_flow"), (0.0, "base_flow")]:
        agent = make("bam", inv_temp=inv_temp)
        (noise,) = replay_act_noise(agent, (9, 4), 1)
        torch.testing.assert_close(agent.act(obs), sample_actions(getattr(agent, flow), obs, noise, N))
    assert registry.get("bam").default_config().inv_temp == 0.3
    for key in ("fql_alpha", "edit_scale", "clip_terminal", "adjoint_targets"):
        with pytest.raises(registry.RegistryError, match="unknown config key"):
            registry.make_config("bam", {key: 1})


# --- what it learns --------------------------------------------------------------------------
def test_known_base_and_q_give_the_tilt_at_inv_temp_over_n(one_thread):
    """pi_b = N(0, 0.5^2) (exact velocity) and Q = -(a - 0.5)^2 / 2 known: the running cost is the KL
    over h, so BAM's optimum is pi_b exp(tau Q / N). At tau = 30 that tilt's mean is 0.214; the
    pi_b exp(tau Q) one's is 0.441. 120 updates give 0.22-0.23 over seeds 0-2. The 10-step sampler
    narrows the std (0.27 against the closed form's 0.38), as for QAM."""
    batch_size, steps = 256, 120
    config = registry.make_config(
        "bam",
        # rho 0: the stand-in critic's members are equal, and a std of 0 has no gradient
        {"inv_temp": 30.0, "hidden_dims": (64, 64), "num_critics": 2, "batch_size": batch_size, "lr": 3e-3}
        | {"rho": 0.0},
    )
    agent = registry.create("bam", EnvSpec(obs_dim=1, action_dim=1, horizon=1), config, seed=0)
    agent.base_flow = agent.target_base_flow = GaussianBehaviourVelocity()
    agent.critic = agent.target_critic = QuadraticQ()
    g = torch.Generator().manual_seed(0)
    zeros = torch.zeros(batch_size, 1)
    for step in range(steps):
        if step == steps - 40:
            for group in agent.optimizer.param_groups:
                group["lr"] = 3e-4
        actions = BEHAVIOUR_STD * torch.randn(batch_size, 1, 1, generator=g)
        agent.update(Batch(zeros, actions, zeros, zeros, zeros + 1, zeros, zeros[:, None]))
    obs = torch.zeros(8000, 1)
    noise = torch.randn(8000, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fine = euler_ode(agent.fine_flow, obs, noise, N)
    mean, std = tilted_target(30.0 / N)
    assert abs(fine.mean().item() - mean) < 0.04, (fine.mean().item(), mean)
    assert abs(fine.mean().item() - tilted_target(30.0)[0]) > 0.15
    assert 0.6 * std < fine.std().item() < std


def test_bandit_policy_moves_from_the_data_mean_to_the_tilted_mean(one_thread):
    """One state, uniform data on [-1, 1]^2, r = -||a - a*||^2 with a* = (0.5, -0.3), critic learned.
    The tilt U[-1, 1]^2 exp(tau Q / N) at tau = 30 is a product of truncated normals with mean
    (0.414, -0.262); after 150 updates BAM acts with a mean within 0.035 of it (seeds 0-2), while the
    base flow it trains by BC stays at the data mean 0."""
    tau, batch_size = 30.0, 128
    buffer = bandit_buffer(2000, state=np.zeros(2, np.float32))
    config = registry.make_config(
        "bam",
        {"inv_temp": tau, "hidden_dims": (64, 64), "num_critics": 2, "batch_size": batch_size, "lr": 1e-3},
    )
    agent = registry.create("bam", EnvSpec(2, 2, horizon=1), config, seed=0)
    for _ in range(150):
        agent.update(buffer.sample(batch_size))
    obs = torch.zeros(4000, 2)
    acted = agent.act(obs).mean(0)
    behaviour = sample_actions(agent.base_flow, obs, torch.randn(4000, 2), N).mean(0)
    grid = torch.linspace(-1, 1, 20001)[:, None]
    weights = torch.exp(-(tau / N) * (grid - torch.from_numpy(BEST_ACTION)) ** 2)
    tilted = (grid * weights).sum(0) / weights.sum(0)
    torch.testing.assert_close(tilted, torch.tensor([0.414, -0.262]), atol=1e-3, rtol=0)
    assert (acted - tilted).abs().max() < 0.06, (acted, tilted)
    assert behaviour.abs().max() < 0.06, behaviour
