"""QAM: Q-learning with Adjoint Matching (Li & Levine), and its variants QAM-FQL and QAM-EDIT.

Target policy pi*(a|s) proportional to pi_b(a|s) exp(tau Q(s, a)), tau = `inv_temp`. A base flow v_b
is trained by behaviour cloning (with a Polyak target v_b'); a fine-tuned flow v_f is regressed onto
the lean adjoint of the memoryless SDE, with no gradient through the sampling chain. Per update,
with N flow steps, h = 1 / N, t_k = k h and sigma_k = sqrt(2 (1 - t_k + h) / (t_k + h)):

    1. x_{k+1} = x_k + h (2 v_f(s, x_k, t_k) - x_k / (t_k + h)) + sqrt(h) sigma_k eps_k  (k < N - 1),
       x_N = x_{N-1} + h v_b'(s, x_{N-1}, t_{N-1})                                  (no gradient)
    2. abar_N = -tau grad_a mean_k Q'_k(s, clip(x_N))
    3. abar_k = abar_{k+1} + h abar_{k+1}^T d/dx [2 v_b'(s, x, t_k + h) - x / (t_k + h)] (x_k)
    4. L_AM = sum_k || (2 / sigma_k) (v_f(s, x_k, t_k) - v_b'(s, x_k, t_k)) + sigma_k abar_k ||^2

Total loss = critic + BC(v_b) + L_AM, one Adam step with the global gradient norm clipped to 1
(`clip_grad=False`: not clipped).
The agent acts with the Euler ODE of v_f (of v_b when tau = 0).

QAM-FQL (`fql_alpha` > 0) adds a one-step policy mu(s, z) distilled from clip(ODE_f(s, z)) with the
FQL loss, fql_alpha * MSE - mean_k Q_k(s, clip(mu)), and acts with clip(mu). QAM-EDIT (`edit_scale`
> 0) adds a tanh-Gaussian edit policy on [s, a_flow] and acts with clip(a_flow + edit_scale * delta);
its loss is -Q(s, edited) + alpha_e log pi(delta), alpha_e tuned toward entropy -0.5 * H * |A|.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from algorithms import values
from algorithms.base import Agent, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.flow import (
    adjoint_matching_loss,
    flow_matching_loss,
    lean_adjoint,
    memoryless_sde,
    sample_actions,
)
from algorithms.nets import MLP, TanhGaussian, VelocityField
from algorithms.registry import RegistryError, register


@dataclass
class QAMConfig(BaseConfig):
    VALID = {
        "inv_temp": values.NON_NEGATIVE,
        "fql_alpha": values.NON_NEGATIVE,
        "edit_scale": values.NON_NEGATIVE,
    }

    inv_temp: float = 0.3  # tau of pi_b exp(tau Q); per-domain values come from the suite
    fql_alpha: float = 0.0  # > 0: QAM-FQL, a one-step policy distilled with this weight
    edit_scale: float = 0.0  # > 0: QAM-EDIT, actions edited by edit_scale * delta
    clip_terminal: bool = True  # clip x_N to [-1, 1] before the critic's action gradient
    adjoint_targets: bool = True  # target critic and target base flow in the adjoint (else online)
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    max_grad_norm: float = 1.0  # global over every network (per seed)
    clip_grad: bool = True  # False: no gradient clipping (the reference's agent.clip_grad=False)
    flow_steps: int = 10
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.fql_alpha > 0 and self.edit_scale > 0:
            raise RegistryError(
                f"QAM-FQL (fql_alpha={self.fql_alpha:g}) and QAM-EDIT (edit_scale={self.edit_scale:g}) "
                "cannot be combined: set one of fql_alpha and edit_scale to 0"
            )


# Preset defaults, each a row of the per-domain table (docs/methods/qam.md): QAM-FQL at cube-quadruple's
# (inv_temp 0.3, fql_alpha 30), QAM-EDIT at the most common row (inv_temp 3, edit_scale 0.1).
PRESETS = {
    "qam-fql": {"inv_temp": 0.3, "fql_alpha": 30.0},
    "qam-edit": {"inv_temp": 3.0, "edit_scale": 0.1},
}


@register(presets=PRESETS)
class QAM(Agent):
    """Q-learning with Adjoint Matching: a flow fine-tuned toward pi_b exp(tau Q) by the lean adjoint."""

    name = "qam"
    Config = QAMConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: QAMConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.critic = EnsembleCritic(obs_dim, chunk_dim, hidden, config.num_critics, stack=self.stack)
        self.target_critic = copy.deepcopy(self.critic)
        self.base_flow = VelocityField(obs_dim, chunk_dim, hidden, stack=self.stack)  # v_b
        self.target_base_flow = copy.deepcopy(self.base_flow)  # v_b'
        self.fine_flow = VelocityField(obs_dim, chunk_dim, hidden, stack=self.stack)  # v_f, own init
        modules: list[nn.Module] = [self.critic, self.base_flow, self.fine_flow]
        if config.fql_alpha > 0:
            self.one_step = MLP(obs_dim + chunk_dim, chunk_dim, hidden, stack=self.stack)  # mu(s, z)
            modules.append(self.one_step)
        if config.edit_scale > 0:
            self.edit_policy = TanhGaussian(obs_dim + chunk_dim, chunk_dim, hidden, stack=self.stack)
            self.log_alpha = nn.Parameter(torch.zeros(*self.stack, 1))
            self.target_entropy = -0.5 * chunk_dim
            modules.append(self.edit_policy)
        parameters = [p for module in modules for p in module.parameters()]
        if config.edit_scale > 0:
            parameters.append(self.log_alpha)
        self.setup_optimizer(
            parameters,
            lr=config.lr,
            max_grad_norm=config.max_grad_norm if config.clip_grad else None,
            targets=[(self.target_critic, self.critic), (self.target_base_flow, self.base_flow)],
            target_tau=config.target_tau,
        )

    # --- the acting policy ------------------------------------------------------------
    @property
    def acting_flow(self) -> VelocityField:
        """v_f, or v_b when inv_temp is 0 (the target is then pi_b itself)."""
        return self.fine_flow if self.config.inv_temp > 0 else self.base_flow

    def one_step_actions(self, obs: Tensor, noise: Tensor) -> Tensor:
        """QAM-FQL's mu(s, z), not clipped."""
        return self.one_step(torch.cat([obs, noise], dim=-1))

    def edit(self, obs: Tensor, flow_actions: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """QAM-EDIT: clip(a_flow + edit_scale * delta) with delta ~ the edit policy, and log pi(delta)."""
        delta, log_prob = self.edit_policy(torch.cat([obs, flow_actions], dim=-1), noise)
        return (flow_actions + self.config.edit_scale * delta).clamp(-1.0, 1.0), log_prob

    def policy_actions(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The acting policy's chunks in [-1, 1], fresh noise from `generator` (default: training)."""
        shape = (*obs.shape[:-1], self.spec.chunk_dim)
        noise = self.randn(*shape, generator=generator)
        if self.config.fql_alpha > 0:
            return self.one_step_actions(obs, noise).clamp(-1.0, 1.0)
        actions = sample_actions(self.acting_flow, obs, noise, self.config.flow_steps)
        if self.config.edit_scale > 0:
            actions, _ = self.edit(obs, actions, self.randn(*shape, generator=generator))
        return actions

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.policy_actions(obs, self.act_generator)

    # --- the update ---------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        with torch.no_grad():
            next_obs = batch.next_observations[..., -1, :]
            next_value = pessimistic_value(
                self.target_critic(next_obs, self.policy_actions(next_obs)), config.rho
            )
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)
        loss_bc = flow_matching_loss(self.base_flow, obs, actions, valid, self.generator)
        loss_adjoint, metrics = self.adjoint_matching(obs)

        loss = loss_critic + loss_bc + loss_adjoint
        metrics = {"critic_loss": loss_critic, "q_data": qs.mean((-2, -1)), "bc_loss": loss_bc, **metrics}
        if config.fql_alpha > 0:
            loss_fql, fql_metrics = self.one_step_loss(obs)
            loss = loss + loss_fql
            metrics.update(fql_metrics)
        if config.edit_scale > 0:
            loss_edit, edit_metrics = self.edit_loss(obs)
            loss = loss + loss_edit
            metrics.update(edit_metrics)
        return loss, metrics

    def adjoint_matching(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Steps 1-4 of QAM (docs/methods/qam.md): the adjoint-matching loss (*S,), the only loss on v_f."""
        config = self.config
        steps, chunk_dim = config.flow_steps, self.spec.chunk_dim
        base_net = self.target_base_flow if config.adjoint_targets else self.base_flow
        critic_net = self.target_critic if config.adjoint_targets else self.critic

        def fine(x: Tensor, t: float) -> Tensor:
            return self.fine_flow(obs, x, t)

        def base(x: Tensor, t: float) -> Tensor:
            return base_net(obs, x, t, frozen=True)

        # 1. Forward: the memoryless SDE of v_f, last step with v_b'; no gradient.
        x0 = self.randn(*obs.shape[:-1], chunk_dim)
        # (N - 1, *S, B, D), drawn stack-first so that every stacked seed draws from its own generator
        n_stack = len(self.stack)
        eps = self.randn(*obs.shape[:n_stack], steps - 1, *obs.shape[n_stack:-1], chunk_dim)
        eps = eps.movedim(n_stack, 0)
        with torch.no_grad():
            states = memoryless_sde(fine, base, x0, eps, steps)
        # 2. Terminal adjoint from the target critic's mean, at the clipped action.
        with torch.enable_grad():
            x_final = states[-1].detach().requires_grad_(True)
            terminal_action = x_final.clamp(-1.0, 1.0) if config.clip_terminal else x_final
            q_terminal = critic_net(obs, terminal_action, frozen=True).mean(-2)  # (*S, B)
            (q_grad,) = torch.autograd.grad(q_terminal.sum(), x_final)
        terminal = -config.inv_temp * q_grad
        # 3. Lean adjoint, backward through vector-Jacobian products of v_b'.
        adjoints = lean_adjoint(base, states, terminal, steps)
        # 4. Regression of v_f at all N steps in one batched call (step axis third from the end).
        xs = torch.stack(states[:steps], dim=-3)  # (*S, N, B, D)
        obs_steps = obs.unsqueeze(-3).expand(*obs.shape[:-2], steps, *obs.shape[-2:])
        times = torch.arange(steps, device=obs.device, dtype=obs.dtype) / steps
        times = times.reshape(steps, 1, 1).expand(*xs.shape[:-1], 1)
        fine_velocity = self.fine_flow(obs_steps, xs, times)
        with torch.no_grad():
            base_velocity = base_net(obs_steps, xs, times)
        loss = adjoint_matching_loss(fine_velocity, base_velocity, torch.stack(adjoints[:steps], -3), steps)
        return loss.mean(-1), {
            "adjoint_loss": loss.mean(-1),
            "q_sde": q_terminal.detach().mean(-1),
            "terminal_adjoint_norm": terminal.norm(dim=-1).mean(-1),
        }

    def one_step_loss(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """QAM-FQL: fql_alpha * MSE(mu(s, z), clip(ODE_f(s, z))) - mean_k Q_k(s, clip(mu(s, z)))."""
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim)
        with torch.no_grad():
            ode_actions = sample_actions(self.acting_flow, obs, noise, self.config.flow_steps)
        policy_actions = self.one_step_actions(obs, noise)
        loss_distill = (policy_actions - ode_actions).pow(2).mean((-2, -1))
        q_policy = self.critic(obs, policy_actions.clamp(-1.0, 1.0), frozen=True).mean(-2).mean(-1)
        loss = self.config.fql_alpha * loss_distill - q_policy
        return loss, {"distill_loss": loss_distill, "q_policy": q_policy}

    def edit_loss(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """QAM-EDIT: mean of -Q(s, edited) + alpha_e log pi(delta), plus the SAC-style alpha loss."""
        shape = (*obs.shape[:-1], self.spec.chunk_dim)
        with torch.no_grad():
            flow_actions = sample_actions(self.acting_flow, obs, self.randn(*shape), self.config.flow_steps)
        edited, log_prob = self.edit(obs, flow_actions, self.randn(*shape))
        q_edit = self.critic(obs, edited, frozen=True).mean(-2)  # (*S, B)
        alpha = self.log_alpha.exp()  # (*S, 1)
        loss_policy = (-q_edit + alpha.detach() * log_prob).mean(-1)
        entropy = -log_prob.detach().mean(-1)
        loss_alpha = alpha.squeeze(-1) * (entropy - self.target_entropy)
        return loss_policy + loss_alpha, {
            "edit_loss": loss_policy,
            "q_policy": q_edit.mean(-1),
            "entropy": entropy,
            "alpha": alpha.detach().squeeze(-1),
        }
