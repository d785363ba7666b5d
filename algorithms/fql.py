"""FQL: Flow Q-Learning (Park et al., 2025), under the QAM paper's shared protocol.

Two actors: a behaviour-cloning flow v_b and a one-step policy mu(s, z). mu is distilled from
the flow's ODE and maximises the critic:

    L_actor = L_BC(v_b) + alpha * MSE(mu(s, z), clip(ODE_b(s, z))) - mean_k Q_k(s, clip(mu(s, z)))

The agent acts, and makes its TD next actions, with clip(mu(s, z)).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import values
from algorithms.base import Agent, BaseConfig, Batch
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.flow import flow_matching_loss, sample_actions
from algorithms.nets import MLP, VelocityField
from algorithms.registry import register


@dataclass
class FQLConfig(BaseConfig):
    VALID = {"alpha": values.NON_NEGATIVE}

    alpha: float = 10.0  # distillation weight; per-domain values come from the suite
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


@register
class FQL(Agent):
    """Flow Q-Learning: a BC flow distilled into a one-step policy that maximises Q."""

    name = "fql"
    Config = FQLConfig

    def __init__(self, spec, config: FQLConfig, *, device="cpu", seed=0) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim = spec.obs_dim, spec.chunk_dim
        self.critic = EnsembleCritic(
            obs_dim, chunk_dim, config.hidden_dims, config.num_critics, stack=self.stack
        )
        self.target_critic = copy.deepcopy(self.critic)
        self.flow = VelocityField(obs_dim, chunk_dim, config.hidden_dims, stack=self.stack)
        self.one_step = MLP(obs_dim + chunk_dim, chunk_dim, config.hidden_dims, stack=self.stack)
        self.setup_optimizer(
            [*self.critic.parameters(), *self.flow.parameters(), *self.one_step.parameters()],
            lr=config.lr,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    def one_step_actions(self, obs: Tensor, noise: Tensor) -> Tensor:
        """mu(s, z), not clipped."""
        return self.one_step(torch.cat([obs, noise], dim=-1))

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]
        noise_shape = (*obs.shape[:-1], spec.chunk_dim)

        with torch.no_grad():
            next_obs = batch.next_observations[..., -1, :]
            next_actions = self.one_step_actions(next_obs, self.randn(*noise_shape)).clamp(-1, 1)
            next_value = pessimistic_value(self.target_critic(next_obs, next_actions), config.rho)
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)

        loss_bc = flow_matching_loss(self.flow, obs, actions, valid, self.generator)
        noise = self.randn(*noise_shape)
        with torch.no_grad():
            ode_actions = sample_actions(self.flow, obs, noise, config.flow_steps)
        policy_actions = self.one_step_actions(obs, noise)
        loss_distill = (policy_actions - ode_actions).pow(2).mean((-2, -1))
        q_policy = self.critic(obs, policy_actions.clamp(-1, 1), frozen=True).mean(-2)
        loss_q = -q_policy.mean(-1)

        loss = loss_critic + loss_bc + config.alpha * loss_distill + loss_q
        return loss, {
            "critic_loss": loss_critic,
            "q_data": qs.mean((-2, -1)),
            "bc_loss": loss_bc,
            "distill_loss": loss_distill,
            "q_policy": q_policy.mean(-1),
        }

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim, generator=self.act_generator)
        return self.one_step_actions(obs, noise).clamp(-1, 1)
