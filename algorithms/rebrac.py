"""ReBRAC: TD3+BC revisited (Tarasov et al., 2023), as the QAM paper's reference configures it.

A deterministic tanh actor a = tanh(mu(s)) on whole action chunks, a LayerNorm critic ensemble, and
targets of both. Per update, with sigma = `actor_noise`, c = `actor_noise_clip`, and
V_rho(Q) = mean_k Q_k - rho * std_k Q_k (population std):

    1. a' = clip(tanh(mu'(s')) + clip(sigma * eps, -c, c), -1, 1),  eps ~ N(0, I)   (target actor)
    2. y = R_H + gamma^H * m_H * V_rho(Q'(s', a'))                                     (target critic)
    3. L_critic = mean over K x B of valid * (Q_k(s, a) - y)^2
    4. a_pi = tanh(mu(s)),  q = V_rho(Q(s, a_pi)) (online critic, no gradient to it),
       lambda = 1 / mean_B |q| (no gradient),
       L_actor = -mean_B(lambda * q) + alpha_actor * mean_B(valid * ||a_pi - a||^2)
    5. One Adam step on L_critic + L_actor (no gradient clipping).
    6. On every `actor_freq`-th update (the 2nd, 4th, ...), Polyak averaging of the critic's and
       the actor's targets toward the parameters before this step.

The actor is trained on every update; `actor_freq` only spaces out the target updates (the
reference's `full_update` flag reaches the target update and not the actor loss). The agent acts
with the noise of step 1 on the online actor: clip(tanh(mu(s)) + clip(sigma * eps, -c, c), -1, 1).
There is no BC penalty on the critic.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from algorithms import values
from algorithms.base import Agent, AnyGenerator, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.nets import MLP
from algorithms.registry import register


@dataclass
class ReBRACConfig(BaseConfig):
    VALID = {
        "alpha_actor": values.NON_NEGATIVE,
        "actor_noise": values.NON_NEGATIVE,
        "actor_noise_clip": values.NON_NEGATIVE,
        "actor_freq": values.COUNT,
        "actor_fc_scale": values.POSITIVE,
    }

    alpha_actor: float = 0.0  # weight of the actor's BC penalty; per-domain values come from the suite
    actor_noise: float = 0.2  # std of the target-smoothing (and acting) noise
    actor_noise_clip: float = 0.5  # that noise is clipped to [-clip, clip]
    actor_freq: int = 2  # targets are updated on every actor_freq-th update
    actor_fc_scale: float = 0.01  # variance scale of the actor's output-layer initialisation
    actor_layer_norm: bool = False
    critic_layer_norm: bool = True
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism mean - rho * std, in the TD target and in the actor's Q term
    lr: float = 3e-4
    target_tau: float = 0.005
    batch_size: int = 256


class TanhActor(nn.Module):
    """a = tanh(mu(s)): an MLP (last hidden layer activated) with a linear output layer whose
    xavier-uniform weights are scaled by sqrt(fc_scale), i.e. variance scaling `fc_scale`."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        layer_norm: bool = False,
        fc_scale: float = 0.01,
    ) -> None:
        super().__init__()
        self.net = MLP(obs_dim, action_dim, hidden_dims, stack=stack, layer_norm=layer_norm)
        with torch.no_grad():
            self.net.linears[-1].weight.mul_(math.sqrt(fc_scale))

    def forward(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.net(obs))


@register
class ReBRAC(Agent):
    """ReBRAC: a deterministic tanh actor with a BC penalty, target smoothing noise and a LayerNorm critic."""

    name = "rebrac"
    Config = ReBRACConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: ReBRACConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        if config.actor_freq < 1:
            raise ValueError(f"actor_freq must be >= 1, got {config.actor_freq}")
        if config.actor_noise < 0 or config.actor_noise_clip < 0:
            raise ValueError(
                f"actor_noise and actor_noise_clip must be >= 0, got {config.actor_noise} "
                f"and {config.actor_noise_clip}"
            )
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.critic = EnsembleCritic(
            obs_dim,
            chunk_dim,
            hidden,
            config.num_critics,
            stack=self.stack,
            layer_norm=config.critic_layer_norm,
        )
        self.target_critic = copy.deepcopy(self.critic)
        self.actor = TanhActor(
            obs_dim,
            chunk_dim,
            hidden,
            stack=self.stack,
            layer_norm=config.actor_layer_norm,
            fc_scale=config.actor_fc_scale,
        )
        self.target_actor = copy.deepcopy(self.actor)
        self.updates = 0  # updates done so far; decides which ones move the targets
        self.setup_optimizer(
            [*self.critic.parameters(), *self.actor.parameters()],
            lr=config.lr,
            targets=[(self.target_critic, self.critic), (self.target_actor, self.actor)],
            target_tau=config.target_tau,
        )

    # --- acting -------------------------------------------------------------------------
    def noisy_actions(self, actor: TanhActor, obs: Tensor, generator: AnyGenerator | None = None) -> Tensor:
        """clip(actor(s) + clip(sigma * eps, -c, c), -1, 1), eps from `generator` (default: training)."""
        actions = actor(obs)
        eps = self.randn(*actions.shape, generator=generator)
        clip = self.config.actor_noise_clip
        noise = (self.config.actor_noise * eps).clamp(-clip, clip)
        return (actions + noise).clamp(-1.0, 1.0)

    @torch.no_grad()
    def next_actions(self, next_obs: Tensor) -> Tensor:
        """Step 1: the target actor's smoothed chunks at s_{t+H}."""
        return self.noisy_actions(self.target_actor, next_obs)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.noisy_actions(self.actor, obs, self.act_generator)

    # --- the update -----------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        with torch.no_grad():  # 1-2
            next_obs = batch.next_observations[..., -1, :]
            next_value = pessimistic_value(
                self.target_critic(next_obs, self.next_actions(next_obs)), config.rho
            )
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)  # 3
        loss_actor, metrics = self.actor_loss(obs, actions, valid)  # 4
        # 5: the base class takes one Adam step on the sum.
        return loss_critic + loss_actor, {"critic_loss": loss_critic, "q_data": qs.mean((-2, -1)), **metrics}

    def actor_loss(self, obs: Tensor, actions: Tensor, valid: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Step 4: -mean(lambda q) + alpha_actor * mean(valid * ||a_pi - a||^2), lambda = 1 / mean|q|."""
        policy_actions = self.actor(obs)
        q = pessimistic_value(self.critic(obs, policy_actions, frozen=True), self.config.rho)  # (*S, B)
        scale = 1.0 / q.detach().abs().mean(-1, keepdim=True)
        loss_q = -(scale * q).mean(-1)
        mse = (policy_actions - actions).pow(2).sum(-1) * valid
        loss_bc = self.config.alpha_actor * mse.mean(-1)
        return loss_q + loss_bc, {
            "actor_q_loss": loss_q,
            "bc_loss": loss_bc,
            "bc_mse": mse.mean(-1),
            "q_policy": q.detach().mean(-1),
            "q_scale": scale.squeeze(-1),
        }

    @torch.no_grad()
    def _polyak_update(self) -> None:
        # 6: the targets move on every actor_freq-th update only (counting from 1, as the reference).
        self.updates += 1
        if self.updates % self.config.actor_freq == 0:
            super()._polyak_update()

    # --- checkpointing: the update count decides the phase of the target updates ------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        state = super().state_dict(*args, **kwargs)
        if args or kwargs:
            return state
        return {**state, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        result = super().load_state_dict(state, *args, **kwargs)
        if "modules" in state:
            self.updates = int(state["updates"])
        return result
