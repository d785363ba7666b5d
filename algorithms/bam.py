"""BAM: basic adjoint matching, the QAM paper's backprop-through-the-SDE baseline.

BAM is QAM (algorithms/qam.py) with one step changed: the fine-tuned flow's loss, QAM's steps 1-4
(the method `adjoint_matching`). The critic, its chunked TD target, the base flow's behaviour
cloning, the Polyak targets of the critic and of v_b, the single Adam step with the global gradient
norm clipped to 1 and the acting policy (the Euler ODE of v_f, of v_b when tau = 0) are QAM's.
Where QAM regresses v_f onto the lean adjoint, BAM minimises the stochastic-optimal-control
objective of the memoryless SDE directly, backpropagating through every step of the SDE. That
gradient is the discrete basic adjoint: it runs backward through the Jacobian of the fine-tuned
drift (QAM's lean adjoint uses the base's), through the last, plain ODE step of v_b', and through
the running cost. Per update, with N flow steps, h = 1 / N, t_k = k h and
sigma_k = sqrt(2 (1 - t_k + h) / (t_k + h)):

    1. x_{k+1} = x_k + h (2 v_f(s, x_k, t_k) - x_k / (t_k + h)) + sqrt(h) sigma_k eps_k  (k < N - 1),
       x_N = x_{N-1} + h v_b'(s, x_{N-1}, t_{N-1})                    (with gradient, unlike QAM)
    2. Qbar(s, x_N) = mean_k Q_k(s, x_N) - rho std_k Q_k(s, x_N)       (online critic, frozen, no clip)
    3. C = sum_{k < N-1} (2 / sigma_k^2) || v_f(s, x_k, t_k) - v_b'(s, x_k, t_k) ||^2
    4. L_BAM = mean over the batch of [- tau Qbar(s, x_N) + C], differentiated through steps 1-3

The running cost C is the Girsanov KL of the SDE divided by h (the reference omits the factor h), so
the objective's optimum is the tilt pi_b exp(tau Q / N), not pi_b exp(tau Q). Total loss = critic +
BC(v_b) + L_BAM. The numbers are the comments in `basic_adjoint_objective`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from algorithms import values
from algorithms.base import BaseConfig
from algorithms.critic import pessimistic_value
from algorithms.flow import Velocity, memoryless_sde, memoryless_sigmas
from algorithms.qam import QAM
from algorithms.registry import register


@dataclass
class BAMConfig(BaseConfig):
    VALID = {"inv_temp": values.NON_NEGATIVE}

    inv_temp: float = 0.3  # tau of -tau Qbar(s, x_N); per-domain values come from the suite
    target_base: bool = True  # v_b' (the Polyak target) in the SDE's last step and the cost (else v_b)
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target and of step 2: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    max_grad_norm: float = 1.0  # global over every network (per seed)
    flow_steps: int = 10
    batch_size: int = 256
    # QAM's switches, fixed: class attributes that QAM reads, not config keys.
    fql_alpha: ClassVar[float] = 0.0
    edit_scale: ClassVar[float] = 0.0
    clip_grad: ClassVar[bool] = True  # always clipped: the reference's BAM has no switch


def basic_adjoint_objective(
    fine: Velocity,
    base: Velocity,
    value: Callable[[Tensor], Tensor],
    x0: Tensor,
    noise: Tensor,
    steps: int,
    inv_temp: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps 1-4 for one batch: (-tau value(x_N) + C, value(x_N), C), each shaped like x0 without its
    last dim, with the autograd graph through the whole SDE (run it with gradient enabled).

    `noise` holds the N - 1 draws eps_k shaped like x0; `value` maps terminal actions to Qbar."""
    sigmas = memoryless_sigmas(steps)
    visited: list[tuple[Tensor, float, Tensor]] = []

    def recorded_fine(x: Tensor, t: float) -> Tensor:  # keeps (x_k, t_k, v_f) for the running cost
        velocity = fine(x, t)
        visited.append((x, t, velocity))
        return velocity

    # 1. The forward SDE, here with its graph (QAM runs it without).
    states = memoryless_sde(recorded_fine, base, x0, noise, steps)
    # 3. The running cost at the N - 1 SDE steps (the last, ODE step has none).
    cost = sum(
        (2 / sigmas[k] ** 2) * (velocity - base(x, t)).pow(2).sum(-1)
        for k, (x, t, velocity) in enumerate(visited)
    )
    terminal_value = value(states[-1])  # 2.
    # 4. Per sample; the caller averages over the batch.
    return -inv_temp * terminal_value + cost, terminal_value, cost


@register
class BAM(QAM):
    """Basic adjoint matching: a flow fine-tuned by backpropagating -tau Q + KL through its memoryless SDE."""

    name = "bam"
    Config = BAMConfig  # type: ignore[assignment]

    def adjoint_matching(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Steps 1-4: the BAM loss (*S,), the only loss on v_f (QAM's loss() adds critic and BC)."""
        config = self.config
        steps, chunk_dim = config.flow_steps, self.spec.chunk_dim
        base_net = self.target_base_flow if config.target_base else self.base_flow

        def fine(x: Tensor, t: float) -> Tensor:
            return self.fine_flow(obs, x, t)

        def base(x: Tensor, t: float) -> Tensor:
            return base_net(obs, x, t, frozen=True)

        def value(actions: Tensor) -> Tensor:
            return pessimistic_value(self.critic(obs, actions, frozen=True), config.rho)

        # The same draws as QAM's forward pass: x_0, then (N - 1, *S, B, D) drawn stack-first.
        x0 = self.randn(*obs.shape[:-1], chunk_dim)
        n_stack = len(self.stack)
        eps = self.randn(*obs.shape[:n_stack], steps - 1, *obs.shape[n_stack:-1], chunk_dim)
        eps = eps.movedim(n_stack, 0)
        loss, q_sde, cost = basic_adjoint_objective(fine, base, value, x0, eps, steps, config.inv_temp)
        return loss.mean(-1), {
            "bam_loss": loss.detach().mean(-1),
            "kl_cost": cost.detach().mean(-1),
            "q_sde": q_sde.detach().mean(-1),
        }
