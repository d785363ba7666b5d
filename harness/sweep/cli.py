"""The sweep room's commands: `flowarena sweep` (its flags, read into a SweepSpec on top of a
TOML spec by `spec_from_args`), `flowarena status` and `flowarena collect`; `flowarena plan-seeds`
is registered from harness/sweep/seeds.py."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import suites
from harness.args import add_budget_flags, add_logger_flag, parse_loggers, parse_seeds
from harness.errors import UserError
from harness.run.compile import add_compile_flag
from harness.run.precision import add_precision_flag, check_here
from harness.sweep import seeds
from harness.sweep.collect import collect
from harness.sweep.options import ExecutorOptions
from harness.sweep.plan import budget_fields, describe_plan, make_plan
from harness.sweep.spec import PRESETS, SweepSpec, apply_preset, grid_values, parse_assignment, validate_spec
from harness.sweep.status import DEFAULT_HUNG_MIN, DEFAULT_STALE_MIN, format_status, status_json, sweep_status
from harness.sweep.toml_spec import spec_from_toml


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `sweep`, `plan-seeds`, `status` and `collect` subcommands."""
    _add_sweep_parser(subparsers)
    seeds.add_parser(subparsers)
    p = subparsers.add_parser(
        "status",
        help="a sweep's runs by state; failed, lost, stale and possibly hung runs with their log",
        description="Counts of a sweep's runs by state, read from each run's status.json. A run whose "
        "status says running but whose process is gone (same host, pid not alive) is `lost`; one "
        "silent for longer than --stale-after is `stale`. Rerunning the sweep resumes both. Running "
        "runs are listed with their step and the age of their training loop's heartbeat (rewritten "
        "every 30 s while training); one without a heartbeat for longer than --hung-after is "
        "flagged possibly hung.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP", help="sweep directory, e.g. results/my-sweep")
    p.add_argument("--stale-after", type=float, default=DEFAULT_STALE_MIN, metavar="MIN")
    p.add_argument(
        "--hung-after",
        type=float,
        default=DEFAULT_HUNG_MIN,
        metavar="MIN",
        help=f"flag running runs without a heartbeat for this long (default {DEFAULT_HUNG_MIN:g})",
    )
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
    p.add_argument(
        "spec", nargs="?", metavar="SPEC.toml", help="sweep spec file (see harness/sweep/toml_spec.py)"
    )
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
    add_budget_flags(p)
    add_logger_flag(p)
    add_compile_flag(p, default=None)
    add_precision_flag(p, default=None)
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
    from harness.run.trackers import check_installed

    spec = spec_from_args(args)
    check_installed(spec.loggers)
    if args.steps_per_second is not None and args.steps_per_second <= 0:
        raise UserError(f"--steps-per-second must be positive, got {args.steps_per_second}")
    if args.no_wait and spec.executor.kind == "local":
        raise UserError("--no-wait needs --executor slurm: local runs are throttled by this process")
    plan = make_plan(spec)
    suite = suites.get_suite(spec.suite)
    for task in dict.fromkeys(run.task for run in plan.runs):
        notice = suite.settings_for(task)[1]  # a task outside the suite: which settings it runs with
        if notice:
            print(notice, file=sys.stderr)
    if args.dry_run:
        print(describe_plan(plan, args.steps_per_second))
        return 0
    if spec.executor.kind == "local":  # a cluster's nodes check their own devices
        from harness.run.trainer import pick_device

        said = check_here(spec.precision, pick_device(spec.device))
        if said:
            print(said, file=sys.stderr)
    from harness.sweep.launch import run_sweep  # submitit: imported only to run

    return run_sweep(plan, wait=not args.no_wait, poll_s=args.poll, progress=not args.no_progress)


def cmd_status(args: argparse.Namespace) -> int:
    stale_after_s, hung_after_s = args.stale_after * 60, args.hung_after * 60
    statuses = sweep_status(Path(args.sweep_dir), stale_after_s=stale_after_s)
    if args.json:
        print(json.dumps(status_json(statuses, hung_after_s=hung_after_s), indent=2))
    else:
        text = format_status(
            Path(args.sweep_dir), statuses, stale_after_s=stale_after_s, hung_after_s=hung_after_s
        )
        print(text)
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    print(collect(Path(args.sweep_dir)).summary())
    return 0


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """The TOML spec (if given) with the flags on top; validated, but no method or task resolved yet."""
    spec = spec_from_toml(Path(args.spec)) if args.spec else SweepSpec(name="", methods=[])
    for name in (
        "name",
        "suite",
        "out",
        "dataset_dir",
        "device",
        "preset",
        "eval_workers",
        "compile",
        "precision",
    ):
        if getattr(args, name) is not None:
            setattr(spec, name, getattr(args, name))
    if args.methods is not None:
        spec.methods = _comma_list(args.methods)
    if args.tasks is not None:
        spec.tasks = _comma_list(args.tasks)
    if args.seeds is not None:
        spec.seeds = parse_seeds(args.seeds)
    if args.logger is not None:
        spec.loggers = parse_loggers(args.logger)
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


def _comma_list(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]
