"""The `flowarena` command. Torch-using modules are imported inside the commands, so the
analysis commands start fast and never load torch."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import analysis.cli
import suites.cli
from harness import bench, sweep
from harness.errors import UserError

DEMO_TASK = "cube-double-play-singletask-task1-v0"


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose message is the whole story: printed, exit code 2."""
    from algorithms.registry import RegistryError

    return (UserError, RegistryError, suites.SuiteError, analysis.AnalysisError)


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """['alpha=300', 'rho=0'] -> {'alpha': '300', 'rho': '0'}."""
    parsed: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_eval_grid(items: Sequence[str] | None) -> list[dict[str, float]]:
    """['guidance_weight=0.004,0.01'] -> [{'guidance_weight': 0.004}, {'guidance_weight': 0.01}]."""
    values: dict[str, list[float]] = {}
    for key, text in parse_assignments(items, "--eval-param").items():
        try:
            values[key] = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--eval-param {key} expects comma-separated numbers, got {text!r}") from None
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())] if values else []


# --- run ---------------------------------------------------------------------------------
def add_budget_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("budget (defaults: the suite's)")
    group.add_argument("--offline-steps", type=int, help="offline gradient steps")
    group.add_argument(
        "--online-steps",
        type=int,
        help="online environment steps after the offline phase (fine-tuning while acting; 0: none)",
    )
    group.add_argument(
        "--online-warmup-steps",
        type=int,
        help="online updates begin at this online step, when that many online transitions are "
        "in the buffer (default 5000)",
    )
    group.add_argument(
        "--utd-ratio", type=int, help="updates per online environment step (update-to-data ratio, default 1)"
    )
    group.add_argument(
        "--eval-interval", type=int, help="evaluate every N steps (and at the end of each phase)"
    )
    group.add_argument("--eval-episodes", type=int, help="episodes per evaluation")
    group.add_argument(
        "--eval-envs",
        type=int,
        help="environments evaluating in lockstep, one batched policy call per chunk for all "
        "(default 10, at most --eval-episodes; part of the run's identity: it decides each episode's noise)",
    )
    group.add_argument("--log-interval", type=int, help="training metrics every N steps (default 5000)")
    group.add_argument(
        "--checkpoint-interval", type=int, help="checkpoint every N steps (default: eval interval)"
    )


def budget_from_args(args: argparse.Namespace, suite_budgets: dict[str, int]):
    from harness.train import Budget

    defaults = Budget()
    values = {
        name: suite_budgets.get(name, getattr(defaults, name)) for name in ("offline_steps", "online_steps")
    }
    values.update(eval_interval=suite_budgets.get("eval_interval", defaults.eval_interval))
    values.update(eval_episodes=suite_budgets.get("eval_episodes", defaults.eval_episodes))
    for name in ("offline_steps", "online_steps", "eval_interval", "eval_episodes"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values["log_interval"] = args.log_interval or min(defaults.log_interval, values["eval_interval"])
    values["checkpoint_interval"] = args.checkpoint_interval or values["eval_interval"]
    for name in ("online_warmup_steps", "utd_ratio", "eval_envs"):
        given = getattr(args, name, None)
        values[name] = suite_budgets.get(name, getattr(defaults, name)) if given is None else given
    return Budget(**values)


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses

    from harness.train import RunSpec, run, run_group

    suite = suites.get_suite(args.suite)
    if args.eval_workers is not None and args.eval_workers < 0:
        raise UserError(f"--eval-workers must be an integer >= 0, got {args.eval_workers}")
    spec = RunSpec(
        method=args.method,
        task=args.task,
        seed=args.seed,
        out=args.out,
        sweep=args.sweep,
        suite=args.suite,
        overrides=parse_assignments(args.set, "--set"),
        dataset_dir=args.dataset_dir,
        budget=budget_from_args(args, suite.budgets),
        device=args.device,
        eval_params=parse_eval_grid(args.eval_param),
        eval_workers=args.eval_workers or 0,
    )
    if args.seeds is None:
        return 0 if run(spec, progress=not args.no_progress) == "done" else 1
    seeds = sweep.parse_seeds(args.seeds)
    states = run_group(
        [dataclasses.replace(spec, seed=seed) for seed in seeds], progress=not args.no_progress
    )
    return 0 if all(state == "done" for state in states.values()) else 1


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
    add_budget_flags(p)
    p.set_defaults(func=cmd_run)


# --- evaluate ------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.reevaluate import reevaluate

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


# --- methods -------------------------------------------------------------------------------
def cmd_methods(args: argparse.Namespace) -> int:
    import dataclasses

    from algorithms import registry

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
        print("  config: " + ", ".join(f"{k}={_show(v)}" for k, v in entry["config"].items()))
        if entry["eval_params"]:
            print("  eval params: " + ", ".join(f"{k}={_show(v)}" for k, v in entry["eval_params"].items()))
    return 0


def _show(value: Any) -> str:
    from harness.train import format_value

    return format_value(value)


# --- datagen -------------------------------------------------------------------------------
def cmd_datagen(args: argparse.Namespace) -> int:
    from harness.datagen import generate

    train_path, val_path = generate(
        args.env, args.episodes, args.out, episode_length=args.episode_length, seed=args.seed
    )
    print(f"wrote {train_path} and {val_path}")
    return 0


def add_datagen_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datagen", help="generate an OGBench-format play dataset with ogbench's scripted oracles"
    )
    p.add_argument("--env", required=True, help="cube-double-v0, scene-v0, puzzle-3x3-v0, ...")
    p.add_argument("--episodes", type=int, required=True, help="training episodes (plus 10%% validation)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--episode-length", type=int, default=1000, help="transitions per episode (OGBench: 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_datagen)


# --- demo ----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from algorithms import registry
    from harness.data import base_env_name, dataset_name
    from harness.datagen import generate
    from harness.train import Budget, RunSpec, run

    dataset_dir = Path(args.dataset_dir)
    if not (dataset_dir / f"{dataset_name(DEMO_TASK)}.npz").exists():
        print(f"generating a small dataset in {dataset_dir} (first run only)")
        generate(base_env_name(DEMO_TASK), args.episodes, dataset_dir, episode_length=200, seed=0)
    methods = args.methods.split(",") if args.methods else registry.names()
    budget = Budget(
        offline_steps=args.steps,
        eval_interval=args.steps,
        eval_episodes=args.eval_episodes,
        log_interval=max(1, args.steps // 4),
        checkpoint_interval=args.steps,
    )
    states = {}
    for method in methods:
        spec = RunSpec(
            method=method,
            task=DEMO_TASK,
            seed=0,
            out=args.out,
            sweep="demo",
            suite="smoke",
            dataset_dir=str(dataset_dir),
            budget=budget,
            device=args.device,
        )
        states[method] = run(spec, progress=not args.no_progress)
    print(demo_table(Path(args.out) / "demo"))
    return 0 if all(state == "done" for state in states.values()) else 1


def demo_table(sweep_dir: Path) -> str:
    """A plain-text table of every run's final evaluation in a sweep directory."""
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted(sweep_dir.glob("*/*/seed*/evals.parquet"))]
    if not frames:
        return "no evaluations recorded"
    evals = pd.concat(frames, ignore_index=True)
    last = evals.sort_values("step").groupby(["variant", "task", "seed", "eval_params"], sort=False).tail(1)
    last = last.assign(
        updates_per_s=(last["step"] / last["wall_time_s"]).round(1),
        success=(100 * last["success"]).round(1),
        **{"return": last["return"].round(1)},
    )
    columns = ["variant", "task", "seed", "step", "success", "return", "episode_length", "updates_per_s"]
    return "\n".join(
        [
            "success: percent of evaluation episodes solved; updates_per_s: training steps per second of wall time",
            last[columns].sort_values("variant").to_string(index=False),
            *same_config_notes(sweep_dir),
        ]
    )


def same_config_notes(sweep_dir: Path) -> list[str]:
    """A line for every set of variants that trained one task with the same class and config (a
    preset whose switch the suite's per-domain table turns off there), which explains equal rows."""
    from algorithms import registry

    groups: dict[str, list[str]] = {}
    for path in sorted(sweep_dir.glob("*/*/seed*/spec.json")):
        spec = json.loads(path.read_text())
        agent_class = registry.get(spec["method"]).cls.__qualname__
        key = json.dumps([spec["task"], spec["seed"], agent_class, spec["config"]], sort_keys=True)
        groups.setdefault(key, []).append(spec["variant"])
    return [
        f"{', '.join(variants)}: same config on {json.loads(key)[0]}, from the suite's per-domain table"
        for key, variants in groups.items()
        if len(variants) > 1
    ]


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="every registered method, briefly, on a generated dataset; prints a table"
    )
    p.add_argument("--out", default="results", help="results root; records go to OUT/demo/")
    p.add_argument("--dataset-dir", default="data/demo", help="where the generated dataset lives")
    p.add_argument("--episodes", type=int, default=30, help="episodes to generate when no dataset is there")
    p.add_argument("--steps", type=int, default=300, help="training steps per method")
    p.add_argument("--eval-episodes", type=int, default=3)
    p.add_argument("--methods", help="comma-separated subset (default: every registered method)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)


# --- entry point ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowarena",
        description="Benchmark harness for offline(-to-online) RL with flow policies on OGBench.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    add_evaluate_parser(sub)
    sub.add_parser("methods", help="list registered methods with their config defaults").add_argument(
        "--json", action="store_true"
    )
    sub.choices["methods"].set_defaults(func=cmd_methods)
    add_datagen_parser(sub)
    add_demo_parser(sub)
    suites.cli.register(sub)
    sweep.register(sub)
    analysis.cli.register(sub)
    bench.register(sub)
    return parser


def quiet_library_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*DISPLAY environment variable is missing.*")
    warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32.*")


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_warnings()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except user_errors() as error:
        print(f"flowarena: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `flowarena suites ogbench | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        print("flowarena: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
