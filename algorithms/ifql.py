"""IFQL: implicit flow Q-learning, the flow version of IDQL (an IQL critic plus a behaviour flow
that proposes candidate actions), the QAM paper's baseline, under the shared protocol.

Training has no RL term on the actor. Per update, with kappa the expectile:

    1. qbar = (mean_k - rho std_k) Q'_k(s, a)                      (target critic, dataset chunk)
       L_V = mean over the batch of |kappa - 1(qbar - V(s) < 0)| (qbar - V(s))^2
    2. y = R_H + gamma^H m_H V(s_{t+H})                           (online V, no gradient)
       L_Q = mean over k and the batch of valid * (Q_k(s, a) - y)^2
    3. L_BC = flow matching of v on the dataset chunks

Total loss = L_V + L_Q + L_BC, one Adam step, no gradient clipping; Polyak target of the critic.

Acting (best of N): draw N = `num_samples` chunks a_1..a_N = clip(ODE_v(s, z_i)) and return the
one with the highest min_k Q_k(s, a_i) (online critic, minimum over the whole ensemble).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import values
from algorithms.base import Agent, BaseConfig, Batch, EnvSpec
from algorithms.critic import (
    EnsembleCritic,
    chunked_td_target,
    critic_loss,
    expectile_loss,
    pessimistic_value,
)
from algorithms.flow import flow_matching_loss, sample_actions
from algorithms.nets import MLP, VelocityField
from algorithms.registry import register


@dataclass
class IFQLConfig(BaseConfig):
    VALID = {"kappa": values.PROBABILITY, "num_samples": values.COUNT}

    kappa: float = 0.9  # IQL expectile of the value regression; per-domain values from the suite
    num_samples: int = 32  # candidate chunks per state when acting
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the value target: mean - rho * std over the target ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


@register
class IFQL(Agent):
    """Implicit flow Q-learning: an IQL critic picks the best of N chunks from a BC flow."""

    name = "ifql"
    Config = IFQLConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: IFQLConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.value = MLP(obs_dim, 1, hidden, stack=self.stack, layer_norm=True)
        self.critic = EnsembleCritic(obs_dim, chunk_dim, hidden, config.num_critics, stack=self.stack)
        self.target_critic = copy.deepcopy(self.critic)
        self.flow = VelocityField(obs_dim, chunk_dim, hidden, stack=self.stack)
        self.setup_optimizer(
            [*self.value.parameters(), *self.critic.parameters(), *self.flow.parameters()],
            lr=config.lr,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    def state_value(self, obs: Tensor) -> Tensor:
        """V(s): (*S, B, obs) -> (*S, B)."""
        return self.value(obs).squeeze(-1)

    def value_loss(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Step 1: the expectile loss of V toward the pessimistic target critic, (*S,), and V (*S, B)."""
        with torch.no_grad():
            target = pessimistic_value(self.target_critic(obs, actions), self.config.rho)
        values = self.state_value(obs)
        return expectile_loss(target - values, self.config.kappa).mean(-1), values

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        spec = self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        loss_value, values = self.value_loss(obs, actions)  # 1.
        with torch.no_grad():  # 2.
            next_value = self.state_value(batch.next_observations[..., -1, :])
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)
        loss_bc = flow_matching_loss(self.flow, obs, actions, valid, self.generator)  # 3.

        loss = loss_value + loss_critic + loss_bc
        return loss, {
            "value_loss": loss_value,
            "critic_loss": loss_critic,
            "bc_loss": loss_bc,
            "q_data": qs.mean((-2, -1)),
            "v_data": values.mean(-1),
        }

    # --- acting: best of N flow samples -------------------------------------------------
    def candidates(self, obs: Tensor, noise: Tensor) -> Tensor:
        """clip(ODE_v(s, z_i)) for noise (*S, B, N, D) -> (*S, B, N, D)."""
        n = noise.shape[-2]
        flat_obs = obs.unsqueeze(-2).expand(*obs.shape[:-1], n, obs.shape[-1]).flatten(-3, -2)
        flat = sample_actions(self.flow, flat_obs, noise.flatten(-3, -2), self.config.flow_steps)
        return flat.unflatten(-2, (obs.shape[-2], n))

    def select(self, obs: Tensor, candidates: Tensor) -> Tensor:
        """The candidate (*S, B, N, D) with the highest min_k Q_k(s, a_i) for each state -> (*S, B, D)."""
        n = candidates.shape[-2]
        flat_obs = obs.unsqueeze(-2).expand(*obs.shape[:-1], n, obs.shape[-1]).flatten(-3, -2)
        qs = self.critic(flat_obs, candidates.flatten(-3, -2))  # (*S, K, B * N)
        scores = qs.min(-2).values.unflatten(-1, (obs.shape[-2], n))  # (*S, B, N)
        best = scores.argmax(-1)[..., None, None].expand(*scores.shape[:-1], 1, candidates.shape[-1])
        return candidates.gather(-2, best).squeeze(-2)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        shape = (*obs.shape[:-1], self.config.num_samples, self.spec.chunk_dim)
        noise = self.randn(*shape, generator=self.act_generator)
        return self.select(obs, self.candidates(obs, noise))
