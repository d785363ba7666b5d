"""The adjoint-matching pieces of QAM against closed-form answers (docs/methods/qam.md, "QAM", steps 1-4)."""

import math

import pytest
import torch
from torch import nn

from algorithms import registry
from algorithms.base import EnvSpec
from algorithms.flow import adjoint_matching_loss, lean_adjoint, memoryless_sde, memoryless_sigmas

N = 10
H = 1 / N
D = 3
A = torch.tensor([[0.3, -0.5, 0.1], [0.2, -0.4, 0.6], [-0.7, 0.1, 0.2]], dtype=torch.float64)
B_VEC = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
W_SIN = torch.tensor([0.8, -0.3, 1.2], dtype=torch.float64)


def linear_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """v(x, t) = (1 + t) A x + t b: Jacobian (1 + t) A, the same at every x."""
    return (1 + t) * x @ A.T + t * B_VEC


def nonlinear_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """v(x, t) = (1 + t) A x + t b + w * sin(x): Jacobian (1 + t) A + diag(w cos x)."""
    return linear_velocity(x, t) + W_SIN * torch.sin(x)


def fine_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.tanh(x) - t * x


def forward_states(batch: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, D, generator=g, dtype=torch.float64)
    noise = torch.randn(N - 1, batch, D, generator=g, dtype=torch.float64)
    return memoryless_sde(fine_velocity, linear_velocity, x0, noise, N)


def test_memoryless_sigmas_and_forward_steps_follow_the_formulas():
    sigmas = memoryless_sigmas(N)
    assert len(sigmas) == N
    assert math.isclose(sigmas[0], math.sqrt(2 * 1.1 / 0.1))  # finite at t = 0 thanks to the shift
    assert math.isclose(sigmas[-1], math.sqrt(2 * 0.2 / 1.0))
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, D, generator=g, dtype=torch.float64)
    noise = torch.randn(N - 1, 5, D, generator=g, dtype=torch.float64)
    states = memoryless_sde(fine_velocity, linear_velocity, x0, noise, N)
    assert len(states) == N + 1 and states[0] is x0
    for k in range(N - 1):
        t = k * H
        drift = 2 * fine_velocity(states[k], t) - states[k] / (t + H)
        expected = states[k] + H * drift + math.sqrt(H) * sigmas[k] * noise[k]
        torch.testing.assert_close(states[k + 1], expected)
    # the last step is a plain Euler step of the base velocity, with no noise
    torch.testing.assert_close(states[N], states[N - 1] + H * linear_velocity(states[N - 1], (N - 1) * H))


def test_lean_adjoint_of_a_linear_velocity_equals_the_closed_form_product():
    """For v = (1 + t) A x + t b the backward recursion is linear with state-independent matrices:
    abar_k^T = abar_N^T M_{N-1} M_{N-2} ... M_k with M_j = I + h (2 (1 + t_j + h) A - I / (t_j + h))."""
    states = forward_states()
    center = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
    precision = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]], dtype=torch.float64)
    tau = 1.7
    # Q(a) = -1/2 (a - c)^T P (a - c): grad Q = -P (a - c), so abar_N = tau P (x_N - c)
    terminal = tau * (states[N] - center) @ precision.T
    adjoints = lean_adjoint(linear_velocity, states, terminal, N)
    assert len(adjoints) == N + 1
    eye = torch.eye(D, dtype=torch.float64)
    for k in range(N + 1):
        product = eye
        for j in reversed(range(k, N)):
            t = j * H
            product = product @ (eye + H * (2 * (1 + t + H) * A - eye / (t + H)))
        expected = terminal @ product  # rows of the batch are the abar^T
        torch.testing.assert_close(adjoints[k], expected, rtol=1e-10, atol=1e-10)
        assert not adjoints[k].requires_grad


def test_lean_adjoint_evaluates_the_jacobian_at_x_k_and_time_t_k_plus_h():
    states = forward_states(seed=1)
    terminal = torch.randn(states[0].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    adjoints = lean_adjoint(nonlinear_velocity, states, terminal, N)
    eye = torch.eye(D, dtype=torch.float64)
    a = terminal
    for k in reversed(range(N)):
        t = k * H
        # per-sample Jacobian of g_k(x) = 2 v(x, t_k + h) - x / (t_k + h) at x = x_k
        jac = 2 * ((1 + t + H) * A + torch.diag_embed(W_SIN * torch.cos(states[k]))) - eye / (t + H)
        a = a + H * torch.einsum("bi,bij->bj", a, jac)
        torch.testing.assert_close(adjoints[k], a, rtol=1e-10, atol=1e-10)


class LinearVelocityField(nn.Module):
    """A VelocityField stand-in: v(s, x, t) = (1 + t) A x + t b (float32, ignores s)."""

    def forward(self, obs, x, t, frozen=False):
        if not isinstance(t, torch.Tensor):
            t = torch.full((*x.shape[:-1], 1), float(t))
        return (1 + t) * (x @ A.T.float()) + t * B_VEC.float()


class QuadraticCritic(nn.Module):
    """An EnsembleCritic stand-in: Q_k(s, a) = -w_k / 2 ||a - c||^2, shape (K, B)."""

    def __init__(self, center: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        self.center, self.weights = center, weights

    def forward(self, obs, actions, frozen=False):
        return -0.5 * self.weights[:, None] * (actions - self.center).pow(2).sum(-1)


@pytest.mark.parametrize("targets, clip", [(True, True), (False, False)])
def test_qam_adjoint_loss_equals_a_hand_computation(targets, clip):
    """The agent's steps 1-4 with the base flow and critic (the targets by default, the online
    networks with adjoint_targets=False) swapped for closed forms: the loss equals a direct
    transcription of ALGORITHMS.md, including tau, the clip before the critic (zero gradient
    outside the box) and the mean over critic members."""
    tau, batch = 2.5, 128
    overrides = {"inv_temp": tau, "adjoint_targets": targets, "clip_terminal": clip}
    config = registry.make_config("qam", {"hidden_dims": (32, 32), "num_critics": 2, **overrides})
    agent = registry.create("qam", EnvSpec(obs_dim=2, action_dim=D, horizon=1), config, seed=0)
    center = torch.tensor([0.9, -0.2, 0.0])
    weights = torch.tensor([1.0, 3.0])
    prefix = "target_" if targets else ""
    setattr(agent, prefix + "base_flow", LinearVelocityField())
    setattr(agent, prefix + "critic", QuadraticCritic(center, weights))
    obs = torch.randn(batch, 2, generator=torch.Generator().manual_seed(5))

    state = agent.generator.get_state()
    loss, metrics = agent.adjoint_matching(obs)

    g = torch.Generator().set_state(state)
    x0 = torch.randn(batch, D, generator=g)
    eps = torch.randn(N - 1, batch, D, generator=g)
    sigmas = [math.sqrt(2 * (1 - k * H + H) / (k * H + H)) for k in range(N)]
    base = LinearVelocityField()
    with torch.no_grad():
        xs = [x0]
        for k in range(N - 1):
            t = k / N
            v = agent.fine_flow(obs, xs[k], t)
            xs.append(xs[k] + H * (2 * v - xs[k] / (t + H)) + math.sqrt(H) * sigmas[k] * eps[k])
        x_final = xs[-1] + H * base(obs, xs[-1], (N - 1) / N)
        inside = (x_final.abs() <= 1).float()
        assert 0 < inside.mean() < 1  # some coordinates are outside the box, so the clip matters
        terminal_action = x_final.clamp(-1, 1) if clip else x_final
        grad_q = -weights.mean() * (terminal_action - center) * (inside if clip else 1)
        a = -tau * grad_q
        adjoints = [a]
        for k in reversed(range(N)):
            t = k / N
            a = a + H * a @ (2 * (1 + t + H) * A.float() - torch.eye(D) / (t + H))
            adjoints.insert(0, a)
        expected = torch.zeros(batch)
        for k in range(N):
            t = k / N
            diff = agent.fine_flow(obs, xs[k], t) - base(obs, xs[k], t)
            expected += ((2 / sigmas[k]) * diff + sigmas[k] * adjoints[k]).pow(2).sum(-1)
    torch.testing.assert_close(loss, expected.mean(), rtol=2e-4, atol=1e-4)
    torch.testing.assert_close(metrics["adjoint_loss"], expected.mean(), rtol=2e-4, atol=1e-4)
    q_final = -0.5 * weights.mean() * (terminal_action - center).pow(2).sum(-1)
    torch.testing.assert_close(metrics["q_sde"], q_final.mean())


def test_adjoint_matching_loss_reduction():
    """sum over steps and action dims, per sample; the step axis is third from the end."""
    g = torch.Generator().manual_seed(0)
    fine, base, adjoints = (torch.randn(2, N, 7, 4, generator=g) for _ in range(3))
    got = adjoint_matching_loss(fine, base, adjoints, N)
    assert got.shape == (2, 7)
    sigmas = memoryless_sigmas(N)
    expected = sum(
        ((2 / sigmas[k]) * (fine[:, k] - base[:, k]) + sigmas[k] * adjoints[:, k]).pow(2).sum(-1)
        for k in range(N)
    )
    torch.testing.assert_close(got, expected)
