"""The ensemble critic, the pessimistic chunked TD target and the expectile loss of IQL-style values."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from algorithms.base import Batch
from algorithms.nets import MLP


class EnsembleCritic(nn.Module):
    """K critics Q_k(s, a) on [s, a] (GELU, LayerNorm), run as one batched matmul.

    (obs (*S, B, obs), actions (*S, B, D)) -> Q values (*S, K, B)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        num_critics: int,
        *,
        stack: Sequence[int] = (),
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.num_critics = num_critics
        self.net = MLP(
            obs_dim + action_dim, 1, hidden_dims, stack=(*stack, num_critics), layer_norm=layer_norm
        )

    def forward(self, obs: Tensor, actions: Tensor, frozen: bool = False) -> Tensor:
        """`frozen=True` gives the critic's values with no gradient to its parameters (the
        gradient still flows to `actions`), as actor losses need."""
        inputs = torch.cat([obs, actions], dim=-1).unsqueeze(-3)  # broadcast over members
        return self.net(inputs, frozen).squeeze(-1)


def pessimistic_value(qs: Tensor, rho: float) -> Tensor:
    """mean_k Q_k - rho * std_k Q_k with the population std; (*S, K, B) -> (*S, B)."""
    mean = qs.mean(-2)
    if rho == 0:
        return mean
    return mean - rho * qs.std(-2, unbiased=False)


def chunked_td_target(batch: Batch, next_value: Tensor, discount: float, horizon: int) -> Tensor:
    """y = R_H + gamma^H * m_H * V(s_{t+H}); `next_value` (*S, B) is evaluated at the last
    valid step's next observation."""
    return batch.rewards[..., -1] + discount**horizon * batch.masks[..., -1] * next_value


def critic_loss(qs: Tensor, target: Tensor, valid_last: Tensor) -> Tensor:
    """Mean over K x B of valid * (Q_k - y)^2; qs (*S, K, B), target and valid (*S, B) -> (*S,)."""
    return ((qs - target.unsqueeze(-2)).pow(2) * valid_last.unsqueeze(-2)).mean((-2, -1))


def expectile_loss(diff: Tensor, expectile: float) -> Tensor:
    """|e - 1(diff < 0)| * diff^2, elementwise; diff = target - prediction. Minimising its mean
    over a sample of targets puts the prediction at their e-expectile (e = 0.5: the mean)."""
    weight = torch.where(diff >= 0, expectile, 1 - expectile)
    return weight * diff.pow(2)
