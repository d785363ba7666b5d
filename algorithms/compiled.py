"""The compiled update: one method's loss, backward pass and gradient clipping as one torch.compile graph.

`Agent.update` stays the one place where a step happens; after `use_compiled_update(agent)` it
calls a `CompiledUpdate` instead of the eager `Agent.gradient_step`. Three things make the step
capture as a single graph (`fullgraph=True`) without changing its mathematics:

- Random draws. A torch.Generator cannot enter a graph, so the draws of one update are planned
  once (the first batch's loss is run with the generators' states saved, recording each draw's
  function, shape and generator in call order, then the states are restored) and, before every
  compiled call, made eagerly from the same generators in the same order. The compiled loss takes
  them in that order (`algorithms.base._TAPE`), so it sees the very numbers the eager update
  would have drawn, and the generators end in the same state.
- The backward pass, and the `torch.autograd.grad` calls inside some losses (QAM's adjoint, QGF's
  guidance), are traced into the graph (Dynamo's `trace_autograd_ops`).
- Static shapes: the plan and the graph are made for one batch shape; another shape (a stack
  that lost a diverged seed) makes a new plan and a new graph.

Polyak averaging and the fused Adam step stay outside the graph: each is one multi-tensor kernel
already, and torch's optimizer step breaks graphs on purpose.

The first compiled call for each batch shape is checked against the eager update: the same state,
batch and draws run eagerly too, and the two gradients must agree to MISMATCH_TOLERANCE of each
parameter's largest gradient (float32 rounding gives about 1e-6 here; bf16 has its own tolerance,
algorithms/precision.py). A compiler fault that gets the mathematics wrong (one was met: torch
2.13's Inductor mis-computed a critic's first-layer gradient by 1-3% when GELU's sigmoid form was
differentiated by autograd) then costs one warning and the rest of the run eagerly, never a wrong
run.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from algorithms.base import _TAPE, Agent, Batch, PlannedDraw
from algorithms.precision import COMPILED_TOLERANCE

RECOMPILE_LIMIT = 256
# Of a parameter's largest eager gradient: float32 rounding gives about 1e-6; in bf16 the compiler
# keeps some intermediates in float32 that the eager update rounds (algorithms/precision.py).
MISMATCH_TOLERANCE = COMPILED_TOLERANCE
MISMATCH_FLOOR = 1e-6  # absolute, for parameters whose gradient is zero up to rounding


class CompiledUpdateMismatch(UserWarning):
    """The compiled update's gradients differ from the eager update's: the run goes on eagerly."""


def use_compiled_update(agent: Agent, *, backend: str = "inductor", mode: str | None = None) -> None:
    """Run every later `agent.update` with its loss, backward pass and clipping compiled into one
    graph by torch.compile (the same mathematics; float rounding may differ)."""
    agent.compiled_update = CompiledUpdate(agent, backend=backend, mode=mode)


class CompiledUpdate:
    """Callable like `Agent.gradient_step(batch)`: (metric names, values) of one update, with the
    loss, backward pass and clipping run as one compiled graph."""

    def __init__(self, agent: Agent, *, backend: str = "inductor", mode: str | None = None) -> None:
        self.agent = agent
        self.compiled = torch.compile(self._values, fullgraph=True, dynamic=False, backend=backend, mode=mode)
        self.plans: dict[tuple[int, ...], tuple[list[PlannedDraw], list[str]]] = {}

    def _values(self, batch: Batch, draws: list[Tensor]) -> Tensor:
        return self.agent.gradient_step(batch, draws)[1]

    def __call__(self, batch: Batch) -> tuple[list[str], Tensor]:
        shape = tuple(batch.observations.shape)
        first_call = shape not in self.plans
        if first_call:
            self.plans[shape] = plan_draws(self.agent, batch)
        plan, names = self.plans[shape]
        draws = [planned.draw() for planned in plan]
        if first_call:
            return names, self._checked_call(batch, draws)
        return names, self._call(batch, draws)

    def _call(self, batch: Batch, draws: list[Tensor]) -> Tensor:
        # One graph per (method, config, batch shape); a process that builds many agents (tests,
        # stacked and lone seeds side by side) keeps them all.
        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True, recompile_limit=RECOMPILE_LIMIT):
                return self.compiled(batch, draws)
        finally:
            _TAPE.replay = None  # an update that raised must not leave later draws on the tape

    def _checked_call(self, batch: Batch, draws: list[Tensor]) -> Tensor:
        """The compiled call, after the eager update on the same state, batch and draws; when their
        gradients disagree, warns, keeps the eager gradients and turns compiling off for the agent."""
        params = self.agent._trainable()
        _, eager_values = self.agent.gradient_step(batch, draws)
        eager_grads = [param.grad for param in params]
        for param in params:
            param.grad = None
        values = self._call(batch, draws)
        tolerance = MISMATCH_TOLERANCE[self.agent.precision]
        mismatch = gradient_mismatch(eager_grads, [param.grad for param in params], tolerance)
        if mismatch is None:
            return values
        index, error = mismatch
        param_names = {id(param): name for name, param in self.agent.named_parameters()}
        warnings.warn(
            f"the compiled update of {self.agent.name} disagrees with the eager update: the gradient "
            f"of {param_names.get(id(params[index]), index)} differs by {error:.2g} of its largest entry "
            f"(tolerance {tolerance:g} in {self.agent.precision}); a compiler fault, so this run goes on eagerly "
            "(report it with your torch version)",
            CompiledUpdateMismatch,
            stacklevel=2,
        )
        for param, grad in zip(params, eager_grads):
            param.grad = grad
        self.agent.compiled_update = None
        return eager_values


def gradient_mismatch(
    eager: list[Tensor | None], compiled: list[Tensor | None], tolerance: float = MISMATCH_TOLERANCE["fp32"]
) -> tuple[int, float] | None:
    """The first parameter (its index and error relative to its largest eager gradient) whose
    compiled gradient is off by more than `tolerance` of that, plus MISMATCH_FLOOR; None
    when every gradient agrees. A gradient that is not finite in the eager update (a diverging
    run, which the harness stops by itself) says nothing about the compiler and is skipped."""
    for index, (want, got) in enumerate(zip(eager, compiled)):
        if want is None or got is None:
            if want is not got:
                return index, float("inf")
            continue
        if not torch.isfinite(want).all():
            continue
        scale = want.abs().max().item()
        error = (got - want).abs().max().item()
        if not error <= tolerance * scale + MISMATCH_FLOOR:  # NaN counts as a mismatch
            return index, error / scale if scale else float("inf")
    return None


def plan_draws(agent: Agent, batch: Batch) -> tuple[list[PlannedDraw], list[str]]:
    """The draws one update of `agent` makes on batches shaped like `batch`, in call order, and
    the names of its metrics. Leaves the agent's parameters and generators as they were."""
    states = agent.generator.get_state(), agent.act_generator.get_state()
    _TAPE.recording = []
    try:
        _, metrics = agent.loss(batch)
        plan = _TAPE.recording
    finally:
        _TAPE.recording = None
        agent.generator.set_state(states[0])
        agent.act_generator.set_state(states[1])
    names = [*metrics, *(["grad_norm"] if agent.max_grad_norm is not None else []), "loss"]
    return plan, names
