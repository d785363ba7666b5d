"""FBRAC: the backprop-through-time flow baseline of the QAM paper.

One flow v_theta trained with behaviour cloning plus the critic's value at the ODE's action, the
Q gradient flowing back through all N Euler steps ("direct backprop through the denoising chain",
the thing QAM avoids):

    L_actor = L_BC(v_theta) + (1 / alpha) * (- mean_k Q_k(s, clip(ODE_theta(s, z))))

The critic is frozen in the actor term; the ODE output is clipped as on the acting path (the clip
passes gradient inside the box). Adam without gradient clipping. Acts, and makes its TD next
actions, with clip(ODE_theta(s, z)).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import values
from algorithms.base import Agent, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.flow import euler_ode, flow_matching_loss, sample_actions
from algorithms.nets import VelocityField
from algorithms.registry import register


@dataclass
class FBRACConfig(BaseConfig):
    VALID = {"alpha": values.POSITIVE}  # the Q term is divided by alpha

    alpha: float = 0.1  # the Q term is scaled by 1 / alpha; per-domain values come from the suite
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


@register
class FBRAC(Agent):
    """Flow policy trained by backpropagating the critic through every Euler step of its ODE."""

    name = "fbrac"
    Config = FBRACConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: FBRACConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim = spec.obs_dim, spec.chunk_dim
        self.critic = EnsembleCritic(
            obs_dim, chunk_dim, config.hidden_dims, config.num_critics, stack=self.stack
        )
        self.target_critic = copy.deepcopy(self.critic)
        self.flow = VelocityField(obs_dim, chunk_dim, config.hidden_dims, stack=self.stack)
        self.setup_optimizer(
            [*self.critic.parameters(), *self.flow.parameters()],
            lr=config.lr,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]
        noise_shape = (*obs.shape[:-1], spec.chunk_dim)

        with torch.no_grad():
            next_obs = batch.next_observations[..., -1, :]
            next_actions = sample_actions(self.flow, next_obs, self.randn(*noise_shape), config.flow_steps)
            next_value = pessimistic_value(self.target_critic(next_obs, next_actions), config.rho)
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)

        loss_bc = flow_matching_loss(self.flow, obs, actions, valid, self.generator)
        # The whole Euler chain stays in the graph: d Q / d theta sums over all N steps.
        policy_actions = euler_ode(self.flow, obs, self.randn(*noise_shape), config.flow_steps)
        q_policy = self.critic(obs, policy_actions.clamp(-1.0, 1.0), frozen=True).mean(-2).mean(-1)
        loss_q = -q_policy / config.alpha

        loss = loss_critic + loss_bc + loss_q
        return loss, {
            "critic_loss": loss_critic,
            "q_data": qs.mean((-2, -1)),
            "bc_loss": loss_bc,
            "q_policy": q_policy,
        }

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim, generator=self.act_generator)
        return sample_actions(self.flow, obs, noise, self.config.flow_steps)
