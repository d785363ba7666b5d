"""FAWAC: advantage-weighted flow matching (AWAC's actor objective on a flow policy), the QAM
paper's baseline, under the shared protocol.

A flow v is trained by behaviour cloning in which every dataset chunk counts with the weight
w = min(exp(inv_temp * A(s, a)), max_weight), so the flow learns the tilted data distribution
pi_b(a|s) w(s, a) / Z(s). The advantage comes from an ensemble critic and a state-value network
that regresses the target critic. Per update:

    1. y = R_H + gamma^H m_H (mean_k - rho std_k) Q'_k(s_{t+H}, a'),  a' = clip(ODE_v(s_{t+H}, z))
       L_Q = mean over k and the batch of valid * (Q_k(s, a) - y)^2
    2. L_V = mean over k and the batch of valid * (Q'_k(s, a) - V(s))^2
    3. A = mean_k Q_k(s, a) - V(s),  w = min(exp(inv_temp * A), max_weight)   (no gradient)
    4. L_pi = mean over the batch of w * valid * mean_d (v(s, x_t, t) - (x_1 - x_0))_d^2

Total loss = L_Q + L_V + L_pi, one Adam step, no gradient clipping; Polyak target of the critic.
The agent acts, and makes its TD next actions, with clip(ODE_v(s, z)) from fresh noise.
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
from algorithms.flow import flow_matching_loss, sample_actions
from algorithms.nets import MLP, VelocityField
from algorithms.registry import register


@dataclass
class FAWACConfig(BaseConfig):
    VALID = {"inv_temp": values.NON_NEGATIVE, "max_weight": values.POSITIVE}

    inv_temp: float = 10.0  # scale of the advantage in the weights; per-domain values from the suite
    max_weight: float = 100.0  # weights are clipped to this from above
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


@register
class FAWAC(Agent):
    """Advantage-weighted flow matching: BC on the data with weights exp(inv_temp * A), clipped."""

    name = "fawac"
    Config = FAWACConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: FAWACConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.critic = EnsembleCritic(obs_dim, chunk_dim, hidden, config.num_critics, stack=self.stack)
        self.target_critic = copy.deepcopy(self.critic)
        self.value = MLP(obs_dim, 1, hidden, stack=self.stack, layer_norm=True)
        self.flow = VelocityField(obs_dim, chunk_dim, hidden, stack=self.stack)
        self.setup_optimizer(
            [*self.critic.parameters(), *self.value.parameters(), *self.flow.parameters()],
            lr=config.lr,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    def state_value(self, obs: Tensor) -> Tensor:
        """V(s): (*S, B, obs) -> (*S, B)."""
        return self.value(obs).squeeze(-1)

    @torch.no_grad()
    def advantage_weights(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """Step 3: (w, A) at dataset chunks, each (*S, B), from the online critic and V."""
        advantage = self.critic(obs, actions).mean(-2) - self.state_value(obs)
        weights = torch.exp(self.config.inv_temp * advantage).clamp(max=self.config.max_weight)
        return weights, advantage

    def policy_actions(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """clip(ODE_v(s, z)) with fresh noise from `generator` (default: the training generator)."""
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim, generator=generator)
        return sample_actions(self.flow, obs, noise, self.config.flow_steps)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        # 1. Critic: chunked TD target from the flow's next chunk and the pessimistic target critic.
        with torch.no_grad():
            next_obs = batch.next_observations[..., -1, :]
            next_qs = self.target_critic(next_obs, self.policy_actions(next_obs))
            target = chunked_td_target(
                batch, pessimistic_value(next_qs, config.rho), spec.discount, spec.horizon
            )
            target_qs = self.target_critic(obs, actions)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)
        # 2. Value: every target-critic member at the dataset chunk is a regression target of V.
        values = self.state_value(obs)
        loss_value = critic_loss(target_qs, values, valid)
        # 3-4. Advantage weights, then weighted flow matching (the weight multiplies `valid`).
        weights, advantage = self.advantage_weights(obs, actions)
        loss_actor = flow_matching_loss(self.flow, obs, actions, weights * valid, self.generator)

        loss = loss_critic + loss_value + loss_actor
        return loss, {
            "critic_loss": loss_critic,
            "value_loss": loss_value,
            "actor_loss": loss_actor,
            "q_data": qs.mean((-2, -1)),
            "v_data": values.mean(-1),
            "advantage": advantage.mean(-1),
            "weight_mean": weights.mean(-1),
            "weight_max": weights.amax(-1),
        }

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.policy_actions(obs, self.act_generator)
