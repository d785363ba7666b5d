"""DSRL: diffusion steering by reinforcement learning in the noise space (Wagenmaker et al., 2025), in
the noise-aliased form of the QAM reference: the flow's weights only ever see behaviour cloning; RL
chooses the noise the flow starts from.

Networks: an action critic Q (ensemble, Polyak target Q'), a BC flow v_b (Polyak target v_b'), a
latent critic Z(s, w) on the noise (same ensemble shape as Q, no target) and a latent policy, a
tanh-Gaussian u ~ pi(.|s) in (-1, 1)^D whose noise is w = noise_scale * u. With
A(s, w) = clip(ODE_b'(s, w)) the flow's action from noise w (10 Euler steps of the target flow):

    1. a' = A(s', noise_scale * u'), u' ~ pi(.|s');  y = R_H + gamma^H m_H (mean_k - rho std_k) Q'_k(s', a')
    2. L_Q = mean_{k,b} valid (Q_k(s, a) - y)^2
    3. w ~ N(0, I);  L_Z = mean_{k,b} (Z_k(s, w) - Q_k(s, A(s, w)))^2   (Q held fixed)
    4. L_BC = flow matching of v_b on the dataset chunks (valid-weighted)
    5. u ~ pi(.|s);  L_pi = mean_b [alpha log pi(u|s) - mean_k Z_k(s, noise_scale * u)]  (alpha, Z held fixed)
    6. L_alpha = alpha (-mean_b log pi(u|s) - target_entropy),  target_entropy = -0.5 * H * |A|

Total loss = L_Q + L_Z + L_BC + L_pi + L_alpha, one Adam step without gradient clipping; the targets
follow the critic and the flow. The agent acts (and makes its TD next actions) with
A(s, noise_scale * u), u sampled from the latent policy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from algorithms import values
from algorithms.base import Agent, AnyGenerator, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.flow import flow_matching_loss, sample_actions
from algorithms.nets import TanhGaussian, VelocityField
from algorithms.registry import register


@dataclass
class DSRLConfig(BaseConfig):
    VALID = {"noise_scale": values.POSITIVE, "target_entropy_multiplier": values.FINITE}

    noise_scale: float = 1.0  # the latent policy's noise lies in (-noise_scale, noise_scale)^D; per domain
    target_entropy_multiplier: float = 0.5  # target entropy = -multiplier * H * |A|
    use_target_latent: bool = True  # map noise to actions with the target flow v_b' (else v_b)
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10  # members of Q and of Z
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


@register
class DSRL(Agent):
    """Diffusion steering: a latent policy picks the noise a BC flow turns into actions."""

    name = "dsrl"
    Config = DSRLConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: DSRLConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.critic = EnsembleCritic(obs_dim, chunk_dim, hidden, config.num_critics, stack=self.stack)
        self.target_critic = copy.deepcopy(self.critic)
        self.z_critic = EnsembleCritic(obs_dim, chunk_dim, hidden, config.num_critics, stack=self.stack)
        self.flow = VelocityField(obs_dim, chunk_dim, hidden, stack=self.stack)  # v_b
        self.target_flow = copy.deepcopy(self.flow)  # v_b'
        self.latent_policy = TanhGaussian(obs_dim, chunk_dim, hidden, stack=self.stack)
        self.log_alpha = nn.Parameter(torch.zeros(*self.stack, 1))
        self.target_entropy = -config.target_entropy_multiplier * chunk_dim
        modules: list[nn.Module] = [self.critic, self.z_critic, self.flow, self.latent_policy]
        self.setup_optimizer(
            [*(p for module in modules for p in module.parameters()), self.log_alpha],
            lr=config.lr,
            targets=[(self.target_critic, self.critic), (self.target_flow, self.flow)],
            target_tau=config.target_tau,
        )

    # --- the acting policy ------------------------------------------------------------
    def latents(self, obs: Tensor, generator: AnyGenerator | None = None) -> tuple[Tensor, Tensor]:
        """Noise w = noise_scale * u with u ~ pi(.|s) in (-1, 1)^D, and log pi(u|s) (of u, unscaled)."""
        draw = self.randn(*obs.shape[:-1], self.spec.chunk_dim, generator=generator)
        u, log_prob = self.latent_policy(obs, draw)
        return self.config.noise_scale * u, log_prob

    def flow_actions(self, obs: Tensor, noise: Tensor) -> Tensor:
        """A(s, w): the flow's clipped Euler ODE from noise w, with v_b' when use_target_latent."""
        flow = self.target_flow if self.config.use_target_latent else self.flow
        return sample_actions(flow, obs, noise, self.config.flow_steps)

    def policy_actions(self, obs: Tensor, generator: AnyGenerator | None = None) -> Tensor:
        """The acting policy's chunks in [-1, 1], fresh draws from `generator` (default: training)."""
        noise, _ = self.latents(obs, generator)
        return self.flow_actions(obs, noise)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.policy_actions(obs, self.act_generator)

    # --- the update ---------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        # 1-2. TD on the action critic; the next chunk comes from the latent policy through the flow.
        with torch.no_grad():
            next_obs = batch.next_observations[..., -1, :]
            next_value = pessimistic_value(
                self.target_critic(next_obs, self.policy_actions(next_obs)), config.rho
            )
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)
        loss_distill = self.distill_loss(obs)
        # 4. Behaviour cloning of the flow.
        loss_bc = flow_matching_loss(self.flow, obs, actions, valid, self.generator)
        loss_latent, metrics = self.latent_policy_loss(obs)

        loss = loss_critic + loss_distill + loss_bc + loss_latent
        return loss, {
            "critic_loss": loss_critic,
            "q_data": qs.mean((-2, -1)),
            "distill_loss": loss_distill,
            "bc_loss": loss_bc,
            **metrics,
        }

    def distill_loss(self, obs: Tensor) -> Tensor:
        """3. Z_k(s, w) regressed on Q_k(s, A(s, w)), member by member, at standard-normal noise w."""
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim)
        with torch.no_grad():
            q_flow = self.critic(obs, self.flow_actions(obs, noise))
        return (self.z_critic(obs, noise) - q_flow).pow(2).mean((-2, -1))

    def latent_policy_loss(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """5-6. The latent policy climbs the (fixed) latent critic with an entropy bonus; alpha is tuned
        toward the target entropy."""
        noise, log_prob = self.latents(obs)
        z_policy = self.z_critic(obs, noise, frozen=True).mean(-2)  # (*S, B)
        alpha = self.log_alpha.exp()  # (*S, 1)
        loss_policy = (alpha.detach() * log_prob - z_policy).mean(-1)
        entropy = -log_prob.detach().mean(-1)
        loss_alpha = alpha.squeeze(-1) * (entropy - self.target_entropy)
        return loss_policy + loss_alpha, {
            "latent_policy_loss": loss_policy,
            "z_policy": z_policy.detach().mean(-1),
            "entropy": entropy,
            "alpha": alpha.detach().squeeze(-1),
        }
