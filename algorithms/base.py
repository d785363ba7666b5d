"""The Agent contract: what every method implements and what the harness may rely on.

An agent owns its networks, optimiser and random generators. Methods write one function,
`loss(batch)`, that returns the summed loss of one update; the base class turns it into a
gradient step (backward, Polyak targets from the pre-step parameters, optional gradient
clipping, one optimiser step).

Stacked seeds: an agent built with several seeds holds every parameter with a leading
`stack` dimension (one entry per seed) and receives batches shaped (*stack, B, ...). Methods
therefore reduce over trailing (batch, action) dimensions only and return a loss of shape
`self.stack`; with a single seed `stack == ()` and everything is the familiar (B, ...) case.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class EnvSpec:
    """What a method needs to know about the task."""

    obs_dim: int
    action_dim: int
    horizon: int = 1  # action chunk length H; 1 = no chunking
    discount: float = 0.99

    @property
    def chunk_dim(self) -> int:
        """Size of one flattened action chunk, H * |A|."""
        return self.horizon * self.action_dim


@dataclass
class Batch:
    """A batch of action chunks; leading dims (*stack, B). See DESIGN.md."""

    observations: Tensor  # (*S, B, obs)
    actions: Tensor  # (*S, B, H, act)
    rewards: Tensor  # (*S, B, H) discounted reward sums up to each step
    masks: Tensor  # (*S, B, H)
    valid: Tensor  # (*S, B, H) 0 after an episode ends inside the chunk
    terminals: Tensor  # (*S, B, H)
    next_observations: Tensor  # (*S, B, H, obs)

    @property
    def flat_actions(self) -> Tensor:
        """Chunks flattened step-major: (*S, B, H * act)."""
        return self.actions.flatten(-2)

    def tensors(self) -> tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in self.tensors()))


@dataclass
class BaseConfig:
    """Fields the harness reads from every method's config."""

    batch_size: int = 256


class Agent(nn.Module):
    """Base class of every method. Subclasses set `name`, `Config`, build their networks in
    `__init__` (after calling `super().__init__`), call `self.setup_optimizer(...)` once, and
    implement `loss` and `act`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = BaseConfig
    # Evaluation-time parameters and their defaults, e.g. {"guidance_weight": 0.02}.
    eval_params: ClassVar[dict[str, float]] = {}
    # Whether the method follows the stacked-seed rules (trailing-dim reductions only).
    supports_seed_stack: ClassVar[bool] = True

    def __init__(
        self, spec: EnvSpec, config: Any, *, device: torch.device | str = "cpu", seed: int | Sequence[int] = 0
    ) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.device = torch.device(device)
        seeds = [seed] if isinstance(seed, int) else list(seed)
        self.stack: tuple[int, ...] = () if isinstance(seed, int) else (len(seeds),)
        self.generator = torch.Generator(self.device).manual_seed(seeds[0])
        self.act_generator = torch.Generator(self.device).manual_seed(seeds[0] + 1_000_003)
        self.optimizer: torch.optim.Optimizer | None = None
        self.max_grad_norm: float | None = None
        self._target_pairs: list[tuple[nn.Module, nn.Module]] = []
        self.target_tau = 0.0

    # --- what a method implements -------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of one update (shape `self.stack`) and metrics (each shape `self.stack`)."""
        raise NotImplementedError

    def act(self, obs: Tensor, **eval_params: float) -> Tensor:
        """Action chunks (*stack, B, H * act) in [-1, 1] for observations (*stack, B, obs)."""
        raise NotImplementedError

    # --- helpers for methods --------------------------------------------------------
    def setup_optimizer(
        self,
        parameters: Iterable[nn.Parameter],
        *,
        lr: float,
        max_grad_norm: float | None = None,
        targets: Sequence[tuple[nn.Module, nn.Module]] = (),
        target_tau: float = 0.005,
    ) -> None:
        """One Adam over `parameters`; `targets` lists (target, online) pairs kept by Polyak
        averaging after every update; `max_grad_norm` clips the global norm (per seed)."""
        self.optimizer = torch.optim.Adam(list(parameters), lr=lr)
        self.max_grad_norm = max_grad_norm
        self._target_pairs = list(targets)
        self.target_tau = target_tau
        for target, online in self._target_pairs:
            target.load_state_dict(online.state_dict())
            target.requires_grad_(False)

    def randn(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(shape, generator=generator or self.generator, device=self.device)

    def rand(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.rand(shape, generator=generator or self.generator, device=self.device)

    def obs_batch_shape(self, obs: Tensor) -> tuple[int, ...]:
        """The leading (*stack, B) shape of an observation tensor."""
        return tuple(obs.shape[:-1])

    # --- the generic update -----------------------------------------------------------
    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step. Returns metrics as floats (a list of floats per metric when seeds
        are stacked)."""
        assert self.optimizer is not None, f"{type(self).__name__} never called setup_optimizer"
        loss, metrics = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        self._polyak_update()
        if self.max_grad_norm is not None:
            grad_norm = clip_grad_norm_stacked(self._trainable(), self.max_grad_norm, len(self.stack))
            metrics = {**metrics, "grad_norm": grad_norm}
        self.optimizer.step()
        return metrics_to_python({**metrics, "loss": loss.detach()})

    def _trainable(self) -> list[Tensor]:
        assert self.optimizer is not None
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @torch.no_grad()
    def _polyak_update(self) -> None:
        # Runs before the optimiser step, so targets move toward this step's pre-update
        # parameters, as in the reference implementations.
        for target, online in self._target_pairs:
            torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), self.target_tau)

    # --- checkpointing ------------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Networks, targets, optimiser and RNG states (plain nn.Module behaviour when called
        with arguments, e.g. by a parent module)."""
        if args or kwargs:
            return super().state_dict(*args, **kwargs)
        return {
            "modules": super().state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "generator": self.generator.get_state(),
            "act_generator": self.act_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if "modules" not in state:
            return super().load_state_dict(state, *args, **kwargs)
        result = super().load_state_dict(state["modules"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.act_generator.set_state(state["act_generator"])
        return result


def clip_grad_norm_stacked(params: list[Tensor], max_norm: float, stack_ndim: int) -> Tensor:
    """Clip gradients to a global norm computed separately for every stacked seed.

    With stack_ndim == 0 this is torch.nn.utils.clip_grad_norm_. Returns the norms before
    clipping (shape = the stack shape)."""
    grads = [p.grad for p in params if p.grad is not None]
    if stack_ndim == 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    squares = [g.pow(2).flatten(stack_ndim).sum(-1) for g in grads]
    norm = torch.stack(squares).sum(0).sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(scale.shape + (1,) * (g.dim() - stack_ndim)))
    return norm


def metrics_to_python(metrics: dict[str, Tensor]) -> dict[str, Any]:
    """One device sync for all metrics; floats, or lists of floats for stacked seeds."""
    names = list(metrics)
    values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32).detach() for k in names])
    values = values.cpu().tolist()
    return dict(zip(names, values, strict=True))


def is_finite_metrics(metrics: dict[str, Any]) -> tuple[bool, str | None]:
    """(True, None) when every metric is finite, else (False, name of the first bad one)."""
    for name, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            return False, name
    return True, None
