"""A sweep's plan: every (variant, task, seed) of a SweepSpec resolved to a run (bad input fails
here, before anything is written) with its current state and identity checked against an
existing run directory; how the unfinished runs group into processes (stacked seeds) and jobs;
the dry run's description; and sweep.json."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import suites
from harness.errors import UserError
from harness.run import records
from harness.sweep.files import SWEEP_FILE, read_sweep_file
from harness.sweep.spec import PRESETS, SweepSpec, check_preset_budget


@dataclass
class PlannedRun:
    method: str
    variant: str
    task: str
    seed: int
    run_dir: Path
    spec: Any  # harness.run.spec.RunSpec
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
    budget: Any  # harness.run.spec.Budget

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
    _check_preset_methods(spec)
    spec.methods = list(dict.fromkeys(registry.get(m).name for m in spec.methods))
    _check_method_keys(spec)
    tasks = expand_tasks(suite, spec.tasks)
    seeds = spec.seeds or list(range(suite.seeds))
    budget = make_budget(spec.budget, suite.budgets)
    check_preset_budget(spec, budget.online_steps)
    sweep_dir = spec.sweep_dir.resolve()
    runs: dict[Path, PlannedRun] = {}
    for method in spec.methods:
        method_budget = make_budget(spec.budget, suite.budgets, method_protocol(method))
        for overrides in method_variants(spec, method):
            for task in tasks:
                for run in _task_runs(spec, method, overrides, task, seeds, method_budget, sweep_dir.parent):
                    runs.setdefault(run.run_dir, run)
    return Plan(spec, sweep_dir, list(runs.values()), budget)


def _check_preset_methods(spec: SweepSpec) -> None:
    """A preset's methods must all be registered: one message naming every missing one."""
    from algorithms import registry

    known = registry.names()
    missing = [m for m in spec.methods if registry.normalize(m) not in known]
    if spec.preset and missing:
        raise UserError(
            f"preset {spec.preset} runs {len(spec.methods)} methods, but {len(missing)} of them are not "
            f"registered here: {', '.join(missing)} (registered: {', '.join(known)})"
        )


def _check_method_keys(spec: SweepSpec) -> None:
    """METHOD.KEY names a method of the sweep; a bare KEY must be a config key of every method (values
    are checked when each variant is resolved)."""
    from algorithms import registry

    variants = {"": {key: None for variant in spec.variants for key in variant}} if spec.variants else {}
    for flag, table in (
        ("--set", spec.overrides),
        ("--grid", spec.grid),
        ("the preset's variants", variants),
    ):
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
    """The overrides of each variant of `method`: its --set values, times a preset's one-at-a-time
    variants, times the product of its grids."""
    fixed = {**spec.overrides.get("", {}), **spec.overrides.get(method, {})}
    grid = {**spec.grid.get("", {}), **spec.grid.get(method, {})}
    keys = list(grid)
    return [
        {**fixed, **variant, **dict(zip(keys, combo))}
        for variant in spec.variants or [{}]
        for combo in itertools.product(*grid.values())
    ]


def method_eval_params(spec: SweepSpec, method: str) -> list[dict[str, float]]:
    values = {**spec.eval_params.get("", {}), **spec.eval_params.get(method, {})}
    try:
        numbers = {k: [float(v) for v in vs] for k, vs in values.items()}
    except (TypeError, ValueError):
        raise UserError(f"--eval-param values must be numbers, got {values}") from None
    return [dict(zip(numbers, combo)) for combo in itertools.product(*numbers.values())] if numbers else []


def expand_tasks(suite: suites.Suite, names: Sequence[str]) -> list[str]:
    """Task names of the suite; a domain name stands for all its tasks (an OGBench domain outside
    the suite for its five tasks, task1..task5); empty: every task. An OGBench task outside the
    suite runs with the settings `suite.settings_for` gives it."""
    from suites import defaults

    if not names:
        return suite.task_names
    tasks: list[str] = []
    for name in names:
        in_domain = [t.task for t in suite.tasks if t.domain == name]
        if not in_domain and name in defaults.DATASETS:
            in_domain = [f"{name}-singletask-task{i}-v0" for i in defaults.TASK_IDS]
        tasks += in_domain or [suite.settings_for(name)[0].task]
    return list(dict.fromkeys(tasks))


def budget_fields() -> list[str]:
    from harness.run.spec import Budget

    return [f.name for f in dataclasses.fields(Budget)]


def method_protocol(method: str) -> dict[str, Any]:
    from harness.run.spec import method_protocol as protocol

    return protocol(method)


def make_budget(
    given: dict[str, int], suite_budgets: dict[str, int], protocol: dict[str, Any] | None = None
) -> Any:
    """The same defaults as `flowarena run`: the suite's budgets, a method's protocol, then the
    given values."""
    from harness.args import budget_from_args

    known = budget_fields()
    unknown = [k for k in given if k not in known]
    if unknown:
        raise UserError(f"unknown budget key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    budget = budget_from_args(
        argparse.Namespace(**{name: given.get(name) for name in known}), suite_budgets, protocol
    )
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
    from harness.run.spec import RunSpec, resolve

    first = RunSpec(
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
        loggers=list(spec.loggers),
        compile=spec.compile,
        precision=spec.precision,
        eval_params=method_eval_params(spec, method),
        variant_keys=sorted(overrides),  # one variant name on every task, even where a value is the suite's
    )
    resolved = resolve(first)
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
    from harness.run.spec import IDENTITY_KEYS, identity, identity_difference

    saved = identity(run_dir.read_spec())
    wanted = json.loads(json.dumps(identity(wanted)))
    differing = [k for k in IDENTITY_KEYS if saved[k] != wanted[k]]
    if differing:
        raise UserError(
            f"{run_dir.path} holds a run with a different {identity_difference(saved, wanted, differing)}; "
            f"rerun the sweep with its original settings, give another --name or --out, or move that "
            f"directory away"
        )


def describe_plan(plan: Plan, steps_per_second: float | None = None) -> str:
    """The plan in words: runs per variant, jobs, steps and (given steps/s) GPU-hours."""
    spec, executor = plan.spec, plan.spec.executor
    todo = plan.todo
    lines = [
        f"sweep {spec.name}: suite {spec.suite}, {len(spec.methods)} method(s), executor {executor.kind}",
        *([f"preset {spec.preset}: {PRESETS[spec.preset].description}"] if spec.preset else []),
        _count_line(plan),
        f"records: {plan.sweep_dir}",
        "",
        _variant_table(plan),
        "",
        f"runs: {len(plan.runs)} planned, {len(plan.runs) - len(todo)} done or diverged (skipped), "
        f"{len(todo)} to run",
        _jobs_line(plan),
    ]
    total = plan_steps(plan)
    lines.append(
        f"steps: {total:,} ({plan.budget.offline_steps:,} offline + {plan.budget.online_steps:,} online "
        f"per run{_protocol_note(plan)}; runs that resume need fewer; evaluation every "
        f"{plan.budget.eval_interval:,} with {plan.budget.eval_episodes} episodes)"
    )
    if steps_per_second:
        hours = gpu_hours(total, steps_per_second)
        lines.append(
            f"estimate: {hours:,.1f} GPU-hours = {total:,} steps / {steps_per_second:g} steps/s / 3600, "
            f"assuming one GPU sustains {steps_per_second:g} steps/s summed over the runs it holds "
            f"(evaluation, startup and queueing not counted)"
        )
    else:
        lines.append("estimate: give --steps-per-second S (one GPU's training throughput) for GPU-hours")
    return "\n".join(lines)


def plan_steps(plan: Plan) -> int:
    """Training steps of the runs still to run (offline + online, each run's own budget)."""
    return sum(run.spec.budget.total_steps for run in plan.todo)


def gpu_hours(steps: int, steps_per_second: float) -> float:
    """GPU-hours of `steps` training steps at one GPU's throughput (evaluation and queueing not counted)."""
    return steps / steps_per_second / 3600


def _count_line(plan: Plan) -> str:
    """`16 methods x 50 tasks x 12 seeds = 9,600 runs (methods: qam, ...)`."""
    spec = plan.spec
    tasks, seeds = len({r.task for r in plan.runs}), len({r.seed for r in plan.runs})
    variants = len({r.variant for r in plan.runs})
    what = f"{len(spec.methods)} methods" if variants == len(spec.methods) else f"{variants} variants"
    return (
        f"{what} x {tasks} tasks x {seeds} seeds = {len(plan.runs):,} runs "
        f"(methods: {', '.join(spec.methods)})"
    )


def _protocol_note(plan: Plan) -> str:
    """The methods whose own protocol changes the sweep's budget (e.g. rlpd: online only)."""
    notes = {}
    for run in plan.runs:
        budget = run.spec.budget
        if budget != plan.budget:
            balanced = ", balanced sampling" if budget.balanced_sampling else ""
            notes[run.method] = (
                f"{run.method} by its protocol: {budget.offline_steps:,} offline + "
                f"{budget.online_steps:,} online{balanced}"
            )
    return f" ({'; '.join(notes.values())})" if notes else ""


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
    """sweep.json: the plan; runs planned by earlier invocations of this sweep are kept. A sweep
    directory that takes no writes is refused here, before any job starts (exit code 2)."""
    path = plan.sweep_dir / SWEEP_FILE
    records.check_writable(plan.sweep_dir)
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
