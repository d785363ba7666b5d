"""Networks with stacked parameters.

Every module here holds its parameters with leading `stack` dimensions: `()` for one network,
`(K,)` for an ensemble of K members, `(S,)` or `(S, K)` when S seeds are trained together.
All members run as one batched matmul, never a Python loop over modules. Inputs are shaped
(*stack, B, features) or, for a member-less input shared by an ensemble, (*outer, B, features)
with the member dimension broadcast.

Matches the reference implementations: hidden layer = Linear -> GELU(tanh) [-> LayerNorm(eps
1e-6)], xavier-uniform weights (output layer too), zero biases, members initialised
independently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class StackedLinear(nn.Module):
    """y = x W + b with an independent (W, b) for every entry of `stack`."""

    def __init__(self, in_dim: int, out_dim: int, stack: Sequence[int] = ()) -> None:
        super().__init__()
        self.stack = tuple(stack)
        bound = math.sqrt(6.0 / (in_dim + out_dim))  # xavier-uniform of one member
        self.weight = nn.Parameter(torch.empty(*self.stack, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(*self.stack, 1, out_dim))

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        weight, bias = (self.weight.detach(), self.bias.detach()) if frozen else (self.weight, self.bias)
        if not self.stack:
            return torch.addmm(bias[0], x, weight) if x.dim() == 2 else torch.matmul(x, weight) + bias[0]
        if x.dim() == 3 and x.shape[:-2] == weight.shape[:-2]:  # one stack dim, no broadcast: bias add fused
            return torch.baddbmm(bias, x, weight)
        return torch.matmul(x, weight) + bias


class StackedLayerNorm(nn.Module):
    def __init__(self, dim: int, stack: Sequence[int] = (), eps: float = 1e-6) -> None:
        super().__init__()
        self.stack = tuple(stack)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(*self.stack, 1, dim))
        self.bias = nn.Parameter(torch.zeros(*self.stack, 1, dim))

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        weight, bias = (self.weight.detach(), self.bias.detach()) if frozen else (self.weight, self.bias)
        if not self.stack:
            return F.layer_norm(x, x.shape[-1:], weight[0], bias[0], self.eps)
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=self.eps), weight)


class MLP(nn.Module):
    """Linear -> GELU -> [LayerNorm] hidden layers and a linear output layer; with `norm_first`
    (and `layer_norm`) the hidden layers are Linear -> LayerNorm -> GELU instead.

    Input (*stack, B, in) -> (*stack, B, out). Batch dims beyond one are flattened and
    restored, so (*stack, B1, B2, in) works too."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        layer_norm: bool = False,
        activate_final: bool = False,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.stack = tuple(stack)
        dims = [in_dim, *hidden_dims, out_dim]
        self.linears = nn.ModuleList(StackedLinear(a, b, self.stack) for a, b in zip(dims[:-1], dims[1:]))
        n_norms = len(hidden_dims) + (1 if activate_final else 0) if layer_norm else 0
        self.norms = nn.ModuleList(StackedLayerNorm(d, self.stack) for d in dims[1 : 1 + n_norms])
        self.layer_norm = layer_norm
        self.activate_final = activate_final
        self.norm_first = norm_first

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        n_stack = len(self.stack)
        batch_shape = x.shape[n_stack:-1]
        flatten = len(batch_shape) != 1
        if flatten:
            x = x.reshape(*x.shape[:n_stack], -1, x.shape[-1])
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            x = linear(x, frozen)
            if i < last or self.activate_final:
                if self.layer_norm and self.norm_first:
                    x = self.norms[i](x, frozen)
                x = F.gelu(x, approximate="tanh")
                if self.layer_norm and not self.norm_first:
                    x = self.norms[i](x, frozen)
        return x.reshape(*x.shape[:n_stack], *batch_shape, x.shape[-1]) if flatten else x


class VelocityField(nn.Module):
    """v(s, x, t): an MLP on [s, x, t] with t a raw scalar per sample (no LayerNorm)."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden_dims: Sequence[int], *, stack: Sequence[int] = ()
    ) -> None:
        super().__init__()
        self.net = MLP(obs_dim + action_dim + 1, action_dim, hidden_dims, stack=stack)

    def forward(self, obs: Tensor, x: Tensor, t: Tensor | float, frozen: bool = False) -> Tensor:
        if not isinstance(t, Tensor) or t.dim() == 0:
            t = torch.full((*x.shape[:-1], 1), float(t), device=x.device, dtype=x.dtype)
        return self.net(torch.cat([obs, x, t], dim=-1), frozen)


class TanhGaussian(nn.Module):
    """Tanh-squashed Gaussian policy head on an MLP trunk (last hidden layer activated),
    with a state-dependent log-std clipped to [log_std_min, log_std_max]."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        log_std_min: float = -20.0,
        log_std_max: float = 2.0,
    ) -> None:
        super().__init__()
        self.trunk = MLP(in_dim, hidden_dims[-1], hidden_dims[:-1], stack=stack, activate_final=True)
        self.mean = StackedLinear(hidden_dims[-1], out_dim, stack)
        self.log_std = StackedLinear(hidden_dims[-1], out_dim, stack)
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised sample in (-1, 1) and its log-probability (summed over dims)."""
        h = self.trunk(x)
        mean = self.mean(h)
        log_std = self.log_std(h).clamp(self.log_std_min, self.log_std_max)
        pre_tanh = mean + log_std.exp() * noise
        gaussian_log_prob = (-0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), the numerically stable form.
        log_det = (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), gaussian_log_prob - log_det


def sinusoidal_time_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Fixed sinusoidal features of flow times: (..., 1) -> (..., dim) = [cos(t f_i), sin(t f_i)]
    with f_i = max_period^(-i / (dim/2 - 1)), i = 0 .. dim/2 - 1 (the transformer / jaxrl5
    FourierFeatures form without learned frequencies). `dim` must be even and at least 4."""
    half = dim // 2
    exponents = torch.arange(half, device=t.device, dtype=t.dtype) / (half - 1)
    angles = t * max_period ** (-exponents)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class NormFirstMLP(MLP):
    """An MLP whose hidden layers are Linear -> LayerNorm -> GELU (normalise before the
    activation); same parameters as MLP(..., layer_norm=True)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        activate_final: bool = False,
    ) -> None:
        super().__init__(
            in_dim,
            out_dim,
            hidden_dims,
            stack=stack,
            layer_norm=True,
            activate_final=activate_final,
            norm_first=True,
        )


class EmbeddedTimeVelocityField(nn.Module):
    """v(s, x, t) with the QGF paper's actor switches: hidden layers Linear -> LayerNorm -> GELU
    when `layer_norm`, and t entering as `time_embedding_dim` sinusoidal features instead of a
    raw scalar when `time_embedding_dim` > 0. With both off it is VelocityField (same parameters,
    same initialisation, same outputs)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        layer_norm: bool = False,
        time_embedding_dim: int = 0,
    ) -> None:
        super().__init__()
        if time_embedding_dim and (time_embedding_dim < 4 or time_embedding_dim % 2):
            raise ValueError(f"time_embedding_dim must be 0 or an even number >= 4, got {time_embedding_dim}")
        self.time_embedding_dim = time_embedding_dim
        in_dim = obs_dim + action_dim + (time_embedding_dim or 1)
        mlp = NormFirstMLP if layer_norm else MLP
        self.net = mlp(in_dim, action_dim, hidden_dims, stack=stack)

    def forward(self, obs: Tensor, x: Tensor, t: Tensor | float, frozen: bool = False) -> Tensor:
        if not isinstance(t, Tensor) or t.dim() == 0:
            t = torch.full((*x.shape[:-1], 1), float(t), device=x.device, dtype=x.dtype)
        if self.time_embedding_dim:
            t = sinusoidal_time_embedding(t, self.time_embedding_dim)
        return self.net(torch.cat([obs, x, t], dim=-1), frozen)
