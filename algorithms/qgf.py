"""QGF: test-time gradient guidance of flow policies ("Test-Time Gradient Guidance of Flow
Policies in Reinforcement Learning", Zhou et al., arXiv 2606.11087), under the QAM paper's shared
protocol by default; the QGF paper's own protocol is the `ogbench-qgf` suite's settings.

Training has no RL term on the actor. Three networks learn side by side, each from its own loss:

    1. L_Q   sum over the two Q networks of mean_B valid * (Q_k(s, a) - y)^2,
             y = R_H + gamma^H m_H V(s_{t+H})          (V the online value network, no target)
    2. L_V   mean_B valid * |e - 1(u < 0)| u^2,  u = min_k Q'_k(s, a) - V(s),  e = expectile
             (Q' the Polyak targets of the Q networks)
    3. L_BC  flow matching of the behaviour flow v_b on x_t = (1 - t) x_0 + t x_1:
             `bc_loss="shared"`: t ~ U[0, 1], valid-weighted, divided by B (docs/methods/qam.md);
             `bc_loss="qgf"`: t uniform on {0, 1/N, ..., 1}, plain mean over batch and action dims

Acting is where the critic enters: N Euler steps x <- x + (v_b(s, x, k/N) + w g) / N from
x_0 ~ N(0, I), then clip, with the guidance direction

    4. g = grad_a Q'(s, a) at a = a_hat,   Q' = min_k Q'_k

where a_hat estimates the final action: clip(x + (1 - t) v_b(s, x, t)) held fixed ("standard"),
x itself ("noisy"), or clip(x + (1 - t) v_b(s, x, t)) differentiated through, so the gradient is
taken with respect to x ("jacobian"). The guidance weight w is an evaluation-time parameter: one
trained model is evaluated for a list of weights; in the online phase the agent explores with
`online_explorative_guidance_weight` (`exploration_params`, `explore`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from algorithms import values
from algorithms.base import Agent, BaseConfig, Batch, EnvSpec
from algorithms.critic import EnsembleCritic, chunked_td_target, critic_loss, expectile_loss
from algorithms.flow import flow_matching_loss, grid_flow_matching_loss
from algorithms.nets import MLP, OUTPUT_INITS, EmbeddedTimeVelocityField
from algorithms.registry import register

ESTIMATORS = ("standard", "noisy", "jacobian")
BC_LOSSES = ("shared", "qgf")
DEFAULT_GUIDANCE_WEIGHT = 0.02
NUM_CRITICS = 2

# v_b(s, x, t) with the state bound: (x, t) -> velocity, same shape as x.
Velocity = Callable[[Tensor, float], Tensor]
# Q'(s, a) with the state bound: actions (*batch, D) -> one value per sample (*batch).
Critic = Callable[[Tensor], Tensor]


@dataclass
class QGFConfig(BaseConfig):
    VALID = {
        "estimator": values.one_of(*ESTIMATORS),
        "expectile": values.PROBABILITY,
        "actor_output_init": values.one_of(*OUTPUT_INITS),
        "time_embedding_dim": values.Valid(low=0, integer=True, even=True),  # 0: the raw t
        "bc_loss": values.one_of(*BC_LOSSES),
        "online_explorative_guidance_weight": values.NON_NEGATIVE,
    }

    estimator: str = "standard"  # how a_hat is formed: standard | noisy | jacobian
    expectile: float = 0.9  # of the value regression: weights e / (1 - e) on under / over
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    layer_norm: bool = True  # on the Q and V networks
    # Q and V hidden layers: Linear -> LayerNorm -> GELU (QGF paper) instead of Linear -> GELU ->
    # LayerNorm (the shared protocol's critic)
    critic_norm_first: bool = False
    # QGF paper's actor: Linear -> LayerNorm -> GELU on every hidden layer but the last (no norm)
    actor_layer_norm: bool = False
    actor_output_init: str = "xavier"  # of the actor's output layer: xavier | lecun (QGF paper)
    time_embedding_dim: int = 0  # QGF paper: 16 sinusoidal features of t instead of the raw t
    bc_loss: str = "shared"  # shared (t ~ U[0, 1], valid-weighted) | qgf (t on the N-step grid, plain mean)
    online_explorative_guidance_weight: float = 1.0  # the guidance weight the online phase acts with
    lr: float = 3e-4
    target_tau: float = 0.005
    flow_steps: int = 10
    batch_size: int = 256


def guidance_gradient(
    velocity: Velocity, critic: Critic, x: Tensor, t: float, estimator: str = "standard"
) -> tuple[Tensor, Tensor]:
    """(v_b(s, x, t), g) at one Euler step, g the guidance direction of `estimator`:

    standard  g = grad_a Q'(a) at a = a_hat = clip(x + (1 - t) v_b(s, x, t)), a_hat held fixed
    noisy     g = grad_a Q'(a) at a = x
    jacobian  g = grad_x Q'(clip(x + (1 - t) v_b(s, x, t))), the chain rule through v_b and the
              clip (zero gradient in dimensions where the clip is active)

    Works with or without grad mode on; both outputs are detached."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    x = x.detach()
    with torch.enable_grad():
        if estimator == "jacobian":
            x_in = x.requires_grad_(True)
            v = velocity(x_in, t)
            a_hat = (x_in + (1 - t) * v).clamp(-1.0, 1.0)
        else:
            with torch.no_grad():
                v = velocity(x, t)
            a_hat = (x if estimator == "noisy" else (x + (1 - t) * v).clamp(-1.0, 1.0)).clone()
            x_in = a_hat.requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(a_hat).sum(), x_in)
    return v.detach(), grad


def guided_sample(
    velocity: Velocity,
    critic: Critic,
    noise: Tensor,
    weight: float,
    steps: int,
    estimator: str = "standard",
) -> Tensor:
    """N Euler steps x <- x + (v_b(s, x, k/N) + w g) / N from x_0 = noise, then clip to [-1, 1];
    g from `guidance_gradient`. With w = 0 this is the plain flow sample of the same noise."""
    x = noise
    for k in range(steps):
        v, grad = guidance_gradient(velocity, critic, x, k / steps, estimator)
        x = x + (v + weight * grad) / steps
    return x.clamp(-1.0, 1.0)


@register
class QGF(Agent):
    """Test-time Q-guided flow: a BC flow whose Euler steps an IQL critic's gradient steers.

    Trained without any RL term on the actor; the guidance weight is an eval parameter."""

    name = "qgf"
    Config = QGFConfig
    eval_params = {"guidance_weight": DEFAULT_GUIDANCE_WEIGHT}

    def __init__(
        self,
        spec: EnvSpec,
        config: QGFConfig,
        *,
        device: torch.device | str = "cpu",
        seed: int | Sequence[int] = 0,
    ) -> None:
        super().__init__(spec, config, device=device, seed=seed)
        obs_dim, chunk_dim, hidden = spec.obs_dim, spec.chunk_dim, config.hidden_dims
        self.critic = EnsembleCritic(
            obs_dim, chunk_dim, hidden, NUM_CRITICS, stack=self.stack, layer_norm=config.layer_norm
        )
        # MLP's norm_first keeps the parameters and their initialisation, only moves the LayerNorm.
        self.critic.net.norm_first = config.critic_norm_first
        self.target_critic = copy.deepcopy(self.critic)
        self.value = MLP(
            obs_dim,
            1,
            hidden,
            stack=self.stack,
            layer_norm=config.layer_norm,
            norm_first=config.critic_norm_first,
        )
        self.flow = EmbeddedTimeVelocityField(
            obs_dim,
            chunk_dim,
            hidden,
            stack=self.stack,
            layer_norm=config.actor_layer_norm,
            time_embedding_dim=config.time_embedding_dim,
            output_init=config.actor_output_init,
        )
        # The reference uses three Adams; one Adam over the summed loss is the same update,
        # because the parameter sets are disjoint and each loss reaches only its own network
        # (tests/test_qgf.py checks this).
        self.setup_optimizer(
            [*self.critic.parameters(), *self.value.parameters(), *self.flow.parameters()],
            lr=config.lr,
            targets=[(self.target_critic, self.critic)],
            target_tau=config.target_tau,
        )

    def state_value(self, obs: Tensor) -> Tensor:
        """V(s): (*S, B, obs) -> (*S, B)."""
        return self.value(obs).squeeze(-1)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        spec, config = self.spec, self.config
        obs, actions, valid = batch.observations, batch.flat_actions, batch.valid[..., -1]

        # 1. Each Q toward the TD target through the online V.
        with torch.no_grad():
            next_value = self.state_value(batch.next_observations[..., -1, :])
            q_target = chunked_td_target(batch, next_value, spec.discount, spec.horizon)
            v_target = self.target_critic(obs, actions).min(-2).values
        qs = self.critic(obs, actions)
        loss_critic = NUM_CRITICS * critic_loss(qs, q_target, valid)  # each Q on its own: a sum

        # 2. V by expectile regression toward the min of the target Qs at dataset actions.
        values = self.state_value(obs)
        loss_value = (expectile_loss(v_target - values, config.expectile) * valid).mean(-1)

        # 3. Behaviour cloning of the flow.
        if config.bc_loss == "qgf":
            loss_bc = grid_flow_matching_loss(self.flow, obs, actions, config.flow_steps, self.generator)
        else:
            loss_bc = flow_matching_loss(self.flow, obs, actions, valid, self.generator)

        loss = loss_critic + loss_value + loss_bc
        return loss, {
            "critic_loss": loss_critic,
            "value_loss": loss_value,
            "bc_loss": loss_bc,
            "q_data": qs.mean((-2, -1)),
            "v_data": values.mean(-1),
        }

    def guided_actions(self, obs: Tensor, noise: Tensor, guidance_weight: float) -> Tensor:
        """The guided flow's chunks for given noise (*S, B, H * act), clipped to [-1, 1]."""

        def velocity(x: Tensor, t: float) -> Tensor:
            return self.flow(obs, x, t, frozen=True)

        def critic(a: Tensor) -> Tensor:  # 4. the guidance critic: min of the target Qs
            return self.target_critic(obs, a, frozen=True).min(-2).values

        return guided_sample(
            velocity, critic, noise, guidance_weight, self.config.flow_steps, self.config.estimator
        )

    def act(self, obs: Tensor, guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT) -> Tensor:
        """Guided chunks from fresh noise; works with grad mode on or off, builds no graph to
        any parameter."""
        noise = self.randn(*obs.shape[:-1], self.spec.chunk_dim, generator=self.act_generator)
        return self.guided_actions(obs, noise, guidance_weight)

    @property
    def exploration_params(self) -> dict[str, float]:
        """The evaluation-time parameters the online phase acts with: the guidance weight
        `online_explorative_guidance_weight` (the QGF reference explores with its own weight,
        1.0 by default, not with one of the evaluation weights)."""
        return {"guidance_weight": self.config.online_explorative_guidance_weight}

    def explore(self, obs: Tensor) -> Tensor:
        """Exploration chunks: `act` with `exploration_params`."""
        return self.act(obs, **self.exploration_params)
