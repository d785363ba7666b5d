"""Diffusion classifier-guidance Q-learning: QSM (Q-score matching) and DAC (diffusion actor-critic).

One DDPM denoiser eps_theta(s, x, t) over action chunks, t in {1..T} (T = `diffusion_steps`, VP
schedule beta_1..beta_T, alpha_t = 1 - beta_t, abar_t = prod_{u <= t} alpha_u, abar_0 = 1), an
ensemble critic Q_k with a Polyak target Q'_k. The actor never backpropagates through sampling:
the critic's action gradient at a noised dataset chunk enters a per-step regression. Per update:

    1. y = R_H + gamma^H m_H (mean_k Q'_k - rho std_k Q'_k)(s', a'), a' = sample(s') (step 8, online
       denoiser, the clip flags as configured, no clip afterwards)
    2. L_critic = mean_{k, b} valid (Q_k(s, a) - y)^2
    3. t ~ U{1..T}, n ~ N(0, I), x_t = sqrt(abar_t) a + sqrt(1 - abar_t) n
    4. g = grad_x mean_k Q'_k(s, x) at x = x_t (target critic; no gradient to any critic)
    5. L_BC = mean_b valid mean_d (n - eps_theta(s, x_t, t))^2
    6. QSM: L_Q = mean_b valid mean_d (-tau g - eps_theta(s, x_t, t))^2,  tau = `inv_temp`
       DAC: L_Q = mean_b valid mean_d sqrt(1 - abar_t) g * eps_theta(s, x_t, t)   (tau unused)
    7. L = L_critic + alpha L_BC + L_Q; one Adam step, global gradient norm clipped to 1.

Sampling (acting, TD next actions), x_T ~ N(0, I), for t = T..1 with e = eps_theta(s, x_t, t):

    8. x0 = (x_t - sqrt(1 - abar_t) e) / sqrt(abar_t)
       clip_sampler_before: x_{t-1} = (sqrt(abar_{t-1}) beta_t clip(x0) + sqrt(alpha_t) (1 - abar_{t-1}) x_t)
                                      / (1 - abar_t)          (the DDPM posterior mean at clip(x0))
       otherwise:           x_{t-1} = x0
       x_{t-1} += sqrt(beta_t) z (t > 1, z ~ N(0, I)); clip_sampler_after: x_{t-1} = clip(x_{t-1})

Minimising step 6 drives eps_theta toward -tau g (QSM), i.e. the policy's score toward
tau grad Q / sqrt(1 - abar_t), so each step 8 moves x0 up the Q gradient. The agent acts with
clip(sample(s)).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from algorithms import values
from algorithms.base import Agent, AnyGenerator, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, pessimistic_value
from algorithms.nets import StackedLayerNorm, StackedLinear, mish
from algorithms.registry import RegistryError, register

ACTOR_LOSS_TYPES = ("qsm", "dac")
BETA_SCHEDULES = ("vp", "cosine", "linear")

# eps_theta(s, x, t) with the state bound: (x, t) -> predicted noise, same shape as x.
Denoise = Callable[[Tensor, int], Tensor]


@dataclass
class DCGQLConfig(BaseConfig):
    VALID = {
        "actor_loss_type": values.one_of(*ACTOR_LOSS_TYPES),
        "inv_temp": values.NON_NEGATIVE,
        "alpha": values.NON_NEGATIVE,
        "diffusion_steps": values.COUNT,
        "beta_schedule": values.one_of(*BETA_SCHEDULES),
        "time_dim": values.Valid(low=2, integer=True, even=True),
    }

    actor_loss_type: str = "qsm"  # qsm | dac (step 6)
    inv_temp: float = 1.0  # tau of QSM's regression target -tau g; DAC ignores it
    alpha: float = 0.0  # weight of the denoising BC loss
    clip_sampler_before: bool = False  # step 8: posterior mean at clip(x0) (else x_{t-1} = x0)
    clip_sampler_after: bool = False  # step 8: clip every x_{t-1} to [-1, 1]
    use_target_critic_grad: bool = True  # step 4 with the target critic (else the online one)
    diffusion_steps: int = 10
    beta_schedule: str = "vp"  # vp | cosine | linear
    time_dim: int = 64  # learnable Fourier features of t
    actor_layer_norm: bool = False
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    num_critics: int = 10
    rho: float = 0.5  # pessimism of the TD target: mean - rho * std over the ensemble
    lr: float = 3e-4
    target_tau: float = 0.005
    max_grad_norm: float = 1.0  # global over critic and denoiser (per seed)
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.actor_loss_type == "dac" and self.alpha <= 0:
            # DAC's Q term is linear in eps_theta: without the BC term the loss has no minimum.
            raise RegistryError(f"actor_loss_type dac needs alpha > 0 (its BC weight), got {self.alpha!r}")


@dataclass
class QSMConfig(DCGQLConfig):
    # QSM's settings in every domain of the QAM paper; inv_temp and alpha from its most common row.
    inv_temp: float = 10.0
    alpha: float = 10.0
    clip_sampler_after: bool = True


@dataclass
class DACConfig(DCGQLConfig):
    # DAC's settings in every domain of the QAM paper; alpha from its most common row.
    actor_loss_type: str = "dac"
    alpha: float = 1.0
    clip_sampler_before: bool = True


# --- the diffusion process -------------------------------------------------------------------
def betas(name: str, steps: int) -> list[float]:
    """beta_1..beta_T of the named schedule."""
    if name == "vp":
        b_min, b_max = 0.1, 10.0
        return [
            1 - math.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
            for t in range(1, steps + 1)
        ]
    if name == "linear":
        return [1e-4 + (2e-2 - 1e-4) * k / max(steps - 1, 1) for k in range(steps)]
    if name == "cosine":
        s = 0.008
        abar = [math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2 for t in range(steps + 1)]
        return [min(max(1 - abar[t] / abar[t - 1], 0.0), 0.999) for t in range(1, steps + 1)]
    raise ValueError(f"unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}")


@dataclass(frozen=True)
class Schedule:
    """beta_t, alpha_t and abar_t for t = 0..T (beta_0 = 0, so abar_0 = 1)."""

    betas: tuple[float, ...]
    alphas: tuple[float, ...]
    alpha_hats: tuple[float, ...]

    @classmethod
    def make(cls, name: str, steps: int) -> Schedule:
        beta = (0.0, *betas(name, steps))
        alpha = tuple(1 - b for b in beta)
        return cls(beta, alpha, tuple(math.prod(alpha[: t + 1]) for t in range(steps + 1)))

    @property
    def steps(self) -> int:
        return len(self.betas) - 1


def reverse_step(x: Tensor, eps: Tensor, t: int, schedule: Schedule, clip_before: bool) -> Tensor:
    """Step 8 without its noise: x_{t-1} from x_t and the predicted noise eps."""
    abar, abar_prev, alpha = schedule.alpha_hats[t], schedule.alpha_hats[t - 1], schedule.alphas[t]
    x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
    if not clip_before:
        return x0
    x0 = x0.clamp(-1.0, 1.0)
    return (math.sqrt(abar_prev) * (1 - alpha) * x0 + math.sqrt(alpha) * (1 - abar_prev) * x) / (1 - abar)


def ddpm_sample(
    denoise: Denoise,
    x_last: Tensor,
    noises: Sequence[Tensor],
    schedule: Schedule,
    *,
    clip_before: bool,
    clip_after: bool,
) -> Tensor:
    """Step 8 from x_T = `x_last` down to x_0; `noises` holds the T - 1 draws z for t = T..2."""
    x = x_last
    for t in range(schedule.steps, 0, -1):
        x = reverse_step(x, denoise(x, t), t, schedule, clip_before)
        if t > 1:
            x = x + math.sqrt(schedule.betas[t]) * noises[schedule.steps - t]
        if clip_after:
            x = x.clamp(-1.0, 1.0)
    return x


def qsm_loss(eps_pred: Tensor, q_grad: Tensor, inv_temp: float) -> Tensor:
    """Step 6, QSM, before the valid weight: mean_d (-tau g - eps)^2; (..., D) -> (...)."""
    return (-inv_temp * q_grad - eps_pred).pow(2).mean(-1)


def dac_loss(eps_pred: Tensor, q_grad: Tensor, noise_scale: Tensor) -> Tensor:
    """Step 6, DAC, before the valid weight: mean_d sqrt(1 - abar_t) g eps; noise_scale (..., 1)."""
    return (noise_scale * q_grad * eps_pred).mean(-1)


# --- the denoiser --------------------------------------------------------------------------
class MishMLP(nn.Module):
    """Linear -> Mish [-> LayerNorm] hidden layers and a linear output layer (stacked parameters)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden_dims, out_dim]
        self.linears = nn.ModuleList(StackedLinear(a, b, stack) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(StackedLayerNorm(d, stack) for d in hidden_dims) if layer_norm else None

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < last:
                x = mish(x)
                if self.norms is not None:
                    x = self.norms[i](x)
        return x


class Denoiser(nn.Module):
    """eps_theta(s, x, t): t -> learnable Fourier features [cos 2 pi t w, sin 2 pi t w] (w ~ N(0, 0.2^2))
    -> a Mish MLP (the condition); then a Mish MLP on [x, s, condition]. t is the raw step index."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        time_dim: int,
        *,
        stack: Sequence[int] = (),
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.time_weight = nn.Parameter(torch.randn(*stack, 1, time_dim // 2) * 0.2)
        self.condition = MishMLP(time_dim, hidden_dims[-1], hidden_dims[:-1], stack=stack)
        in_dim = action_dim + obs_dim + hidden_dims[-1]
        self.net = MishMLP(in_dim, action_dim, hidden_dims, stack=stack, layer_norm=layer_norm)

    def forward(self, obs: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        if not isinstance(t, Tensor) or t.dim() == 0:
            t = torch.full((*x.shape[:-1], 1), float(t), device=x.device, dtype=x.dtype)
        angles = 2 * math.pi * t * self.time_weight  # (*S, B, 1) * (*S, 1, F/2)
        condition = self.condition(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1))
        return self.net(torch.cat([x, obs, condition], dim=-1))


# --- the agents ------------------------------------------------------------------------------
class DCGQL(Agent):
    """Diffusion policy trained by denoising BC plus a Q-gradient term (QSM or DAC)."""

    Config = DCGQLConfig

    def __init__(
        self,
        spec: EnvSpec,
        config: DCGQLConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.critic = EnsembleCritic(obs_dim, chunk_dim, hidden, config.num_critics, stack=self.stack)
        self.target_critic = copy.deepcopy(self.critic)
        self.actor = Denoiser(
            obs_dim, chunk_dim, hidden, config.time_dim, stack=self.stack, layer_norm=config.actor_layer_norm
        )
        self.schedule = Schedule.make(config.beta_schedule, config.diffusion_steps)
        # a lookup table for the random steps of step 3; not state (rebuilt from the config)
        self.register_buffer("alpha_hats", torch.tensor(self.schedule.alpha_hats), persistent=False)
        self.setup_optimizer(
            [*self.critic.parameters(), *self.actor.parameters()],
            lr=config.lr,
            max_grad_norm=config.max_grad_norm,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    # --- sampling (step 8) ------------------------------------------------------------------
    def sample(self, obs: Tensor, generator: AnyGenerator | None = None) -> Tensor:
        """Chunks from the denoiser's reverse chain with the configured clipping, not clipped after."""
        shape = (*obs.shape[:-1], self.spec.chunk_dim)
        x_last = self.randn(*shape, generator=generator)
        noises = [self.randn(*shape, generator=generator) for _ in range(self.schedule.steps - 1)]

        def denoise(x: Tensor, t: int) -> Tensor:
            return self.actor(obs, x, t)

        return ddpm_sample(
            denoise,
            x_last,
            noises,
            self.schedule,
            clip_before=self.config.clip_sampler_before,
            clip_after=self.config.clip_sampler_after,
        )

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        return self.sample(obs, self.act_generator).clamp(-1.0, 1.0)

    # --- the update -------------------------------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        config, spec = self.config, self.spec
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        # 1-2. Critic on the pessimistic chunked TD target, next actions from the sampler.
        with torch.no_grad():
            next_obs = batch.next_observations[..., -1, :]
            next_value = pessimistic_value(self.target_critic(next_obs, self.sample(next_obs)), config.rho)
            target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
        qs = self.critic(obs, actions)
        loss_critic = critic_loss(qs, target, valid)

        # 3. Random steps t in 1..T (the floor of a uniform draw) and noise.
        n_steps = self.schedule.steps
        steps = (self.rand(*obs.shape[:-1]) * n_steps).long().clamp_(max=n_steps - 1) + 1
        noise = self.randn(*actions.shape)
        loss_actor, metrics = self.actor_loss(obs, actions, valid, steps, noise)
        return loss_critic + loss_actor, {"critic_loss": loss_critic, "q_data": qs.mean((-2, -1)), **metrics}

    def actor_loss(
        self, obs: Tensor, actions: Tensor, valid: Tensor, steps: Tensor, noise: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Steps 3-7 without the critic: alpha L_BC + L_Q (*S,) for given steps (*S, B) and noise."""
        config = self.config
        abar = self.alpha_hats[steps].unsqueeze(-1).to(actions.dtype)  # (*S, B, 1)
        noise_scale = (1 - abar).sqrt()
        noisy = abar.sqrt() * actions + noise_scale * noise
        q_grad = self.q_gradient(obs, noisy)  # 4.
        eps_pred = self.actor(obs, noisy, steps.unsqueeze(-1).to(actions.dtype))
        loss_bc = ((noise - eps_pred).pow(2).mean(-1) * valid).mean(-1)  # 5.
        if config.actor_loss_type == "qsm":  # 6.
            per_sample = qsm_loss(eps_pred, q_grad, config.inv_temp)
        else:
            per_sample = dac_loss(eps_pred, q_grad, noise_scale)
        loss_q = (per_sample * valid).mean(-1)
        metrics = {"bc_loss": loss_bc, "actor_loss": loss_q, "q_grad_norm": q_grad.norm(dim=-1).mean(-1)}
        return config.alpha * loss_bc + loss_q, metrics  # 7. (the critic's part in `loss`)

    def q_gradient(self, obs: Tensor, actions: Tensor) -> Tensor:
        """grad_a mean_k Q_k(s, a) of the target (or online) critic, carrying no graph."""
        critic = self.target_critic if self.config.use_target_critic_grad else self.critic
        with torch.enable_grad():
            x = actions.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(critic(obs, x, frozen=True).mean(-2).sum(), x)
        return grad


@register
class QSM(DCGQL):
    """Q-score matching: a diffusion policy whose noise prediction regresses onto -tau grad Q, plus BC."""

    name = "qsm"
    Config = QSMConfig


@register
class DAC(DCGQL):
    """Diffusion actor-critic: denoising BC plus a soft Q-guidance term sqrt(1 - abar_t) grad Q . eps."""

    name = "dac"
    Config = DACConfig
