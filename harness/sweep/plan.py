"""Sweeps: methods x variants x tasks x seeds -> runs, launched by `harness.launch`; status; collect.

    flowarena sweep [SPEC.toml] --name NAME --methods qam,fbrac --suite ogbench --seeds 12 \\
        --set qam.inv_temp=3 --grid qam.inv_temp=0.3,1,3,10 [--executor slurm --runs-per-gpu 4 ...]
    flowarena status results/NAME
    flowarena collect results/NAME

A sweep spec (a TOML file, flags, or both: flags win) names methods, tasks and seeds, per-method
overrides (`--set METHOD.KEY=VALUE`; without `METHOD.` every method), grids (`--grid METHOD.KEY=V1,V2`,
one variant per value; several grids of a method form their cross product), budgets (default: the
suite's) and executor options. Every run is a `harness.train.RunSpec`; its variant name and directory
come from `train.resolve`, e.g. `<out>/<sweep>/qam[inv_temp=3]/<task>/seed0`.

A run's state is read from its status.json only. Running a sweep again submits only the runs that
are not done or diverged (failed, lost and preempted runs resume from their checkpoint).
`<out>/<sweep>/sweep.json` holds the plan: the spec, the executor options, "runs" (method, variant,
task, seed, run_dir relative to the sweep directory; runs planned by earlier invocations are kept)
and "jobs" (the Slurm job ids of the last submission). Importing this module never imports torch.

The TOML spec (every key optional except what a sweep needs: a name and methods or a preset):

    name = "inv-temp"
    suite = "ogbench"                 # or a suite .toml path
    preset = "adjoint-vs-bptt"        # instead of methods: qam and fbrac at the suite's settings
    methods = ["qam", "fbrac"]
    tasks = ["cube-double-play", "puzzle-3x3-play-singletask-task1-v0"]   # domains or tasks
    seeds = 12                        # a count, or a list [0, 3, 7]
    out = "results"
    dataset_dir = "/data/ogbench"
    device = "auto"

    [budget]                          # any harness.train.Budget field; default: the suite's
    offline_steps = 1000000
    eval_interval = 50000

    [set]                             # every method
    batch_size = 256
    [set.fbrac]                       # one method
    alpha = 0.1

    [grid.qam]                        # one variant per value (cross product over keys)
    inv_temp = [0.3, 1, 3, 10]

    [eval_params.qgf]                 # evaluation-time parameters (cross product)
    guidance_weight = [0.004, 0.01, 0.04]

    [executor]                        # ExecutorOptions
    kind = "slurm"
    runs_per_gpu = 4
    partition = "gpu"
    time = "12:00:00"
    sbatch = { constraint = "a100" }
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import suites
from harness import records
from harness.errors import UserError
from harness.progress import progress_bar

SWEEP_FILE = "sweep.json"
LOG_NAME = "run.log"  # every run's stdout and stderr, one block per attempt (harness.launch)
HEARTBEAT_NAME = ".heartbeat"  # touched every 30 s by a run started through a sweep
JOBS_DIR = ".submitit"  # submitit's pickles and job-level logs, under the sweep directory
EXECUTORS = ("local", "slurm")
TERMINAL = ("done", "diverged", "failed")  # a sweep waits for nothing more from these
DEFAULT_STALE_MIN = 30.0
SPEC_KEYS = (
    "name",
    "suite",
    "preset",
    "methods",
    "tasks",
    "seeds",
    "out",
    "dataset_dir",
    "device",
    "eval_workers",
    "budget",
    "set",
    "grid",
    "eval_params",
    "executor",
)


@dataclass(frozen=True)
class Preset:
    methods: tuple[str, ...]
    description: str


PRESETS = {
    "adjoint-vs-bptt": Preset(
        methods=("qam", "fbrac"),
        description="QAM (adjoint matching) vs FBRAC (backprop through the flow's Euler steps), each at "
        "the paper's per-domain settings that the suite supplies; compare them paired by seed",
    ),
}


# --- executor options --------------------------------------------------------------------------
@dataclass
class ExecutorOptions:
    """Where and how runs execute. `local`: at most `jobs` processes at once on this machine.
    `slurm`: a job array whose jobs each hold `runs_per_gpu` processes per GPU (one GPU per job by
    default). Every process trains `seeds_per_process` seeds of one (variant, task) stacked, one
    batched update for all of them (harness.train.run_group); each seed keeps its own records."""

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
            slurm_only = [name for name in _SLURM_ONLY if getattr(self, name) != _DEFAULT_EXECUTOR[name]]
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
_DEFAULT_EXECUTOR = {f.name: getattr(ExecutorOptions(), f.name) for f in dataclasses.fields(ExecutorOptions)}
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


# --- the sweep spec ----------------------------------------------------------------------------
@dataclass
class SweepSpec:
    """What to run. In `overrides`, `grid` and `eval_params` the key "" means every method."""

    name: str
    methods: list[str]
    suite: str = "ogbench"
    tasks: list[str] = field(default_factory=list)  # task or domain names; empty: the whole suite
    seeds: list[int] = field(default_factory=list)  # empty: the suite's number of seeds
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    eval_params: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    budget: dict[str, int] = field(default_factory=dict)  # over the suite's budgets
    out: str = "results"
    dataset_dir: str | None = None
    device: str = "auto"
    preset: str | None = None
    eval_workers: int = 0  # worker processes stepping each run's evaluation environments
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)

    @property
    def sweep_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_key(text: str, flag: str) -> tuple[str, str]:
    """`qam.inv_temp` -> ('qam', 'inv_temp'); `batch_size` -> ('', 'batch_size')."""
    method, sep, key = text.strip().rpartition(".")
    if not key or (sep and not method):
        raise UserError(f"{flag} expects [METHOD.]KEY=..., got {text!r}")
    return suites.normalize_method(method), key


def parse_assignment(item: str, flag: str) -> tuple[str, str, str]:
    """`qam.inv_temp=3` -> ('qam', 'inv_temp', '3')."""
    target, sep, value = item.partition("=")
    if not sep or not value.strip():
        raise UserError(f"{flag} expects [METHOD.]KEY=VALUE, got {item!r}")
    return (*split_key(target, flag), value.strip())


def grid_values(text: str, flag: str = "--grid") -> list[str]:
    """`0.3,1,3,10` -> four values; with a `|` the values are split on it instead (for list-valued
    keys: `hidden_dims=64,64|256,256`)."""
    parts = [v.strip() for v in text.split("|" if "|" in text else ",")]
    if not parts or any(not v for v in parts):
        raise UserError(f"{flag} expects [METHOD.]KEY=V1,V2,... with no empty value, got {text!r}")
    if len(set(parts)) != len(parts):
        raise UserError(f"{flag} repeats a value: {text!r}")
    return parts


def parse_seeds(value: Any) -> list[int]:
    """12 -> seeds 0..11; '0,3,7', '0-2,5', '3,' (the seed 3 alone) or [0, 3, 7] -> those seeds."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    elif isinstance(value, str):
        value = [seed for item in value.split(",") if item.strip() for seed in _seed_range(item.strip())]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        if len(set(value)) != len(value):
            raise UserError(f"--seeds repeats a seed: {value}")
        return list(value)
    raise UserError(
        f"--seeds expects a count (12) or seeds (0,3,7 or 0-5 or 3, for seed 3 alone), got {value!r}"
    )


def _seed_range(item: str) -> list[Any]:
    low, sep, high = item.partition("-")
    if sep and low.strip().isdigit() and high.strip().isdigit():
        return list(range(int(low), int(high) + 1))
    return [int(item) if item.isdigit() else item]


def _comma_list(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib as toml
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as toml
        except ModuleNotFoundError:
            raise UserError("reading TOML sweep specs on Python 3.10 needs `pip install tomli`") from None
    if not path.is_file():
        raise UserError(f"sweep spec {path} does not exist")
    try:
        with path.open("rb") as f:
            data = toml.load(f)
    except toml.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML: {error}") from None
    for key in data:
        if key not in SPEC_KEYS:
            raise UserError(f"{path}: unknown key {key!r}; known keys: {', '.join(SPEC_KEYS)}")
    return data


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: [{key}] must be a table, got {value!r}")
    return value


def _per_method(raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """TOML `[set] batch_size = 64` and `[set.qam] inv_temp = 3` -> {'': {...}, 'qam': {...}}."""
    table: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            table.setdefault(suites.normalize_method(key), {}).update(value)
        else:
            table.setdefault("", {})[key] = value
    for method, values in table.items():
        for key, value in values.items():
            if isinstance(value, dict):
                raise UserError(
                    f"{where}: {method + '.' if method else ''}{key} must be a value, not a table"
                )
    return table


def _toml_grid(raw: dict[str, Any], where: str, key: str) -> dict[str, dict[str, list[Any]]]:
    table = _per_method(raw, where)
    for method, values in table.items():
        for name, value in values.items():
            label = f"[{key}{'.' + method if method else ''}] {name}"
            if not isinstance(value, list) or not value:
                raise UserError(f"{where}: {label} must be a non-empty array of values")
    return table


def spec_from_toml(path: Path) -> SweepSpec:
    data = read_toml(path)
    where = str(path)
    executor = _table(data, "executor", where)
    unknown = [k for k in executor if k not in _DEFAULT_EXECUTOR and k != "kind"]
    if unknown:
        raise UserError(f"{where}: unknown [executor] key(s) {', '.join(unknown)}")
    budget = _table(data, "budget", where)
    methods = data.get("methods", [])
    tasks = data.get("tasks", [])
    for key, value in (("methods", methods), ("tasks", tasks)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: {key} must be an array of names, got {value!r}")
    return SweepSpec(
        name=data.get("name", ""),
        methods=methods,
        suite=data.get("suite", "ogbench"),
        tasks=tasks,
        seeds=parse_seeds(data["seeds"]) if "seeds" in data else [],
        overrides=_per_method(_table(data, "set", where), where),
        grid=_toml_grid(_table(data, "grid", where), where, "grid"),
        eval_params=_toml_grid(_table(data, "eval_params", where), where, "eval_params"),
        budget=dict(budget),
        out=data.get("out", "results"),
        dataset_dir=data.get("dataset_dir"),
        device=data.get("device", "auto"),
        eval_workers=data.get("eval_workers", 0),
        preset=data.get("preset"),
        executor=ExecutorOptions(**executor),
    )


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """The TOML spec (if given) with the flags on top; validated, but no method or task resolved yet."""
    spec = spec_from_toml(Path(args.spec)) if args.spec else SweepSpec(name="", methods=[])
    for name in ("name", "suite", "out", "dataset_dir", "device", "preset", "eval_workers"):
        if getattr(args, name) is not None:
            setattr(spec, name, getattr(args, name))
    if args.methods is not None:
        spec.methods = _comma_list(args.methods)
    if args.tasks is not None:
        spec.tasks = _comma_list(args.tasks)
    if args.seeds is not None:
        spec.seeds = parse_seeds(args.seeds)
    spec.budget.update({k: getattr(args, k) for k in budget_fields() if getattr(args, k, None) is not None})
    for item in args.set or []:
        method, key, value = parse_assignment(item, "--set")
        spec.overrides.setdefault(method, {})[key] = value
    for flag, items, table in (
        ("--grid", args.grid, spec.grid),
        ("--eval-param", args.eval_param, spec.eval_params),
    ):
        for item in items or []:
            method, key, text = parse_assignment(item, flag)
            table.setdefault(method, {})[key] = grid_values(text, flag)
    _executor_from_args(spec.executor, args)
    apply_preset(spec)
    validate_spec(spec)
    return spec


def _executor_from_args(options: ExecutorOptions, args: argparse.Namespace) -> None:
    for f in dataclasses.fields(ExecutorOptions):
        if f.name == "sbatch":
            continue
        value = getattr(args, "executor" if f.name == "kind" else f.name, None)
        if value is not None:
            setattr(options, f.name, value)
    for item in args.sbatch or []:
        key, sep, value = item.partition("=")
        if not key.strip() or key.strip().startswith("-"):
            raise UserError(f"--sbatch expects KEY=VALUE (or a bare KEY) without dashes, got {item!r}")
        options.sbatch[key.strip()] = value.strip() if sep else True


def apply_preset(spec: SweepSpec) -> None:
    if spec.preset is None:
        return
    key = spec.preset.strip().lower()
    if key not in PRESETS:
        raise UserError(f"unknown preset {spec.preset!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[key]
    given = [suites.normalize_method(m) for m in spec.methods]
    if given and sorted(given) != sorted(preset.methods):
        raise UserError(
            f"preset {key} runs {', '.join(preset.methods)}; drop --methods {','.join(spec.methods)}"
        )
    spec.preset, spec.methods = key, list(preset.methods)
    spec.name = spec.name or key


def validate_spec(spec: SweepSpec) -> None:
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise UserError(f"give the sweep a --name (a plain directory name), got {spec.name!r}")
    if not spec.methods:
        raise UserError("no methods: give --methods (e.g. qam,fbrac) or --preset adjoint-vs-bptt")
    spec.executor.validate()
    if not isinstance(spec.eval_workers, int) or isinstance(spec.eval_workers, bool) or spec.eval_workers < 0:
        raise UserError(f"--eval-workers must be an integer >= 0, got {spec.eval_workers!r}")
    for method, keys in spec.overrides.items():
        both = [k for k in keys if k in spec.grid.get(method, {})]
        if both:
            raise UserError(f"both --set and --grid give {method + '.' if method else ''}{both[0]}; keep one")


# --- the plan ----------------------------------------------------------------------------------
@dataclass
class PlannedRun:
    method: str
    variant: str
    task: str
    seed: int
    run_dir: Path
    spec: Any  # harness.train.RunSpec
    state: str = "pending"  # of its status.json when planned

    def entry(self, sweep_dir: Path) -> dict[str, Any]:
        return {
            "method": self.method,
            "variant": self.variant,
            "task": self.task,
            "seed": self.seed,
            "run_dir": str(self.run_dir.relative_to(sweep_dir)),
        }

    @property
    def label(self) -> str:
        return f"{self.variant} {self.task} seed{self.seed}"


@dataclass
class Plan:
    spec: SweepSpec
    sweep_dir: Path  # absolute
    runs: list[PlannedRun]
    budget: Any  # harness.train.Budget

    @property
    def todo(self) -> list[PlannedRun]:
        return [run for run in self.runs if run.state not in records.FINAL_STATES]

    def units(self) -> list[list[PlannedRun]]:
        """The unfinished runs by process: up to `seeds_per_process` seeds of one (variant, task),
        in seed order, stacked in one process."""
        groups: dict[tuple[str, str], list[PlannedRun]] = {}
        for run in self.todo:
            groups.setdefault((run.variant, run.task), []).append(run)
        size = self.spec.executor.seeds_per_process
        return [runs[i : i + size] for runs in groups.values() for i in range(0, len(runs), size)]

    def packs(self) -> list[list[list[PlannedRun]]]:
        """The processes by job: `runs_per_job` processes each."""
        units, size = self.units(), self.spec.executor.runs_per_job
        return [units[i : i + size] for i in range(0, len(units), size)]


def make_plan(spec: SweepSpec) -> Plan:
    """Every run of the sweep, resolved (bad input raises UserError here, before anything is
    written), with its current state; checks that existing run directories hold the same runs."""
    from algorithms import registry

    suite = suites.get_suite(spec.suite)
    spec.methods = list(dict.fromkeys(registry.get(m).name for m in spec.methods))
    _check_method_keys(spec)
    tasks = expand_tasks(suite, spec.tasks)
    seeds = spec.seeds or list(range(suite.seeds))
    budget = make_budget(spec.budget, suite.budgets)
    sweep_dir = spec.sweep_dir.resolve()
    runs: dict[Path, PlannedRun] = {}
    for method in spec.methods:
        for overrides in method_variants(spec, method):
            for task in tasks:
                for run in _task_runs(spec, method, overrides, task, seeds, budget, sweep_dir.parent):
                    runs.setdefault(run.run_dir, run)
    return Plan(spec, sweep_dir, list(runs.values()), budget)


def _check_method_keys(spec: SweepSpec) -> None:
    """METHOD.KEY names a method of the sweep; a bare KEY must be a config key of every method (values
    are checked when each variant is resolved)."""
    from algorithms import registry

    for flag, table in (("--set", spec.overrides), ("--grid", spec.grid)):
        for method, keys in table.items():
            if method and method not in spec.methods:
                raise UserError(
                    f"{flag} {method}.{next(iter(keys))}: {method} is not a method of this sweep "
                    f"({', '.join(spec.methods)})"
                )
            for target in [] if method else spec.methods:
                missing = [key for key in keys if key not in registry.config_fields(target)]
                if missing:
                    raise UserError(
                        f"{flag} {missing[0]}: {target} has no config key {missing[0]!r}; write "
                        f"METHOD.{missing[0]} to give it to one method"
                    )


def method_variants(spec: SweepSpec, method: str) -> list[dict[str, Any]]:
    """The overrides of each variant of `method`: its --set values times the product of its grids."""
    fixed = {**spec.overrides.get("", {}), **spec.overrides.get(method, {})}
    grid = {**spec.grid.get("", {}), **spec.grid.get(method, {})}
    keys = list(grid)
    return [{**fixed, **dict(zip(keys, combo))} for combo in itertools.product(*grid.values())]


def method_eval_params(spec: SweepSpec, method: str) -> list[dict[str, float]]:
    values = {**spec.eval_params.get("", {}), **spec.eval_params.get(method, {})}
    try:
        numbers = {k: [float(v) for v in vs] for k, vs in values.items()}
    except (TypeError, ValueError):
        raise UserError(f"--eval-param values must be numbers, got {values}") from None
    return [dict(zip(numbers, combo)) for combo in itertools.product(*numbers.values())] if numbers else []


def expand_tasks(suite: suites.Suite, names: Sequence[str]) -> list[str]:
    """Task names of the suite; a domain name stands for all its tasks; empty: every task."""
    if not names:
        return suite.task_names
    tasks: list[str] = []
    for name in names:
        in_domain = [t.task for t in suite.tasks if t.domain == name]
        tasks += in_domain or [suite.task(name).task]
    return list(dict.fromkeys(tasks))


def budget_fields() -> list[str]:
    from harness.train import Budget

    return [f.name for f in dataclasses.fields(Budget)]


def make_budget(given: dict[str, int], suite_budgets: dict[str, int]) -> Any:
    """The same defaults as `flowarena run`: the suite's budgets, then the given values."""
    from harness.cli import budget_from_args

    known = budget_fields()
    unknown = [k for k in given if k not in known]
    if unknown:
        raise UserError(f"unknown budget key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    budget = budget_from_args(argparse.Namespace(**{name: given.get(name) for name in known}), suite_budgets)
    budget.validate()
    return budget


def _task_runs(
    spec: SweepSpec,
    method: str,
    overrides: dict[str, Any],
    task: str,
    seeds: list[int],
    budget: Any,
    out: Path,
) -> list[PlannedRun]:
    from harness import train

    first = train.RunSpec(
        method=method,
        task=task,
        seed=seeds[0],
        out=str(out),
        sweep=spec.name,
        suite=spec.suite,
        overrides=dict(overrides),
        dataset_dir=str(Path(spec.dataset_dir).resolve()) if spec.dataset_dir else None,
        budget=budget,
        device=spec.device,
        eval_workers=spec.eval_workers,
        eval_params=method_eval_params(spec, method),
        variant_keys=sorted(overrides),  # one variant name on every task, even where a value is the suite's
    )
    resolved = train.resolve(first)
    wanted: dict[str, Any] | None = None
    runs = []
    for seed in seeds:
        run_spec = dataclasses.replace(first, seed=seed)
        run_dir = records.RunDir(records.run_dir_path(out, spec.name, resolved.variant, task, seed))
        if run_dir.exists():
            wanted = wanted or resolved.record_spec()
            _check_identity(run_dir, {**wanted, "seed": seed})
        state = run_dir.read_status().get("state", "pending")
        runs.append(
            PlannedRun(resolved.method.name, resolved.variant, task, seed, run_dir.path, run_spec, state)
        )
    return runs


def _check_identity(run_dir: records.RunDir, wanted: dict[str, Any]) -> None:
    from harness.train import IDENTITY_KEYS, identity_difference

    saved = run_dir.read_spec()
    wanted = json.loads(json.dumps({k: wanted.get(k) for k in IDENTITY_KEYS}))
    differing = [k for k in IDENTITY_KEYS if saved.get(k) != wanted.get(k)]
    if differing:
        raise UserError(
            f"{run_dir.path} holds a run with a different {identity_difference(saved, wanted, differing)}; "
            f"rerun the sweep with its original settings, give another --name or --out, or move that "
            f"directory away"
        )


# --- dry run and sweep.json --------------------------------------------------------------------
def describe_plan(plan: Plan, steps_per_second: float | None = None) -> str:
    """The plan in words: runs per variant, jobs, steps and (given steps/s) GPU-hours."""
    spec, executor = plan.spec, plan.spec.executor
    todo = plan.todo
    lines = [
        f"sweep {spec.name}: suite {spec.suite}, {len(spec.methods)} method(s), executor {executor.kind}",
        f"records: {plan.sweep_dir}",
        "",
        _variant_table(plan),
        "",
        f"runs: {len(plan.runs)} planned, {len(plan.runs) - len(todo)} done or diverged (skipped), "
        f"{len(todo)} to run",
        _jobs_line(plan),
    ]
    per_run = plan.budget.offline_steps + plan.budget.online_steps
    total = per_run * len(todo)
    lines.append(
        f"steps: {total:,} ({plan.budget.offline_steps:,} offline + {plan.budget.online_steps:,} online "
        f"per run; runs that resume need fewer; evaluation every {plan.budget.eval_interval:,} with "
        f"{plan.budget.eval_episodes} episodes)"
    )
    if steps_per_second:
        hours = total / steps_per_second / 3600
        lines.append(
            f"estimate: {hours:,.1f} GPU-hours = {total:,} steps / {steps_per_second:g} steps/s / 3600, "
            f"assuming one GPU sustains {steps_per_second:g} steps/s summed over the runs it holds "
            f"(evaluation, startup and queueing not counted)"
        )
    else:
        lines.append("estimate: give --steps-per-second S (one GPU's training throughput) for GPU-hours")
    return "\n".join(lines)


def _variant_table(plan: Plan) -> str:
    rows: dict[str, dict[str, Any]] = {}
    for run in plan.runs:
        row = rows.setdefault(run.variant, {"tasks": set(), "seeds": set(), "runs": 0, "todo": 0})
        row["tasks"].add(run.task)
        row["seeds"].add(run.seed)
        row["runs"] += 1
        row["todo"] += run.state not in records.FINAL_STATES
    width = max(len("variant"), *(len(v) for v in rows))
    lines = [f"{'variant'.ljust(width)}  tasks  seeds  runs  to run"]
    for variant, row in rows.items():
        lines.append(
            f"{variant.ljust(width)}  {len(row['tasks']):>5}  {len(row['seeds']):>5}  "
            f"{row['runs']:>4}  {row['todo']:>6}"
        )
    return "\n".join(lines)


def _jobs_line(plan: Plan) -> str:
    executor, todo = plan.spec.executor, plan.todo
    stacked = ""
    if executor.seeds_per_process > 1:
        stacked = f"; {len(todo)} run(s) in {len(plan.units())} process(es) of up to {executor.seeds_per_process} stacked seeds"
    if executor.kind == "local":
        return f"jobs: {len(todo)} local run(s), at most {executor.jobs} at once{stacked}"
    packs = plan.packs()
    unit = "run(s)" if executor.seeds_per_process == 1 else "process(es)"
    return (
        f"jobs: {len(packs)} Slurm array job(s) of up to {executor.runs_per_job} {unit} "
        f"({executor.runs_per_gpu} per GPU, {executor.gpus} GPU(s), {executor.cpus_per_job} CPU(s), "
        f"time {executor.time}, partition {executor.partition or 'default'}){stacked}"
    )


def write_sweep_file(plan: Plan, jobs: list[dict[str, Any]] | None = None) -> Path:
    """sweep.json: the plan; runs planned by earlier invocations of this sweep are kept."""
    path = plan.sweep_dir / SWEEP_FILE
    previous = read_sweep_file(plan.sweep_dir)
    entries = {e["run_dir"]: e for e in (run.entry(plan.sweep_dir) for run in plan.runs)}
    for entry in previous.get("runs", []):
        entries.setdefault(entry["run_dir"], entry)
    payload = {
        "name": plan.spec.name,
        "spec": plan.spec.to_dict(),
        "budget": dataclasses.asdict(plan.budget),
        "executor": dataclasses.asdict(plan.spec.executor),
        "runs": list(entries.values()),
        "jobs": jobs if jobs is not None else previous.get("jobs", []),
        "updated_at": time.time(),
        "code_version": records.code_version(),
    }
    records.write_json(path, payload)
    return path


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / SWEEP_FILE
    return records.read_json(path) if path.is_file() else {}


# --- status ------------------------------------------------------------------------------------
@dataclass
class RunStatus:
    """One run as its status.json describes it; `condition` adds `lost` (status says running, but its
    process is gone) and `stale` (running, but silent for longer than the stale threshold)."""

    variant: str
    method: str
    task: str
    seed: int
    run_dir: Path
    planned: bool
    state: str
    condition: str
    status: dict[str, Any]

    @property
    def log(self) -> Path:
        return self.run_dir / LOG_NAME

    @property
    def label(self) -> str:
        return f"{self.variant} {self.task} seed{self.seed}"


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def last_seen(run_dir: Path, status: dict[str, Any]) -> float:
    heartbeat = run_dir / HEARTBEAT_NAME
    beat = heartbeat.stat().st_mtime if heartbeat.exists() else 0.0
    return max(float(status.get("updated_at") or 0.0), beat)


def condition_of(
    run_dir: Path, status: dict[str, Any], *, stale_after_s: float, now: float | None = None
) -> str:
    state = status.get("state", "pending")
    if state != "running":
        return state
    if status.get("host") == socket.gethostname() and not pid_alive(status.get("pid")):
        return "lost"
    if (now or time.time()) - last_seen(run_dir, status) > stale_after_s:
        return "stale"
    return "running"


def sweep_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The runs sweep.json planned, then any other run directory found under the sweep."""
    sweep_dir = Path(sweep_dir)
    runs = {}
    for entry in read_sweep_file(sweep_dir).get("runs", []):
        runs[str(sweep_dir / entry["run_dir"])] = {**entry, "planned": True}
    for status_or_spec in sorted(sweep_dir.glob("*/*/seed*/s*.json")):
        run_dir = status_or_spec.parent
        if status_or_spec.name not in ("spec.json", "status.json") or str(run_dir) in runs:
            continue
        seed = run_dir.name.removeprefix("seed")
        if seed.isdigit():
            variant = run_dir.parent.parent.name
            runs[str(run_dir)] = {
                "method": variant.split("[")[0],
                "variant": variant,
                "task": run_dir.parent.name,
                "seed": int(seed),
                "planned": False,
            }
    return [{**entry, "run_dir": Path(path)} for path, entry in runs.items()]


def sweep_status(sweep_dir: Path, *, stale_after_s: float = DEFAULT_STALE_MIN * 60) -> list[RunStatus]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a sweep directory (expected OUT/SWEEP, e.g. results/my-sweep)")
    now = time.time()
    statuses = []
    for entry in sweep_runs(sweep_dir):
        run_dir = entry["run_dir"]
        status = records.RunDir(run_dir).read_status() if (run_dir / "status.json").exists() else {}
        statuses.append(
            RunStatus(
                variant=entry["variant"],
                method=entry["method"],
                task=entry["task"],
                seed=int(entry["seed"]),
                run_dir=run_dir,
                planned=entry["planned"],
                state=status.get("state", "pending"),
                condition=condition_of(run_dir, status, stale_after_s=stale_after_s, now=now),
                status=status,
            )
        )
    return statuses


CONDITIONS = ("done", "diverged", "failed", "running", "lost", "stale", "pending")


def format_status(sweep_dir: Path, statuses: list[RunStatus], *, stale_after_s: float) -> str:
    counts = Counter(s.condition for s in statuses)
    lines = [
        f"sweep {sweep_dir}: {len(statuses)} run(s)",
        "  " + "  ".join(f"{c} {counts.get(c, 0)}" for c in CONDITIONS),
    ]
    failed = [s for s in statuses if s.condition in ("failed", "diverged")]
    if failed:
        lines.append("failed or diverged:")
        for s in failed:
            error = str(s.status.get("error") or "(no error recorded)").strip().splitlines() or [""]
            lines.append(f"  {s.label}: {s.condition} at step {s.status.get('step', 0)}: {error[0]}")
            lines.append(f"    log: {_log_text(s)}")
    lost = [s for s in statuses if s.condition in ("lost", "stale")]
    if lost:
        lines.append(
            f"lost or stale (status says running, but the process is gone or silent for over "
            f"{stale_after_s / 60:g} min):"
        )
        for s in lost:
            lines.append(f"  {s.label}: {_lost_text(s)}")
            lines.append(f"    log: {_log_text(s)}")
    unfinished = [s for s in statuses if s.condition not in ("done", "diverged", "running")]
    if unfinished:
        lines.append(
            "rerun the sweep (the same `flowarena sweep` command) to retry failed runs and resume the others "
            "from their checkpoints; done and diverged runs are skipped"
        )
    return "\n".join(lines)


def _log_text(s: RunStatus) -> str:
    return str(s.log) if s.log.exists() else f"{s.log} (absent: not started by `flowarena sweep`)"


def _lost_text(s: RunStatus) -> str:
    status = s.status
    ago = (time.time() - last_seen(s.run_dir, status)) / 60
    where = f"host {status.get('host')} pid {status.get('pid')}"
    gone = " (not alive)" if s.condition == "lost" else ""
    checkpoint = status.get("checkpoint_step")
    resume = f", resumes from checkpoint step {checkpoint}" if checkpoint else ", restarts from step 0"
    return f"step {status.get('step', 0)}{resume}; last sign of life {ago:.0f} min ago on {where}{gone}"


def status_json(statuses: list[RunStatus]) -> list[dict[str, Any]]:
    return [
        {
            "variant": s.variant,
            "method": s.method,
            "task": s.task,
            "seed": s.seed,
            "run_dir": str(s.run_dir),
            "planned": s.planned,
            "state": s.state,
            "condition": s.condition,
            "step": s.status.get("step", 0),
            "checkpoint_step": s.status.get("checkpoint_step"),
            "error": s.status.get("error"),
            "log": str(s.log) if s.log.exists() else None,
        }
        for s in statuses
    ]


# --- collect -----------------------------------------------------------------------------------
@dataclass
class Collected:
    path: Path
    rows: int
    runs: int
    without_records: list[RunStatus]
    unfinished: list[RunStatus]

    def summary(self) -> str:
        lines = [f"wrote {self.path}: {self.rows} evals row(s) from {self.runs} run(s)"]
        if self.unfinished:
            lines.append(
                f"{len(self.unfinished)} run(s) not finished yet (their rows so far are included): "
                + ", ".join(s.label for s in self.unfinished[:10])
                + (" ..." if len(self.unfinished) > 10 else "")
            )
        if self.without_records:
            lines.append(
                f"{len(self.without_records)} run(s) without evals: "
                + ", ".join(f"{s.label} ({s.condition})" for s in self.without_records[:10])
                + (" ..." if len(self.without_records) > 10 else "")
            )
        return "\n".join(lines)


def collect(sweep_dir: Path) -> Collected:
    """Merge every run's evals.parquet into SWEEP/evals.parquet (atomic; the same records give the
    same file)."""
    import pandas as pd

    statuses = sweep_status(Path(sweep_dir))
    frames, without = [], []
    for s in statuses:
        frame = records.RunDir(s.run_dir).read_rows("evals")
        if frame.empty:
            without.append(s)
        else:
            frames.append(frame)
    if not frames:
        raise UserError(f"{sweep_dir}: no run has evals yet; nothing to collect (see `flowarena status`)")
    evals = pd.concat(frames, ignore_index=True).reindex(columns=records.EVAL_COLUMNS)
    evals = evals.astype(records.EVAL_DTYPES)
    key = ["variant", "task", "seed", "phase", "step", "eval_params"]
    evals = evals.sort_values(key, kind="mergesort").reset_index(drop=True)
    path = Path(sweep_dir) / "evals.parquet"
    records.write_parquet(path, evals)
    unfinished = [s for s in statuses if s.condition not in records.FINAL_STATES and s not in without]
    return Collected(path, len(evals), len(frames), without, unfinished)


# --- running a sweep ---------------------------------------------------------------------------
def run_sweep(plan: Plan, *, wait: bool = True, poll_s: float = 5.0, progress: bool = True) -> int:
    """Submit the plan's unfinished runs; with `wait`, follow them until every job has ended.
    Returns 0 when every planned run is done or diverged (also right after submitting, without
    `wait`)."""
    from harness import launch

    write_sweep_file(plan)
    if not plan.todo:
        _say(f"all {len(plan.runs)} run(s) of {plan.spec.name} are done or diverged; nothing to submit")
        return 0
    launcher = launch.make_launcher(plan)
    with _sigterm_as_interrupt():
        try:
            launcher.start(plan.packs())
            _say(launcher.describe(len(plan.todo)))
            if launcher.job_records():
                write_sweep_file(plan, jobs=launcher.job_records())
            if not wait:
                _say(f"not waiting; follow with `flowarena status {plan.sweep_dir}`")
                return 0
            follow(launcher, plan.todo, poll_s=poll_s, progress=progress)
        except KeyboardInterrupt:
            launcher.cancel()
            raise
    statuses = sweep_status(plan.sweep_dir)
    print(format_status(plan.sweep_dir, statuses, stale_after_s=DEFAULT_STALE_MIN * 60))
    planned = {run.run_dir for run in plan.runs}
    return 0 if all(s.condition in records.FINAL_STATES for s in statuses if s.run_dir in planned) else 1


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM while a sweep is followed stops it like Ctrl-C (local runs checkpoint and stop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow(launcher: Any, runs: list[PlannedRun], *, poll_s: float, progress: bool) -> None:
    """Poll the runs' status files until every job has ended (jobs whose runs have all finished get
    LINGER_S to leave the queue)."""
    bar = progress_bar(total=len(runs), desc="runs finished", unit="run", enabled=progress)
    finished_at: float | None = None
    with bar:
        while True:
            alive = launcher.poll()
            conditions = Counter(
                condition_of(run.run_dir, records.RunDir(run.run_dir).read_status(), stale_after_s=math.inf)
                for run in runs
            )
            finished = sum(conditions[c] for c in TERMINAL)
            bar.set_postfix({c: conditions[c] for c in ("running", "failed", "lost") if conditions[c]}, False)
            bar.update(finished - bar.n)
            if finished == len(runs):
                finished_at = finished_at or time.monotonic()
            if not alive or (finished_at and time.monotonic() - finished_at > LINGER_S):
                return
            time.sleep(poll_s)


LINGER_S = 60.0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- command line ------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sweep`, `status` and `collect` subcommands."""
    _add_sweep_parser(subparsers)
    p = subparsers.add_parser(
        "status",
        help="a sweep's runs by state; failed, lost and stale runs with their error and log",
        description="Counts of a sweep's runs by state, read from each run's status.json. A run whose "
        "status says running but whose process is gone (same host, pid not alive) is `lost`; one "
        "silent for longer than --stale-after is `stale`. Rerunning the sweep resumes both.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP", help="sweep directory, e.g. results/my-sweep")
    p.add_argument("--stale-after", type=float, default=DEFAULT_STALE_MIN, metavar="MIN")
    p.add_argument("--json", action="store_true", help="one object per run")
    p.set_defaults(func=cmd_status)
    p = subparsers.add_parser(
        "collect",
        help="merge a sweep's run records into SWEEP/evals.parquet (idempotent)",
        description="Concatenate every run's evals.parquet into SWEEP/evals.parquet, sorted, written "
        "atomically; collecting the same records again gives the same file.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP", help="sweep directory, e.g. results/my-sweep")
    p.set_defaults(func=cmd_collect)


def _add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run methods x tasks x seeds (x variants) locally or on Slurm; reruns fill the holes",
        description="Plan a sweep from a TOML spec and/or flags (flags win), skip runs that are done or "
        "diverged, run the rest (local worker processes or a Slurm job array through submitit) and "
        "follow them. Records: OUT/NAME/<variant>/<task>/seed<k>/, plan in OUT/NAME/sweep.json.",
    )
    p.add_argument("spec", nargs="?", metavar="SPEC.toml", help="sweep spec file (see harness/sweep.py)")
    p.add_argument("--name", help="sweep name: records go to OUT/NAME/")
    p.add_argument("--suite", help="suite giving tasks, settings and budgets (default ogbench)")
    p.add_argument("--preset", help=f"named comparison: {', '.join(PRESETS)}")
    p.add_argument("--methods", help="comma-separated registry names")
    p.add_argument("--tasks", help="comma-separated task or domain names (default: the whole suite)")
    p.add_argument(
        "--seeds",
        help="a count (12: seeds 0-11) or seeds (0,3,7 or 0-5; '3,' for seed 3 alone); default: the suite's",
    )
    p.add_argument("--set", action="append", metavar="[METHOD.]KEY=VALUE", help="override, repeatable")
    p.add_argument(
        "--grid", action="append", metavar="[METHOD.]KEY=V1,V2", help="one variant per value, repeatable"
    )
    p.add_argument(
        "--eval-param", action="append", metavar="[METHOD.]KEY=V1,V2", help="evaluation-time parameter values"
    )
    p.add_argument("--out", help="results root (default results/)")
    p.add_argument("--dataset-dir", help="directory holding the OGBench .npz files")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--eval-workers",
        type=int,
        metavar="N",
        help="worker processes stepping each run's evaluation environments",
    )
    from harness.cli import add_budget_flags  # harness.cli is loaded: it calls register()

    add_budget_flags(p)
    _add_executor_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and an estimate; write nothing")
    p.add_argument("--steps-per-second", type=float, metavar="S", help="one GPU's throughput, for --dry-run")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    p.add_argument("--poll", type=float, default=5.0, metavar="SECONDS", help="status polling interval")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("executor")
    group.add_argument("--executor", help="local (default) or slurm")
    group.add_argument("--jobs", type=int, metavar="N", help="local: runs at once (default 1)")
    group.add_argument(
        "--runs-per-gpu", type=int, metavar="K", help="slurm: processes packed per GPU (default 1)"
    )
    group.add_argument(
        "--seeds-per-process",
        type=int,
        metavar="S",
        help="seeds of one variant and task trained stacked in one process, one batched update for "
        "all (default 1); each seed keeps its own records",
    )
    group.add_argument(
        "--gpus", type=int, metavar="N", help="slurm: GPUs per job (default 1; 0 for CPU jobs)"
    )
    group.add_argument("--cpus", type=int, metavar="N", help="slurm: CPUs per job (default: one per run)")
    group.add_argument("--mem", help="slurm: memory per job, e.g. 64G")
    group.add_argument(
        "--time", help="slurm: time limit per job, e.g. 4:00:00 (default); requeued at the limit"
    )
    group.add_argument("--partition", help="slurm partition")
    group.add_argument("--account", help="slurm account")
    group.add_argument("--qos", help="slurm quality of service")
    group.add_argument("--array-parallelism", type=int, metavar="N", help="slurm: array jobs running at once")
    group.add_argument(
        "--max-requeues", type=int, metavar="N", help="slurm: time-limit requeues per job (10)"
    )
    group.add_argument("--sbatch", action="append", metavar="KEY=VALUE", help="extra #SBATCH --KEY=VALUE")


def cmd_sweep(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    if args.steps_per_second is not None and args.steps_per_second <= 0:
        raise UserError(f"--steps-per-second must be positive, got {args.steps_per_second}")
    if args.no_wait and spec.executor.kind == "local":
        raise UserError("--no-wait needs --executor slurm: local runs are throttled by this process")
    plan = make_plan(spec)
    if args.dry_run:
        print(describe_plan(plan, args.steps_per_second))
        return 0
    return run_sweep(plan, wait=not args.no_wait, poll_s=args.poll, progress=not args.no_progress)


def cmd_status(args: argparse.Namespace) -> int:
    stale_after_s = args.stale_after * 60
    statuses = sweep_status(Path(args.sweep_dir), stale_after_s=stale_after_s)
    if args.json:
        print(json.dumps(status_json(statuses), indent=2))
    else:
        print(format_status(Path(args.sweep_dir), statuses, stale_after_s=stale_after_s))
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    print(collect(Path(args.sweep_dir)).summary())
    return 0
