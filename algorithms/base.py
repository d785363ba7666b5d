"""The Agent contract: what every method implements and what the harness may rely on.

An agent owns its networks, optimiser and random generators. Methods write one function,
`loss(batch)`, that returns the summed loss of one update; the base class turns it into a
gradient step (backward, Polyak targets from the pre-step parameters, optional gradient
clipping, one optimiser step).

Stacked seeds: an agent built with several seeds holds every parameter with a leading
`stack` dimension (one entry per seed) and receives batches shaped (*stack, B, ...). Methods
therefore reduce over trailing (batch, action) dimensions only and return a loss of shape
`self.stack`; with a single seed `stack == ()` and everything is the familiar (B, ...) case.

Every stacked seed has its own random streams: `self.generator` and `self.act_generator` are then
a `GeneratorStack` (one torch.Generator per seed), `randn`/`rand` draw each seed's slice from its
own generator, and `registry.create` initialises each seed's slice of the networks as a lone
agent of that seed. Seed k in a stack therefore draws the same random numbers as seed k trained
alone; `slice_agent_state` and `stack_agent_states` convert between a stacked agent's state and
the lone agents' states (networks, optimiser, generators).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from algorithms import precision as precisions
from algorithms import values

ACT_SEED_OFFSET = 1_000_003  # the acting generator of seed s starts from seed s + this
FUSED_ADAM_DEVICES = ("cpu", "cuda")


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
    """A batch of action chunks; leading dims (*stack, B). See docs/records.md."""

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


class GeneratorStack:
    """One torch.Generator per stacked seed, used where a lone agent uses one generator: draws
    with `randn`/`rand` give each seed the numbers its own generator gives it alone. States are
    a (S, n) uint8 tensor, one row per seed."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def __len__(self) -> int:
        return len(self.generators)

    def __iter__(self) -> Iterator[torch.Generator]:
        return iter(self.generators)

    def __getitem__(self, index: int) -> torch.Generator:
        return self.generators[index]

    @property
    def device(self) -> torch.device:
        return self.generators[0].device

    def get_state(self) -> Tensor:
        return torch.stack([g.get_state() for g in self.generators])

    def set_state(self, states: Tensor | Sequence[Tensor]) -> GeneratorStack:
        if len(states) != len(self.generators):
            raise ValueError(f"{len(states)} generator states for a stack of {len(self.generators)}")
        for g, state in zip(self.generators, states):
            g.set_state(state.clone())  # its own storage: a row of a stacked state will not do
        return self

    def manual_seed(self, seeds: Sequence[int]) -> GeneratorStack:
        if len(seeds) != len(self.generators):
            raise ValueError(f"{len(seeds)} seeds for a stack of {len(self.generators)} generators")
        for g, seed in zip(self.generators, seeds):
            g.manual_seed(int(seed))
        return self


AnyGenerator = torch.Generator | GeneratorStack


def randn(shape: Sequence[int], generator: AnyGenerator, device: torch.device | str | None = None) -> Tensor:
    """Standard normal numbers; from a GeneratorStack, slice i of the leading dimension (which must
    be the stack's length) comes from generator i."""
    return _draw(torch.randn, tuple(shape), generator, device)


def rand(shape: Sequence[int], generator: AnyGenerator, device: torch.device | str | None = None) -> Tensor:
    """Uniform numbers in [0, 1); per-seed slices as in `randn`."""
    return _draw(torch.rand, tuple(shape), generator, device)


def _draw(fn: Any, shape: tuple[int, ...], generator: AnyGenerator, device: Any) -> Tensor:
    device = generator.device if device is None else device
    if _TAPE.replay is not None:
        return _TAPE.take(shape)
    if _TAPE.recording is not None:
        _TAPE.recording.append(PlannedDraw(fn, shape, generator, device))
    return _draw_now(fn, shape, generator, device)


def _draw_now(fn: Any, shape: tuple[int, ...], generator: AnyGenerator, device: Any) -> Tensor:
    if not isinstance(generator, GeneratorStack):
        return fn(shape, generator=generator, device=device)
    if not shape or shape[0] != len(generator):
        raise ValueError(
            f"a draw of shape {shape} from {len(generator)} stacked generators needs them leading"
        )
    return torch.stack([fn(shape[1:], generator=g, device=device) for g in generator])


@dataclass(frozen=True)
class PlannedDraw:
    """One draw of an update, as `randn`/`rand` were asked for it: made again with `draw()`, it
    consumes the generator exactly as the update itself would have."""

    fn: Any
    shape: tuple[int, ...]
    generator: Any
    device: Any

    def draw(self) -> Tensor:
        return _draw_now(self.fn, self.shape, self.generator, self.device)


class _DrawTape:
    """Where `randn`/`rand` record the draws of an update (`recording`) or take them, in call
    order, from tensors drawn before it (`replay`). A compiled update takes its draws this way:
    a torch.Generator cannot enter a compiled graph, and drawing the same shapes from the same
    generators in the same order gives the numbers the eager update draws."""

    def __init__(self) -> None:
        self.recording: list[PlannedDraw] | None = None
        self.replay: Sequence[Tensor] | None = None
        self.position = 0

    def take(self, shape: tuple[int, ...]) -> Tensor:
        assert self.replay is not None
        if self.position >= len(self.replay):
            raise RuntimeError(f"the update drew more than the {len(self.replay)} draws of its plan")
        drawn = self.replay[self.position]
        if tuple(drawn.shape) != shape:
            raise RuntimeError(
                f"draw {self.position} of the plan has shape {tuple(drawn.shape)}, not {shape}"
            )
        self.position += 1
        return drawn


_TAPE = _DrawTape()


def _generators(seeds: Sequence[int], offset: int, device: torch.device, stacked: bool) -> AnyGenerator:
    made = [torch.Generator(device).manual_seed(seed + offset) for seed in seeds]
    return GeneratorStack(made) if stacked else made[0]


@dataclass
class BaseConfig:
    """Fields the harness reads from every method's config. `VALID` declares the valid values of
    the keys many methods share; a method's config adds its own keys' (algorithms/values.py)."""

    VALID: ClassVar[dict[str, values.Valid]] = {
        "batch_size": values.COUNT,
        "hidden_dims": values.LAYER_WIDTHS,
        "num_critics": values.COUNT,
        "rho": values.NON_NEGATIVE,
        "lr": values.POSITIVE,
        "target_tau": values.POLYAK_RATE,
        "max_grad_norm": values.POSITIVE,
        "flow_steps": values.COUNT,
    }

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
        stacked = not isinstance(seed, int)
        self.seeds = seeds
        self.stack: tuple[int, ...] = (len(seeds),) if stacked else ()
        self.generator: AnyGenerator = _generators(seeds, 0, self.device, stacked)
        self.act_generator: AnyGenerator = _generators(seeds, ACT_SEED_OFFSET, self.device, stacked)
        self.optimizer: torch.optim.Optimizer | None = None
        self.max_grad_norm: float | None = None
        self._target_pairs: list[tuple[nn.Module, nn.Module]] = []
        self.target_tau = 0.0
        # In place of `gradient_step` when set (algorithms.compiled.use_compiled_update).
        self.compiled_update: Callable[[Batch], tuple[list[str], Tensor]] | None = None
        # Precision of the products in `loss` and `act` (algorithms.precision.use_precision).
        self.precision = precisions.DEFAULT

    # --- what a method implements -------------------------------------------------
    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of one update (shape `self.stack`) and metrics (each shape `self.stack`)."""
        raise NotImplementedError

    def act(self, obs: Tensor, **eval_params: float) -> Tensor:
        """Action chunks (*stack, B, H * act) in [-1, 1] for observations (*stack, B, obs)."""
        raise NotImplementedError

    @property
    def exploration_params(self) -> dict[str, float]:
        """The evaluation-time parameters the online phase acts with: by default the declared
        defaults (`eval_params`); a method that explores with other values overrides this."""
        return dict(self.eval_params)

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
        # The fused (single-kernel) Adam: about 5x faster than the per-tensor one on a CPU, the
        # same update up to float rounding.
        fused = self.device.type in FUSED_ADAM_DEVICES
        self.optimizer = torch.optim.Adam(list(parameters), lr=lr, fused=fused or None)
        self.max_grad_norm = max_grad_norm
        self._target_pairs = list(targets)
        self.target_tau = target_tau
        for target, online in self._target_pairs:
            target.load_state_dict(online.state_dict())
            target.requires_grad_(False)

    def randn(self, *shape: int, generator: AnyGenerator | None = None) -> Tensor:
        """Normal noise from `generator` (default: the training generator); with stacked seeds
        the shape starts with the stack."""
        return randn(shape, generator or self.generator, self.device)

    def rand(self, *shape: int, generator: AnyGenerator | None = None) -> Tensor:
        return rand(shape, generator or self.generator, self.device)

    def obs_batch_shape(self, obs: Tensor) -> tuple[int, ...]:
        """The leading (*stack, B) shape of an observation tensor."""
        return tuple(obs.shape[:-1])

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """The scope of this agent's computations at its precision (algorithms/precision.py): the
        harness acts inside it (`with agent.computing(): agent.act(obs)`); `update` runs in its
        device settings and `gradient_step` runs the loss in its products' precision."""
        with precisions.device_settings(self.precision, self.device):
            with precisions.products(self.precision, self.device):
                yield

    # --- the generic update -----------------------------------------------------------
    def update(self, batch: Batch) -> Metrics:
        """One gradient step. Returns its metrics as a mapping of floats (a list of floats per
        metric when seeds are stacked), read from the device when first accessed: the step itself
        never waits for the device (`Metrics.tensor` holds them there). After
        `algorithms.compiled.use_compiled_update(agent)` the loss, backward pass and clipping run as
        one compiled graph."""
        assert self.optimizer is not None, f"{type(self).__name__} never called setup_optimizer"
        self.optimizer.zero_grad(set_to_none=True)
        with precisions.device_settings(self.precision, self.device):
            if self.compiled_update is None:
                names, values = self.gradient_step(batch)
            else:
                names, values = self.compiled_update(batch)
        self._polyak_update()
        self.optimizer.step()
        return Metrics(names, values)

    def gradient_step(self, batch: Batch, draws: Sequence[Tensor] | None = None) -> tuple[list[str], Tensor]:
        """Loss, backward pass and gradient clipping of one update; the metric names and their
        values (len(names), *stack). With `draws` the loss takes its random numbers from them, in
        call order, instead of from the generators (how the compiled update runs this)."""
        _TAPE.replay, _TAPE.position = draws, 0
        with precisions.products(self.precision, self.device):
            loss, metrics = self.loss(batch)
        _TAPE.replay = None
        values = {name: torch.as_tensor(value).detach() for name, value in metrics.items()}
        total = loss.sum()
        del metrics  # in a compiled graph no tensor of the loss's graph may outlive its backward pass
        total.backward()
        if self.max_grad_norm is not None:
            values["grad_norm"] = clip_grad_norm_stacked(
                self._trainable(), self.max_grad_norm, len(self.stack)
            )
        values["loss"] = loss.detach()
        return stack_metrics(values, self.stack)

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


class Metrics(Mapping[str, Any]):
    """One update's metrics: name -> float (list of floats with stacked seeds), copied from the
    device in one transfer on first access. `tensor` (len(names), *stack) stays on the device."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, names: list[str], tensor: Tensor) -> None:
        self.names, self.tensor = list(names), tensor
        self._host: dict[str, Any] | None = None

    def _read(self) -> dict[str, Any]:
        if self._host is None:
            self._host = dict(zip(self.names, self.tensor.cpu().tolist(), strict=True))
        return self._host

    def __getitem__(self, name: str) -> Any:
        return self._read()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return f"Metrics({self._read()!r})"


def stack_metrics(metrics: dict[str, Tensor], stack: tuple[int, ...] = ()) -> tuple[list[str], Tensor]:
    """Metric names and their values as one float32 tensor (len(names), *stack), on the device."""
    names = list(metrics)
    values = [torch.as_tensor(metrics[k]).detach().to(torch.float32).expand(stack) for k in names]
    return names, torch.stack(values)


# --- stacked agent states <-> lone agent states -----------------------------------------------
def slice_agent_state(state: Any, index: int) -> Any:
    """The state a lone agent of stacked seed `index` would have: every tensor with a leading
    stack dimension (networks, optimiser moments, generator states) indexed; 0-dim tensors (the
    optimiser's step count) and plain values as they are."""
    if isinstance(state, Tensor):
        return state[index].clone() if state.dim() else state.clone()
    if isinstance(state, dict):
        return {k: slice_agent_state(v, index) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(slice_agent_state(v, index) for v in state)
    return state


def stack_agent_states(states: Sequence[Any]) -> Any:
    """The inverse of `slice_agent_state`: lone agents' states (same method and config, at the
    same step) as the state of one stacked agent."""
    first = states[0]
    if isinstance(first, Tensor):
        if first.dim() == 0:
            return first.clone()
        return torch.stack(list(states))
    if isinstance(first, dict):
        keys = list(first)
        if any(list(s) != keys for s in states):
            raise ValueError("cannot stack agent states with different keys (different methods or steps?)")
        return {k: stack_agent_states([s[k] for s in states]) for k in keys}
    if isinstance(first, (list, tuple)):
        if any(len(s) != len(first) for s in states):
            raise ValueError("cannot stack agent states of different lengths")
        return type(first)(stack_agent_states([s[i] for s in states]) for i in range(len(first)))
    return first
