"""CGQL: classifier-guidance Q-learning, the QAM paper's baseline that steers a behaviour flow with
the critic's action gradient, read as the score of the classifier exp(tau Q) (tau = `inv_temp`).

Networks: a behaviour flow v(s, x, t) with a Polyak target v', and an ensemble critic Q_k(s, a, t)
that also takes a flow time (t = 1 means a clean action), with a Polyak target Q'_k. `mode` says
what the critic learns at noisy actions: nothing ("simple": the guidance evaluates the clean critic
at the noisy x), or, from x_t = (1 - t) x_0 + t a with x_0 ~ N(0, I) and t ~ U[0, 1], a noisy
critic by MSE ("mse": its minimiser is E[Q'(s, a, 1) | x_t]) or by the LINEX loss ("linex": its
minimiser is (1 / tau) log E[exp(tau Q'(s, a, 1)) | x_t], the tilt's noisy log-partition). Per update:

    1. a' = the guided sample of step 5 at s' = s_{t+H};  y = R_H + gamma^H m_H (mean_k - rho std_k) Q'_k(s', a', 1)
    2. L_Q  = mean over k, B of valid (Q_k(s, a, 1) - y)^2
    3. L_N  (mse, linex; per member k, target Q'_k(s, a, 1), no gradient):
         mse    valid (Q_k(s, x_t, t) - Q'_k(s, a, 1))^2
         linex  d = tau (Q'_k(s, a, 1) - Q_k(s, x_t, t)):  valid (exp(d) + tau Q_k(s, x_t, t)) if d <= c,
                valid d if d > c   (c = `isd_clip`), averaged over k and B
    4. L_BC(v), flow matching.   Total = L_Q + noisy_coef L_N + L_BC: one Adam, no gradient clipping,
       Polyak targets of the critic and the flow.
    5. Guided sampling (acting and TD next actions): N Euler steps x_{k+1} = x_k + u_k / N from
       x_0 ~ N(0, I), t_k = k / N, then clip to [-1, 1], with
         u_0 = v'(s, x_0, 0),
         u_k = v'(s, x_k, t_k) + coef (tau (1 - t_k) grad_x mean_j Q_j(s, x_k, t*) + x_k) / t_k   (k >= 1)
       coef = `guidance_coef`, t* = 1 ("simple") or t_k ("mse", "linex"); the online critic guides.
       With tau = 0 there is no guidance term at all.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from algorithms import values
from algorithms.base import Agent, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.flow import flow_matching_loss
from algorithms.nets import VelocityField
from algorithms.registry import register

MODES = ("simple", "mse", "linex")

# v(s, x, t) with the state bound: (x, t) -> velocity, same shape as x.
Velocity = Callable[[Tensor, float], Tensor]
# The guiding value with the state bound: (x, t) -> one value per sample (*batch).
Value = Callable[[Tensor, float], Tensor]


@dataclass
class CGQLConfig(BaseConfig):
    VALID = {
        "mode": values.one_of(*MODES),
        "inv_temp": values.NON_NEGATIVE,
        "guidance_coef": values.NON_NEGATIVE,
        "noisy_coef": values.NON_NEGATIVE,
        "isd_clip": values.FINITE,
    }

    mode: str = "simple"  # what the critic learns at noisy actions: simple | mse | linex
    inv_temp: float = 1.0  # tau of the classifier exp(tau Q); per-domain values come from the suite
    guidance_coef: float = 0.1  # weight of the guidance term in the sampling velocity
    noisy_coef: float = 0.001  # weight of the noisy-critic loss (mse, linex)
    isd_clip: float = 5.0  # linex: above this d the loss is d itself (keeps exp(d) finite)
    target_guidance: bool = True  # sample with the target flow v' (else the online flow)
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


def noisy_critic_loss(
    noisy_q: Tensor, target_q: Tensor, valid_last: Tensor, mode: str, inv_temp: float, isd_clip: float
) -> Tensor:
    """Step 3: the loss of the critic at noisy actions. noisy_q = Q_k(s, x_t, t) and target_q =
    Q'_k(s, a, 1), both (*S, K, B); valid_last (*S, B) -> (*S,), the mean over K x B."""
    if mode == "mse":
        per_sample = (noisy_q - target_q).pow(2)
    elif mode == "linex":
        d = inv_temp * (target_q - noisy_q)
        over = d > isd_clip
        # where() gives the unselected exp branch no gradient; the clamp keeps its value finite
        per_sample = torch.where(over, d, torch.exp(d.clamp(max=isd_clip)) + inv_temp * noisy_q)
    else:
        raise ValueError(f"no noisy-critic loss in mode {mode!r}")
    return (per_sample * valid_last.unsqueeze(-2)).mean((-2, -1))


def guidance_term(value: Value, x: Tensor, t: float, value_time: float, inv_temp: float) -> Tensor:
    """g = (tau (1 - t) grad_x value(x, value_time) + x) / t at one Euler step (t > 0); detached,
    in grad mode or not."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(value(x, value_time).sum(), x)
    return (inv_temp * (1 - t) * grad + x.detach()) / t


def guided_sample(
    velocity: Velocity,
    value: Value,
    noise: Tensor,
    steps: int,
    inv_temp: float,
    guidance_coef: float,
    clean_value: bool,
) -> Tensor:
    """Step 5: N Euler steps of v + coef * g from x_0 = noise (no guidance at t = 0, none at all
    when inv_temp <= 0), clipped to [-1, 1]. `clean_value` evaluates the value at t* = 1 (simple
    mode) instead of the step's t. Builds no graph to any parameter."""
    x = noise
    for k in range(steps):
        t = k / steps
        with torch.no_grad():
            u = velocity(x, t)
        if inv_temp > 0 and k > 0:
            u = u + guidance_coef * guidance_term(value, x, t, 1.0 if clean_value else t, inv_temp)
        x = x.detach() + u / steps
    return x.clamp(-1.0, 1.0)


# Presets: the reference's CGQL_MSE and CGQL_LINEX rows are this agent with another mode; the
# suites supply each domain's inv_temp, guidance_coef and noisy_coef.
PRESETS = {"cgql-m": {"mode": "mse"}, "cgql-l": {"mode": "linex"}}


@register(presets=PRESETS)
class CGQL(Agent):
    """Classifier-guidance Q-learning: a BC flow steered by the critic's action gradient (simple, MSE or LINEX)."""

    name = "cgql"
    Config = CGQLConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: CGQLConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        # The flow time enters the critic as one more input column after the action.
        self.critic = EnsembleCritic(obs_dim, chunk_dim + 1, hidden, config.num_critics, stack=self.stack)
        self.target_critic = copy.deepcopy(self.critic)
        self.flow = VelocityField(obs_dim, chunk_dim, hidden, stack=self.stack)
        self.target_flow = copy.deepcopy(self.flow)
        self.setup_optimizer(
            [*self.critic.parameters(), *self.flow.parameters()],
            lr=config.lr,
            targets=[(self.target_critic, self.critic), (self.target_flow, self.flow)],
            target_tau=config.target_tau,
        )

    @staticmethod
    def q_values(
        critic: nn.Module, obs: Tensor, actions: Tensor, t: Tensor | float, frozen: bool = False
    ) -> Tensor:
        """Q_k(s, a, t): (*S, B, obs), (*S, B, D), t a float or (*S, B, 1) -> (*S, K, B)."""
        if not isinstance(t, Tensor):
            t = torch.full((*actions.shape[:-1], 1), float(t), device=actions.device, dtype=actions.dtype)
        return critic(obs, torch.cat([actions, t], dim=-1), frozen)

    def guided_actions(self, obs: Tensor, noise: Tensor) -> Tensor:
        """Step 5 for given noise: chunks (*S, B, H * act) in [-1, 1]."""
        flow = self.target_flow if self.config.target_guidance else self.flow

        def velocity(x: Tensor, t: float) -> Tensor:
            return flow(obs, x, t, frozen=True)

        def value(x: Tensor, t: float) -> Tensor:
            return self.q_values(self.critic, obs, x, t, frozen=True).mean(-2)

        config = self.config
        return guided_sample(
            velocity,
            value,
            noise,
            config.flow_steps,
            config.inv_temp,
            config.guidance_coef,
            clean_value=config.mode == "simple",
        )

    def policy_actions(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Guided chunks from fresh noise drawn from `generator` (default: the training one)."""
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim, generator=generator)
        return self.guided_actions(obs, noise)

    def act(self, obs: Tensor) -> Tensor:
        return self.policy_actions(obs, self.act_generator)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        # 1. TD target from the guided policy's next chunk and the pessimistic target critic.
        next_obs = batch.next_observations[..., -1, :]
        next_actions = self.policy_actions(next_obs)
        with torch.no_grad():
            next_value = pessimistic_value(
                self.q_values(self.target_critic, next_obs, next_actions, 1.0), config.rho
            )
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        # 2. The critic at clean dataset chunks (t = 1).
        qs = self.q_values(self.critic, obs, actions, 1.0)
        loss_critic = critic_loss(qs, target, valid)
        metrics = {"critic_loss": loss_critic, "q_data": qs.mean((-2, -1))}
        loss = loss_critic
        # 3. The critic at noisy chunks, regressed per member onto the target critic's clean value.
        if config.mode != "simple":
            t = self.rand(*obs.shape[:-1], 1)
            x_t = (1 - t) * self.randn(*actions.shape) + t * actions
            with torch.no_grad():
                clean_target = self.q_values(self.target_critic, obs, actions, 1.0)
            noisy_q = self.q_values(self.critic, obs, x_t, t)
            loss_noisy = noisy_critic_loss(
                noisy_q, clean_target, valid, config.mode, config.inv_temp, config.isd_clip
            )
            loss = loss + config.noisy_coef * loss_noisy
            metrics["noisy_critic_loss"] = loss_noisy
        # 4. Behaviour cloning of the flow.
        loss_bc = flow_matching_loss(self.flow, obs, actions, valid, self.generator)
        metrics["bc_loss"] = loss_bc
        return loss + loss_bc, metrics
