"""Networks with stacked parameters.

Every module here holds its parameters with leading `stack` dimensions: `()` for one network,
`(K,)` for an ensemble of K members, `(S,)` or `(S, K)` when S seeds are trained together.
All members run as one batched matmul, never a Python loop over modules. Inputs are shaped
(*stack, B, features) or, for a member-less input shared by an ensemble, (*outer, B, features)
with the member dimension broadcast.

Matches the reference implementations: hidden layer = Linear -> GELU(tanh) [-> LayerNorm(eps
1e-6)], xavier-uniform weights (output layer too), zero biases, members initialised
independently. The QGF pieces at the end (time embedding, NormFirstMLP, EmbeddedTimeVelocityField)
follow the QGF reference's networks instead, which differ in these details.

GELU and Mish run through `gelu_tanh` and `mish`: torch's own functions eagerly, exp forms of the
same functions inside a compiled update (algorithms/compiled.py), where they are much cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_GELU_SCALE = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
# Read while torch.compile traces a network (Dynamo guards on it, so a change makes a new graph).
# tests/test_compiled.py turns it off to check that capture alone changes no bit of an update.
EXP_FORMS_WHEN_COMPILED = True
MISH_LINEAR_FROM = 20.0  # tanh(softplus(x)) is 1 in float32 from here on (1 - 1e-17 at 20)


class _ExpFormActivation(torch.autograd.Function):
    """An elementwise activation whose written-out derivative is computed from its input alone:
    subclasses give `forward(x)` and `backward(ctx, grad)`, which reads x from ctx.saved_tensors."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.save_for_backward(inputs[0])


class _SigmoidGelu(_ExpFormActivation):
    """GELU(tanh) as x * sigmoid(2 u), for compiled graphs. The derivative is written out (and is
    itself differentiable, for losses that differentiate a gradient): left to autograd, the
    sigmoid form's derivative met an Inductor fault in torch 2.13 (a critic's first-layer gradient
    1-3% off in FQL's graph), which this form does not."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x * torch.sigmoid(_GELU_SCALE * (x + _GELU_CUBIC * x * x * x))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        x_sq = x * x
        s = torch.sigmoid(_GELU_SCALE * (x + _GELU_CUBIC * x_sq * x))
        return grad * (s + _GELU_SCALE * x * s * (1 - s) * (1 + 3 * _GELU_CUBIC * x_sq))


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with the tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3).

    Inside a compiled graph it is written x * sigmoid(2 u), the same function (1 + tanh(u) =
    2 sigmoid(2 u)) up to float rounding: Inductor's vectorised tanh on CPU costs about twice its
    sigmoid, and GELU and its derivative were a fifth of a compiled update's time."""
    if EXP_FORMS_WHEN_COMPILED and torch.compiler.is_compiling():
        return _SigmoidGelu.apply(x)
    return F.gelu(x, approximate="tanh")


def _mish_parts(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(e, n, tanh(softplus(x))) with e = exp(x) and n = e (e + 2), so tanh(softplus(x)) = n / (n + 2)."""
    e = torch.exp(x.clamp(max=MISH_LINEAR_FROM))
    n = e * (e + 2)
    return e, n, n / (n + 2)


class _ExpFormMish(_ExpFormActivation):
    """Mish, x tanh(softplus(x)), from one exp (see `mish`), with its derivative written out:
    d/dx = tanh(softplus(x)) + x (1 - tanh^2(softplus(x))) sigmoid(x), where 1 - tanh^2 =
    (4 n + 4) / (n + 2)^2 and sigmoid(x) = e / (1 + e)."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x * _mish_parts(x)[2]

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        e, n, t = _mish_parts(x)
        return grad * (t + x * (4 * n + 4) / (n + 2) ** 2 * e / (1 + e))


def mish(x: Tensor) -> Tensor:
    """Mish, x tanh(softplus(x)). Inside a compiled graph it is x n / (n + 2) with n = e^x (e^x + 2),
    the same function up to float rounding (tanh(log(1 + e^x)) = ((1 + e^x)^2 - 1) / ((1 + e^x)^2 + 1)),
    from one exp instead of Inductor's costly vectorised tanh and log1p."""
    if EXP_FORMS_WHEN_COMPILED and torch.compiler.is_compiling():
        return _ExpFormMish.apply(x)
    return F.mish(x)


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
        if weight.shape[-1] == 1:
            # A critic's one-output head: a batched product with one column is about 5x slower on
            # a CPU than this product and sum (151 against 31 us for two 256 x 256 members).
            return (x * weight.transpose(-1, -2)).sum(-1, keepdim=True) + bias
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


def _float32_out(x: Tensor) -> Tensor:
    """A network's output in float32 when autocast made it reduced (algorithms/precision.py: the
    products inside are bfloat16, what the losses and actions see is float32); float32 and float64
    outputs as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


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
                x = gelu_tanh(x)
                if self.layer_norm and not self.norm_first:
                    x = self.norms[i](x, frozen)
        return _float32_out(x.reshape(*x.shape[:n_stack], *batch_shape, x.shape[-1]) if flatten else x)


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
    """Fixed sinusoidal features of flow times, as the QGF reference computes them:
    (..., 1) -> (..., dim) = [cos(t' f_0), ..., cos(t' f_{h-1}), sin(t' f_0), ..., sin(t' f_{h-1})]
    with t' = max_period * t, f_i = max_period^(-i / h), h = dim / 2. For t in [0, 1] and the
    default period the angular frequencies per unit t run from 10000 down to 10000^(1/h) (about
    3.2 for dim 16), so the features change over the flow's time range. `dim` must be even."""
    half = dim // 2
    frequencies = max_period ** (-torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = (max_period * t) * frequencies
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class NormFirstMLP(MLP):
    """An MLP whose hidden layers are Linear -> LayerNorm -> GELU (normalise before the
    activation), the QGF reference's layout; same parameters as MLP(..., layer_norm=True).
    With `norm_last_hidden=False` the last hidden layer is Linear -> GELU without a LayerNorm,
    as in the QGF reference's actor."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        activate_final: bool = False,
        norm_last_hidden: bool = True,
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
        if not norm_last_hidden and hidden_dims:
            del self.norms[len(hidden_dims) - 1 :]  # also the final norm when activate_final

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
                if i < len(self.norms):
                    x = self.norms[i](x, frozen)
                x = gelu_tanh(x)
        return _float32_out(x.reshape(*x.shape[:n_stack], *batch_shape, x.shape[-1]) if flatten else x)


# Flax's lecun_normal draws from a normal truncated at +-2 standard deviations and rescales it so
# that the drawn weights have standard deviation sqrt(1 / fan_in); this is that rescaling factor
# (the standard deviation of a unit normal truncated at +-2).
_TRUNCATED_NORMAL_STD = 0.87962566103423978
OUTPUT_INITS = ("xavier", "lecun")


@torch.no_grad()
def lecun_normal_(weight: Tensor) -> Tensor:
    """Fill a stacked weight (*stack, fan_in, fan_out) in place with Flax's lecun_normal: a
    truncated normal whose standard deviation is 1 / sqrt(fan_in), every entry independent."""
    std = 1.0 / math.sqrt(weight.shape[-2]) / _TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


class EmbeddedTimeVelocityField(nn.Module):
    """v(s, x, t) with the QGF reference's actor switches:

    - `layer_norm`: hidden layers Linear -> LayerNorm -> GELU, except the last hidden layer,
      which is Linear -> GELU (the reference leaves its LayerNorm off);
    - `time_embedding_dim` > 0: t enters as that many sinusoidal features instead of a raw scalar;
    - `output_init="lecun"`: the output layer's weights are lecun-normal (Flax's default for a
      Dense layer) instead of xavier-uniform.

    With every switch off it is VelocityField (same parameters, same initialisation, same outputs)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        *,
        stack: Sequence[int] = (),
        layer_norm: bool = False,
        time_embedding_dim: int = 0,
        output_init: str = "xavier",
    ) -> None:
        super().__init__()
        if time_embedding_dim and (time_embedding_dim < 2 or time_embedding_dim % 2):
            raise ValueError(
                f"time_embedding_dim must be 0 or a positive even number, got {time_embedding_dim}"
            )
        if output_init not in OUTPUT_INITS:
            raise ValueError(f"output_init must be one of {', '.join(OUTPUT_INITS)}, got {output_init!r}")
        self.time_embedding_dim = time_embedding_dim
        in_dim = obs_dim + action_dim + (time_embedding_dim or 1)
        if layer_norm:
            self.net: MLP = NormFirstMLP(in_dim, action_dim, hidden_dims, stack=stack, norm_last_hidden=False)
        else:
            self.net = MLP(in_dim, action_dim, hidden_dims, stack=stack)
        if output_init == "lecun":
            lecun_normal_(self.net.linears[-1].weight)

    def forward(self, obs: Tensor, x: Tensor, t: Tensor | float, frozen: bool = False) -> Tensor:
        if not isinstance(t, Tensor) or t.dim() == 0:
            t = torch.full((*x.shape[:-1], 1), float(t), device=x.device, dtype=x.dtype)
        if self.time_embedding_dim:
            t = sinusoidal_time_embedding(t, self.time_embedding_dim)
        return self.net(torch.cat([obs, x, t], dim=-1), frozen)
