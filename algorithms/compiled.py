"""The compiled update: one method's loss, backward pass and gradient clipping as one torch.compile graph.

`Agent.update` stays the one place where a step happens; after `agent.use_compiled_update()` it
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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from algorithms.base import _TAPE, Batch, PlannedDraw

if TYPE_CHECKING:
    from algorithms.base import Agent


RECOMPILE_LIMIT = 256


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
        if shape not in self.plans:
            self.plans[shape] = plan_draws(self.agent, batch)
        plan, names = self.plans[shape]
        draws = [planned.draw() for planned in plan]
        # One graph per (method, config, batch shape); a process that builds many agents (tests,
        # stacked and lone seeds side by side) keeps them all.
        try:
            with torch._dynamo.config.patch(trace_autograd_ops=True, recompile_limit=RECOMPILE_LIMIT):
                return names, self.compiled(batch, draws)
        finally:
            _TAPE.replay = None  # an update that raised must not leave later draws on the tape


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
