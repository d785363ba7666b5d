"""The seeds a `Trainer` trains: each seed's run, pending train rows and online acting
(`Member`), its floats of a stacked update's metrics (`member_metrics`), and the device-side
tracker of the first non-finite metrics of each seed (`DivergenceTracker`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from algorithms.base import Metrics
from harness.run import records
from harness.run.online import Explorer
from harness.run.spec import ResolvedRun

DIVERGENCE_CHECK_INTERVAL = 100  # offline steps between reads of the device-side NaN tracker


class DivergenceTracker:
    """The first step at which each seed's metrics stopped being finite, and those metrics, kept on
    the device so that training never waits for it; `check` reads it (one transfer)."""

    def __init__(self, seeds: int, device: torch.device) -> None:
        self.first_step = torch.zeros(seeds, dtype=torch.long, device=device)  # 0: finite so far
        self.values: torch.Tensor | None = None  # (metrics, seeds) at each seed's first bad step
        self.names: list[str] = []

    def record(self, step: int, metrics: Metrics) -> None:
        values = metrics.tensor.reshape(len(metrics.names), -1)
        new = ~torch.isfinite(values).all(0) & (self.first_step == 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.values = values if self.values is None else torch.where(new, values, self.values)
        self.names = metrics.names

    def check(self) -> dict[int, tuple[int, str, float]]:
        """seed index -> (first bad step, first non-finite metric, its value), for every seed
        that went bad."""
        first = self.first_step.cpu().tolist()
        if not any(first):
            return {}
        assert self.values is not None
        values = self.values.cpu().tolist()
        bad = {}
        for index, step in enumerate(first):
            if step:
                row = [values[m][index] for m in range(len(self.names))]
                name, value = next((n, v) for n, v in zip(self.names, row) if not math.isfinite(v))
                bad[index] = (step, name, value)
        return bad

    def keep(self, indices: list[int]) -> None:
        self.first_step = self.first_step[indices]
        self.values = None if self.values is None else self.values[:, indices]


@dataclass
class Member:
    """One seed of a Trainer: its run, its records and its online acting."""

    resolved: ResolvedRun
    run_dir: records.RunDir
    pending_train_rows: list[dict[str, Any]] = field(default_factory=list)
    explorer: Explorer | None = None
    online_state: dict[str, Any] | None = None  # from a checkpoint inside the online phase
    final: str | None = None  # "diverged" once it diverged

    @property
    def seed(self) -> int:
        return self.resolved.spec.seed

    def row_keys(self) -> dict[str, Any]:
        resolved = self.resolved
        return {
            "sweep": resolved.spec.sweep,
            "method": resolved.method.name,
            "variant": resolved.variant,
            "task": resolved.task.task,
            "seed": self.seed,
            "precision": resolved.spec.precision,
        }

    def flush_train_rows(self) -> None:
        self.run_dir.append_rows("train", self.pending_train_rows)
        self.pending_train_rows = []


def member_metrics(metrics: Metrics | dict[str, Any], index: int | None) -> dict[str, Any]:
    """One seed's floats of an update's metrics (`index` None: a lone agent's)."""
    return {k: v if index is None else v[index] for k, v in metrics.items()}
