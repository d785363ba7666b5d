"""The `flowarena` command: `run`, `evaluate`, `methods` and `datagen` here, and the subcommands
of the sweep room, the suites, the analysis package, the benchmark and the demo (harness/demo.py),
registered from their own modules. Nothing in harness/ imports this module. Torch-using modules are
imported inside the commands, so the analysis commands start fast and never load torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import analysis.cli
import suites.cli
from harness import bench, demo
from harness.args import (
    add_budget_flags,
    add_logger_flag,
    budget_from_args,
    parse_assignments,
    parse_eval_grid,
    parse_loggers,
    parse_seeds,
    quiet_library_warnings,
)
from harness.errors import StorageError, UserError
from harness.run.compile import add_compile_flag
from harness.run.precision import add_precision_flag, check_here
from harness.sweep import cli as sweep_cli


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose message is the whole story: printed, exit code 2."""
    from algorithms.registry import RegistryError

    return (UserError, RegistryError, suites.SuiteError, analysis.AnalysisError)


# --- run --------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from harness.run.spec import RunSpec, method_protocol
    from harness.run.trackers import check_installed
    from harness.run.trainer import pick_device

    suite = suites.get_suite(args.suite)
    notice = suite.settings_for(args.task)[1]  # a task outside the suite: which settings it runs with
    for line in (notice, suite.methods_notice(args.method, args.task)):
        if line:
            print(line, file=sys.stderr)
    if args.eval_workers is not None and args.eval_workers < 0:
        raise UserError(f"--eval-workers must be an integer >= 0, got {args.eval_workers}")
    loggers = parse_loggers(args.logger)
    check_installed(loggers)
    spec = RunSpec(
        method=args.method,
        task=args.task,
        seed=args.seed,
        out=args.out,
        sweep=args.sweep,
        suite=args.suite,
        overrides=parse_assignments(args.set, "--set"),
        dataset_dir=args.dataset_dir,
        budget=budget_from_args(args, suite.budgets, method_protocol(args.method)),
        device=args.device,
        eval_params=parse_eval_grid(args.eval_param),
        eval_workers=args.eval_workers or 0,
        loggers=loggers,
        compile=args.compile,
        precision=args.precision,
    )
    check_here(spec.precision, pick_device(spec.device))  # before any directory is made (the run says it)
    if args.online_steps is None and spec.budget.online_steps > 0:
        print(online_default_note(suite.name, spec.budget.online_steps), file=sys.stderr)
    specs = (
        [spec] if args.seeds is None else [dataclasses.replace(spec, seed=s) for s in parse_seeds(args.seeds)]
    )
    return _run_locked(specs, stacked=args.seeds is not None, progress=not args.no_progress)


def _run_locked(specs: list[Any], *, stacked: bool, progress: bool) -> int:
    """Train the runs holding their locks (harness/run/lock.py, as sweep jobs do), after checking
    that their directories take writes; 0 when every run is done."""
    from pathlib import Path

    from harness.run.lock import hold_run_locks
    from harness.run.records import check_writable
    from harness.run.spec import resolve
    from harness.run.train import run, run_group

    run_dirs = [Path(resolve(spec).path) for spec in specs]
    for run_dir in run_dirs:
        check_writable(run_dir)
    with hold_run_locks(run_dirs):
        if not stacked:
            return 0 if run(specs[0], progress=progress) == "done" else 1
        states = run_group(specs, progress=progress)
    return 0 if all(state == "done" for state in states.values()) else 1


def online_default_note(suite: str, online_steps: int) -> str:
    """The run's online phase was not asked for on the command line: say where it comes from."""
    return (
        f"note: after the offline phase this run trains {online_steps:,} online steps, suite {suite}'s "
        "default; give --online-steps 0 for an offline-only run"
    )


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and evaluate one (method, task, seed); resumes when run again")
    p.add_argument("--method", required=True, help="registry name (see `flowarena methods`)")
    p.add_argument("--task", required=True, help="e.g. cube-double-play-singletask-task1-v0")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0)
    seeds.add_argument(
        "--seeds",
        metavar="LIST",
        help="train these seeds together in this process, stacked: one batched update for all "
        "(e.g. 0,1,2,3 or 0-3 or a count 4); each seed gets its own run directory and records",
    )
    p.add_argument("--dataset-dir", help="directory holding the OGBench .npz files (default ~/.ogbench/data)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument(
        "--eval-param", action="append", metavar="KEY=V1,V2", help="evaluation-time parameter values"
    )
    p.add_argument("--out", default="results", help="results root (default results/)")
    p.add_argument(
        "--sweep", default="default", help="sweep name: records go to OUT/SWEEP/... (default 'default')"
    )
    p.add_argument("--suite", default="ogbench", help="suite giving task settings and hyperparameters")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--eval-workers",
        type=int,
        help="worker processes stepping the evaluation environments (default 0: this process; "
        "the numbers do not depend on it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_logger_flag(p)
    add_compile_flag(p)
    add_precision_flag(p)
    add_budget_flags(p)
    p.set_defaults(func=cmd_run)


# --- evaluate ---------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.run.lock import hold_run_locks
    from harness.run.reevaluate import reevaluate

    with hold_run_locks([Path(args.run_dir)]):  # no training may write the rows meanwhile
        report = reevaluate(
            args.run_dir,
            parse_eval_grid(args.eval_param),
            eval_episodes=args.eval_episodes,
            device=args.device,
            progress=not args.no_progress,
        )
    print(report.summary())
    return 0


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a run's checkpoint for more eval-parameter settings, without training; appends rows",
        description="Evaluate RUN_DIR's checkpoint at its step for every --eval-param setting not yet "
        "recorded there and append one evals row per setting; recorded settings are skipped.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="e.g. results/default/qgf/<task>/seed0")
    p.add_argument(
        "--eval-param",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="evaluation-time parameter values, e.g. guidance_weight=0.004,0.01,0.04; repeatable (cross product)",
    )
    p.add_argument("--eval-episodes", type=int, help="episodes per setting (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


# --- methods ----------------------------------------------------------------------------
def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from algorithms import registry, values

    listing = []
    for name in registry.names():
        method = registry.get(name)
        config = method.default_config()
        listing.append(
            {
                "name": name,
                "class": f"{method.cls.__module__}.{method.cls.__qualname__}",
                "description": method.description,
                "config": {f.name: getattr(config, f.name) for f in dataclasses.fields(config)},
                "valid": values.describe_all(method.cls.Config),
                "eval_params": dict(method.cls.eval_params),
            }
        )
    if args.json:
        print(json.dumps(listing, indent=2, default=list))
        return 0
    for entry in listing:
        print(f"{entry['name']}  ({entry['class']})")
        if entry["description"]:
            print(f"  {entry['description']}")
        shown = {key: f"{key}={_show(value)}" for key, value in entry["config"].items()}
        width = max(map(len, shown.values()))
        for key, text in shown.items():
            print(f"    {text:<{width}}  {entry['valid'][key]}")
        if entry["eval_params"]:
            print("  eval params: " + ", ".join(f"{k}={_show(v)}" for k, v in entry["eval_params"].items()))
    return 0


def _show(value: Any) -> str:
    from harness.run.spec import format_value

    return format_value(value)


# --- datagen ----------------------------------------------------------------------------
def cmd_datagen(args: argparse.Namespace) -> int:
    from harness.datagen import generate

    train_path, val_path = generate(
        args.env,
        args.episodes,
        args.out,
        episode_length=args.episode_length,
        seed=args.seed,
        workers=args.workers,
        dataset_type=args.dataset_type,
        p_random_action=args.p_random_action,
    )
    print(f"wrote {train_path} and {val_path}")
    return 0


def add_datagen_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datagen", help="generate an OGBench-format play or noisy dataset with ogbench's scripted oracles"
    )
    p.add_argument("--env", required=True, help="cube-double-v0, scene-v0, puzzle-3x3-v0, ...")
    p.add_argument("--episodes", type=int, required=True, help="training episodes (plus 10%% validation)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--episode-length", type=int, default=1000, help="transitions per episode (OGBench: 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes collecting episodes at once (a file per seed and count)",
    )
    p.add_argument(
        "--dataset-type",
        choices=("play", "noisy"),
        default="play",
        help="play: plan oracles; noisy: Markov oracles with per-episode Gaussian action noise and random "
        "actions (OGBench's data_gen_scripts)",
    )
    p.add_argument(
        "--p-random-action",
        type=float,
        help="noisy: chance of a uniformly random action (default OGBench's: 0.1 cube/scene, 0.2 puzzle)",
    )
    p.set_defaults(func=cmd_datagen)


# --- entry point ------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowarena",
        description="Benchmark harness for offline(-to-online) RL with flow policies on OGBench.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    add_evaluate_parser(sub)
    sub.add_parser(
        "methods", help="list registered methods with their config defaults and valid values"
    ).add_argument("--json", action="store_true")
    sub.choices["methods"].set_defaults(func=cmd_methods)
    add_datagen_parser(sub)
    demo.add_parser(sub)
    suites.cli.register(sub)
    sweep_cli.register(sub)
    analysis.cli.register(sub)
    bench.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except user_errors() as error:
        print(f"flowarena: error: {error}", file=sys.stderr)
        return 2
    except StorageError as error:  # a write refused after the work started: nothing before it is lost
        print(f"flowarena: error: {error}; fix the cause and run the same command again", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `flowarena suites ogbench | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        print("flowarena: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
