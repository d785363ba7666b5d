"""Executor options of a sweep: where and how its runs execute (`ExecutorOptions`: local or
Slurm, packing, stacked seeds, Slurm resources), with their checks and Slurm's time syntax."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UserError

EXECUTORS = ("local", "slurm")


@dataclass
class ExecutorOptions:
    """Where and how runs execute. `local`: at most `jobs` processes at once on this machine.
    `slurm`: a job array whose jobs each hold `runs_per_gpu` processes per GPU (one GPU per job by
    default). Every process trains `seeds_per_process` seeds of one (variant, task) stacked, one
    batched update for all of them (harness.run.train.run_group); each seed keeps its own records."""

    kind: str = "local"
    jobs: int = 1
    runs_per_gpu: int = 1
    seeds_per_process: int = 1
    gpus: int = 1
    cpus: int | None = None  # per job (default: one per run)
    mem: str | None = None
    time: str = "4:00:00"  # Slurm time limit per job; at the limit runs checkpoint and the job requeues
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None
    max_requeues: int = 10  # time-limit requeues per job (submitit's max_num_timeout)
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra #SBATCH flags

    def validate(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError(f"unknown executor {self.kind!r}; use one of: {', '.join(EXECUTORS)}")
        for name, minimum in (
            ("jobs", 1),
            ("runs_per_gpu", 1),
            ("seeds_per_process", 1),
            ("gpus", 0),
            ("max_requeues", 0),
        ):
            _check_int(getattr(self, name), minimum, name)
        for name in ("cpus", "array_parallelism"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), 1, name)
        parse_time(self.time)
        if not isinstance(self.sbatch, dict):
            raise UserError(f"executor sbatch must be a table of #SBATCH flags, got {self.sbatch!r}")
        if self.kind == "slurm" and self.jobs != 1:
            raise UserError("--jobs applies to --executor local; on Slurm use --array-parallelism N")
        if self.kind == "local":
            slurm_only = [name for name in _SLURM_ONLY if getattr(self, name) != DEFAULT_EXECUTOR[name]]
            if slurm_only:
                flags = ", ".join(_flag(n) for n in slurm_only)
                raise UserError(f"{flags} apply to --executor slurm; the local executor takes --jobs N")

    @property
    def runs_per_job(self) -> int:
        return 1 if self.kind == "local" else self.runs_per_gpu * max(1, self.gpus)

    @property
    def cpus_per_job(self) -> int:
        return self.cpus or self.runs_per_job

    @property
    def timeout_min(self) -> int:
        return parse_time(self.time)


_SLURM_ONLY = (
    "runs_per_gpu",
    "gpus",
    "time",
    "max_requeues",
    "cpus",
    "mem",
    "partition",
    "account",
    "qos",
    "array_parallelism",
    "sbatch",
)
DEFAULT_EXECUTOR = {f.name: getattr(ExecutorOptions(), f.name) for f in dataclasses.fields(ExecutorOptions)}
_TIME_RE = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int(value: Any, minimum: int, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{_flag(name)} must be an integer >= {minimum}, got {value!r}")


def parse_time(text: str | int) -> int:
    """A Slurm time limit in whole minutes: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS."""
    match = _TIME_RE.match(str(text).strip())
    if match is None:
        raise UserError(f"--time expects MINUTES, HH:MM:SS or D-HH:MM:SS, got {text!r}")
    days, a, b, c = (int(v) if v else 0 for v in match.group("days", "a", "b", "c"))
    if match.group("days"):
        seconds = days * 86400 + a * 3600 + b * 60 + c
    elif match.group("c"):
        seconds = a * 3600 + b * 60 + c
    else:
        seconds = a * 60 + b
    if seconds <= 0:
        raise UserError(f"--time must be positive, got {text!r}")
    return math.ceil(seconds / 60)
