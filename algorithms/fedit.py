"""FEdit: a behaviour-cloning flow whose actions an edit policy refines (the flow + edit policy of
EXPO, Dong et al., arXiv 2507.07986), the QAM paper's baseline, under the shared protocol.

The flow v proposes a_f = clip(ODE_v(s, z)); a tanh-Gaussian edit policy on [s, a_f] samples
delta in (-1, 1)^D and the agent takes a = clip(a_f + edit_scale * delta), so an action never moves
more than edit_scale from the flow's proposal in any coordinate. The edit policy maximises the
critic with a SAC-style entropy bonus whose weight alpha_e = exp(log alpha) is tuned toward the
target entropy -0.5 * D (D = H * |A|). Per update:

    1. y = R_H + gamma^H m_H (mean_k - rho std_k) Q'_k(s_{t+H}, a')   (a' the acting policy's chunk)
       L_Q = mean over k and the batch of valid * (Q_k(s, a) - y)^2
    2. L_BC = flow matching of v on the dataset chunks
    3. a_f = clip(ODE_v(s, z)) (no gradient), (delta, log pi) ~ edit policy on [s, a_f],
       a_e = clip(a_f + edit_scale * delta)
       L_edit = mean over the batch of -mean_k Q_k(s, a_e) + sg(alpha_e) log pi(delta)
    4. L_alpha = alpha_e * (-mean over the batch of sg(log pi) - target entropy)

sg stops the gradient. Q in step 3 is the online critic, which gets no gradient from it. Total
loss = L_Q + L_BC + L_edit + L_alpha, one Adam step, no gradient clipping; Polyak target of the
critic. The agent acts, and makes its TD next actions, with a fresh flow sample and a sampled (not
the mode) edit.
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
from algorithms.flow import flow_matching_loss, sample_actions
from algorithms.nets import TanhGaussian, VelocityField
from algorithms.registry import register


@dataclass
class FEditConfig(BaseConfig):
    VALID = {
        "edit_scale": values.NON_NEGATIVE,
        "edit_target_entropy": values.FINITE_OR_NONE,
        "edit_target_entropy_multiplier": values.FINITE,
    }

    edit_scale: float = 0.2  # largest move per coordinate; per-domain values come from the suite
    edit_target_entropy: float | None = None  # None: -edit_target_entropy_multiplier * H * |A|
    edit_target_entropy_multiplier: float = 0.5
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


@register
class FEdit(Agent):
    """Flow + edit policy: a BC flow's action moved by at most edit_scale toward higher Q."""

    name = "fedit"
    Config = FEditConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: FEditConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.critic = EnsembleCritic(obs_dim, chunk_dim, hidden, config.num_critics, stack=self.stack)
        self.target_critic = copy.deepcopy(self.critic)
        self.flow = VelocityField(obs_dim, chunk_dim, hidden, stack=self.stack)
        self.edit_policy = TanhGaussian(obs_dim + chunk_dim, chunk_dim, hidden, stack=self.stack)
        self.log_alpha = nn.Parameter(torch.zeros(*self.stack, 1))  # alpha_e starts at 1
        self.target_entropy = config.edit_target_entropy
        if self.target_entropy is None:
            self.target_entropy = -config.edit_target_entropy_multiplier * chunk_dim
        self.setup_optimizer(
            [
                *self.critic.parameters(),
                *self.flow.parameters(),
                *self.edit_policy.parameters(),
                self.log_alpha,
            ],
            lr=config.lr,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    def flow_actions(self, obs: Tensor, noise: Tensor) -> Tensor:
        """The flow's proposal clip(ODE_v(s, z))."""
        return sample_actions(self.flow, obs, noise, self.config.flow_steps)

    def edit(self, obs: Tensor, flow_actions: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """clip(a_f + edit_scale * delta) with delta from the edit policy (reparameterised with
        `noise`), and log pi(delta) (*S, B)."""
        delta, log_prob = self.edit_policy(torch.cat([obs, flow_actions], dim=-1), noise)
        return (flow_actions + self.config.edit_scale * delta).clamp(-1.0, 1.0), log_prob

    def policy_actions(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The acting policy's chunks: a fresh flow sample, then a sampled edit."""
        shape = (*obs.shape[:-1], self.spec.chunk_dim)
        proposal = self.flow_actions(obs, self.randn(*shape, generator=generator))
        actions, _ = self.edit(obs, proposal, self.randn(*shape, generator=generator))
        return actions

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        with torch.no_grad():  # 1.
            next_obs = batch.next_observations[..., -1, :]
            next_qs = self.target_critic(next_obs, self.policy_actions(next_obs))
            target = chunked_td_target(
                batch, pessimistic_value(next_qs, config.rho), spec.discount, spec.horizon
            )
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)
        loss_bc = flow_matching_loss(self.flow, obs, actions, valid, self.generator)  # 2.
        loss_edit, metrics = self.edit_loss(obs)  # 3-4.

        loss = loss_critic + loss_bc + loss_edit
        return loss, {"critic_loss": loss_critic, "q_data": qs.mean((-2, -1)), "bc_loss": loss_bc, **metrics}

    def edit_loss(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Steps 3-4: the edit policy's loss plus the temperature's loss, (*S,)."""
        shape = (*obs.shape[:-1], self.spec.chunk_dim)
        with torch.no_grad():
            proposal = self.flow_actions(obs, self.randn(*shape))
        edited, log_prob = self.edit(obs, proposal, self.randn(*shape))
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

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.policy_actions(obs, self.act_generator)
