"""RLPD: soft actor-critic with action chunks and prior data (Ball, Smith, Kostrikov & Levine, 2023),
as the QAM paper's reference configures it (its agents/rlpd.py).

A tanh-Gaussian actor pi(a|s) over whole action chunks, a LayerNorm critic ensemble with a Polyak
target, and an entropy temperature alpha tuned toward a target entropy. Per update, with
V_rho(Q) = mean_k Q_k - rho * std_k Q_k (population std over all K members):

    1. a' ~ pi(.|s')                                              (online actor, no gradient)
       y = R_H + gamma^H * m_H * V_rho(Q'(s', a'))                (target critic; no entropy term)
    2. L_critic = mean over K x B of valid * (Q_k(s, a) - y)^2
    3. a_pi ~ pi(.|s) (reparameterised), q = V_rho(Q(s, a_pi))    (online critic, no gradient to it)
       L_actor = mean_B(alpha * log pi(a_pi|s) - q)              (alpha detached)
    4. L_alpha = alpha * (H_hat - H_target),  H_hat = -mean_B log pi(a_pi|s) (detached),
       H_target = -target_entropy_multiplier * H * |A| unless `target_entropy` is set
    5. L_bc = -bc_alpha * mean_B(valid * log pi(clip(a, -1 + 1e-5, 1 - 1e-5) | s))
    6. One Adam step on L_critic + L_actor + L_alpha + L_bc (no gradient clipping); the target
       critic moves by Polyak averaging toward the parameters before the step.

alpha = exp(log_alpha) starts at `init_temp`. The agent acts with a sample of pi (not its mode),
clipped to [-1, 1]. Balanced sampling of offline and online data and the online-only schedule are
the harness's (`protocol` below, and `--balanced-sampling`); the method itself is plain SAC.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from algorithms import values
from algorithms.base import Agent, AnyGenerator, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.nets import TanhGaussian
from algorithms.registry import register

BC_ACTION_CLIP = 1 - 1e-5  # dataset actions are pulled inside (-1, 1) before atanh


@dataclass
class RLPDConfig(BaseConfig):
    VALID = {
        "bc_alpha": values.NON_NEGATIVE,
        "init_temp": values.POSITIVE,  # its log is learned
        "target_entropy": values.FINITE_OR_NONE,
        "target_entropy_multiplier": values.FINITE,
    }

    bc_alpha: float = 0.0  # weight of the actor's log-likelihood BC term
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)  # actor and critic
    critic_layer_norm: bool = True
    num_critics: int = 10
    rho: float = 0.5  # pessimism mean - rho * std, in the TD target and in the actor's Q term
    init_temp: float = 1.0  # alpha at the start
    target_entropy: float | None = None  # None: -target_entropy_multiplier * H * |A|
    target_entropy_multiplier: float = 0.5
    lr: float = 3e-4
    target_tau: float = 0.005
    batch_size: int = 256


def gaussian_log_prob(pre_tanh: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(u; mean, exp(log_std)^2 I) - log|det d tanh(u)/du|, summed over the last dim."""
    z = (pre_tanh - mean) * torch.exp(-log_std)
    gaussian = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), the numerically stable form
    log_det = (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
    return gaussian - log_det


@register
class RLPD(Agent):
    """Soft actor-critic on action chunks with an optional BC term (RLPD as the QAM paper runs it)."""

    name = "rlpd"
    Config = RLPDConfig
    # The QAM paper's protocol for this method (experiments/reproduce_rlpd.py of its reference): no
    # offline phase, the whole budget online, each batch half offline data and half online
    # transitions. The harness applies these budget values to runs that have an online phase, for
    # every key the user does not set (harness/args.py, apply_protocol).
    protocol: ClassVar[dict[str, Any]] = {"offline_steps": 0, "balanced_sampling": True}

    def __init__(
        self,
        spec: EnvSpec,
        config: RLPDConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        if config.init_temp <= 0:
            raise ValueError(f"init_temp must be > 0, got {config.init_temp}")
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
        self.actor = TanhGaussian(obs_dim, chunk_dim, hidden, stack=self.stack)
        self.log_alpha = nn.Parameter(torch.full((*self.stack, 1), math.log(config.init_temp)))
        if config.target_entropy is None:
            self.target_entropy = -config.target_entropy_multiplier * chunk_dim
        else:
            self.target_entropy = float(config.target_entropy)
        self.setup_optimizer(
            [*self.critic.parameters(), *self.actor.parameters(), self.log_alpha],
            lr=config.lr,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    # --- the policy -----------------------------------------------------------------------
    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clipped log-std of the Gaussian before the tanh, each (*S, B, H * |A|)."""
        actor = self.actor
        hidden = actor.trunk(obs)
        log_std = actor.log_std(hidden).clamp(actor.log_std_min, actor.log_std_max)
        return actor.mean(hidden), log_std

    def sample(
        self, mean: Tensor, log_std: Tensor, generator: AnyGenerator | None = None
    ) -> tuple[Tensor, Tensor]:
        """A reparameterised chunk tanh(mean + std * eps) and its log-probability (*S, B)."""
        pre_tanh = mean + log_std.exp() * self.randn(*mean.shape, generator=generator)
        return torch.tanh(pre_tanh), gaussian_log_prob(pre_tanh, mean, log_std)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        actions, _ = self.sample(*self.distribution(obs), self.act_generator)
        return actions.clamp(-1.0, 1.0)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.exp().squeeze(-1)  # (*S,)

    # --- the update -------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        with torch.no_grad():  # 1
            next_obs = batch.next_observations[..., -1, :]
            next_actions, _ = self.sample(*self.distribution(next_obs))
            next_value = pessimistic_value(self.target_critic(next_obs, next_actions), config.rho)
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)  # 2
        loss_actor, metrics = self.actor_loss(obs, actions, valid)  # 3-5
        # 6: the base class takes one Adam step on the sum and moves the target critic.
        return loss_critic + loss_actor, {"critic_loss": loss_critic, "q_data": qs.mean((-2, -1)), **metrics}

    def actor_loss(self, obs: Tensor, actions: Tensor, valid: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Steps 3-5: the SAC actor loss, the temperature loss and the BC term, each (*S,)."""
        mean, log_std = self.distribution(obs)
        policy_actions, log_prob = self.sample(mean, log_std)
        q = pessimistic_value(self.critic(obs, policy_actions, frozen=True), self.config.rho)  # (*S, B)
        alpha = self.alpha
        loss_sac = (alpha.detach().unsqueeze(-1) * log_prob - q).mean(-1)  # 3
        entropy = -log_prob.detach().mean(-1)
        loss_alpha = alpha * (entropy - self.target_entropy)  # 4
        data = actions.clamp(-BC_ACTION_CLIP, BC_ACTION_CLIP)
        data_log_prob = gaussian_log_prob(torch.atanh(data), mean, log_std)
        loss_bc = -self.config.bc_alpha * (data_log_prob * valid).mean(-1)  # 5
        return loss_sac + loss_alpha + loss_bc, {
            "actor_loss": loss_sac,
            "alpha_loss": loss_alpha,
            "bc_loss": loss_bc,
            "bc_log_prob": (data_log_prob.detach() * valid).mean(-1),
            "alpha": alpha.detach(),
            "entropy": entropy,
            "q_policy": q.detach().mean(-1),
        }
