"""Flow-matching pieces shared by the flow methods (docs/methods/qam.md, "Flow basics"), and the generic
parts of adjoint matching: the memoryless SDE forward pass and the lean adjoint (docs/methods/qam.md, "QAM")."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from algorithms.base import AnyGenerator, rand, randn
from algorithms.nets import VelocityField


def flow_matching_loss(
    velocity: VelocityField, obs: Tensor, x1: Tensor, valid_last: Tensor, generator: AnyGenerator
) -> Tensor:
    """Behaviour cloning on the linear path x_t = (1 - t) x_0 + t x_1.

    Squared error of v(s, x_t, t) against x_1 - x_0, averaged over action dims, times `valid`
    of the last chunk step, averaged over the batch (divided by B, not by the sum of valid).
    Shapes: obs (*S, B, obs), x1 (*S, B, D), valid_last (*S, B) -> loss (*S,). With stacked
    seeds `generator` is their GeneratorStack."""
    x0 = randn(x1.shape, generator, x1.device)
    t = rand((*x1.shape[:-1], 1), generator, x1.device)
    x_t = (1 - t) * x0 + t * x1
    error = (velocity(obs, x_t, t) - (x1 - x0)).pow(2).mean(-1)
    return (error * valid_last).mean(-1)


def grid_flow_matching_loss(
    velocity: VelocityField, obs: Tensor, x1: Tensor, steps: int, generator: AnyGenerator
) -> Tensor:
    """Behaviour cloning on the same linear path with the QGF reference's two choices: t drawn
    uniformly from the N + 1 grid times {0, 1/N, ..., 1} (both ends included), and a plain mean of
    the squared error over batch and action dims (no `valid` weight).
    Shapes: obs (*S, B, obs), x1 (*S, B, D) -> loss (*S,)."""
    x0 = randn(x1.shape, generator, x1.device)
    u = rand((*x1.shape[:-1], 1), generator, x1.device)
    # floor(u (N + 1)) is uniform on {0, ..., N}; the clamp guards u (N + 1) rounding up to N + 1.
    t = torch.floor(u * (steps + 1)).clamp_(max=steps) / steps
    x_t = (1 - t) * x0 + t * x1
    return (velocity(obs, x_t, t) - (x1 - x0)).pow(2).mean((-2, -1))


def euler_ode(
    velocity: VelocityField, obs: Tensor, noise: Tensor, steps: int, frozen: bool = False
) -> Tensor:
    """N Euler steps x <- x + v(s, x, k/N) / N from x_0 = noise; not clipped."""
    x = noise
    for k in range(steps):
        x = x + velocity(obs, x, k / steps, frozen) / steps
    return x


def sample_actions(velocity: VelocityField, obs: Tensor, noise: Tensor, steps: int) -> Tensor:
    """The flow policy's action: the Euler ODE from noise, clipped to [-1, 1]."""
    return euler_ode(velocity, obs, noise, steps).clamp(-1.0, 1.0)


# --- adjoint matching (docs/methods/qam.md, "QAM") ------------------------------------------------
# A velocity callable maps (x, t) to v(x, t) for one fixed batch of observations, e.g.
# `lambda x, t: flow(obs, x, t)`; tests drive the functions below with analytic velocities.
Velocity = Callable[[Tensor, float], Tensor]


def memoryless_sigmas(steps: int) -> list[float]:
    """sigma_k = sqrt(2 (1 - t_k + h) / (t_k + h)) with t_k = k h, h = 1 / N, for k = 0..N-1: the
    memoryless noise schedule of the linear path, shifted by h so that it is finite at t = 0."""
    h = 1.0 / steps
    return [math.sqrt(2 * (1 - k / steps + h) / ((k + 1) / steps)) for k in range(steps)]


def memoryless_sde(fine: Velocity, base: Velocity, x0: Tensor, noise: Tensor, steps: int) -> list[Tensor]:
    """The forward pass of adjoint matching: states x_0..x_N (a list of N + 1 tensors).

    For k = 0..N-2: x_{k+1} = x_k + h (2 v_f(x_k, t_k) - x_k / (t_k + h)) + sqrt(h) sigma_k eps_k,
    with eps_k = noise[k] (noise holds N - 1 draws shaped like x0). The last step is a plain Euler
    step with the base velocity: x_N = x_{N-1} + h v_b(x_{N-1}, t_{N-1}). Run it without gradient."""
    h = 1.0 / steps
    sigmas = memoryless_sigmas(steps)
    states = [x0]
    x = x0
    for k in range(steps - 1):
        t = k / steps
        x = x + h * (2 * fine(x, t) - x / (t + h)) + math.sqrt(h) * sigmas[k] * noise[k]
        states.append(x)
    states.append(x + h * base(x, (steps - 1) / steps))
    return states


def lean_adjoint(base: Velocity, states: Sequence[Tensor], terminal: Tensor, steps: int) -> list[Tensor]:
    """The lean adjoint, backward: abar_0..abar_N (a list of N + 1 tensors), abar_N = `terminal`.

    abar_k = abar_{k+1} + h (abar_{k+1}^T dg_k/dx)(x_k) with g_k(x) = 2 v_b(x, t_k + h) - x / (t_k + h),
    one vector-Jacobian product of the base velocity per step. The result carries no autograd graph
    (the base's parameters get no gradient from it)."""
    h = 1.0 / steps
    adjoints = [terminal.detach()]
    a = adjoints[0]
    for k in reversed(range(steps)):
        t_next = (k + 1) / steps  # t_k + h
        with torch.enable_grad():
            x = states[k].detach().requires_grad_(True)
            (vjp,) = torch.autograd.grad(base(x, t_next), x, grad_outputs=a)
        a = a + h * (2 * vjp - a / t_next)
        adjoints.append(a)
    return adjoints[::-1]


@functools.lru_cache(maxsize=16)
def _sigma_tensor(steps: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """memoryless_sigmas as an (N, 1, 1) tensor, made once per device (building it from a list
    every update would copy from the host, a synchronisation on a GPU)."""
    return torch.tensor(memoryless_sigmas(steps), dtype=dtype, device=device).reshape(steps, 1, 1)


def adjoint_matching_loss(
    fine_velocity: Tensor, base_velocity: Tensor, adjoints: Tensor, steps: int
) -> Tensor:
    """sum_k || (2 / sigma_k) (v_f(x_k, t_k) - v_b(x_k, t_k)) + sigma_k abar_k ||^2 over the N steps
    and the action dims. Inputs (*S, N, B, D) with the step axis third from the end -> (*S, B)."""
    sigmas = _sigma_tensor(steps, adjoints.dtype, adjoints.device)
    residual = (2 / sigmas) * (fine_velocity - base_velocity) + sigmas * adjoints
    return residual.pow(2).sum((-3, -1))
