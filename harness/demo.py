"""`flowarena demo`: learning curves of QAM and FQL in under ten minutes on a 2-core CPU, or with
`--quick` every registered method for a few hundred steps (a one-minute check, a table only).

The default demo is the `demo` suite's sweep (suites/demo.py): cube-single play data made here
with ogbench's oracles (first run only), QAM and FQL with small networks and the compiled update
(`--compile on` unless told otherwise) on cube-single task1, the runs in parallel worker processes (the local executor of `flowarena sweep`, `--jobs` at a
time) or, with `--jobs 1`, one after another in this process; every run evaluated every
`eval_interval` steps. Then the mean success per step goes to OUT/demo/learning_curves.png
(analysis/plots.py) and a table of each run's final evaluation to the terminal. Runs resume and
finished runs are skipped, so running the demo again only redraws.

`--quick` keeps the first demo: every registered method (or `--methods`) for 300 steps on
cube-double task1 under the smoke suite's tiny networks, records in OUT/demo-quick/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from harness.errors import UserError
from harness.progress import Progress, progress_bar
from harness.run.compile import add_compile_flag
from harness.run.precision import add_precision_flag, check_here

QUICK_TASK = "cube-double-play-singletask-task1-v0"
QUICK = {"steps": 300, "eval_episodes": 3, "episodes": 30, "episode_length": 200}
PLOT_NAME = "learning_curves.png"
STATUS_POLL_S = 5.0  # how often the step bar reads the runs' status.json


def cmd_demo(args: argparse.Namespace) -> int:
    from harness.run.trainer import pick_device

    said = check_here(args.precision, pick_device(args.device))  # before any data is made
    if said:
        print(said, file=sys.stderr)
    return quick_demo(args) if args.quick else learning_demo(args)


# --- the default demo: learning curves --------------------------------------------------
def learning_demo(args: argparse.Namespace) -> int:
    from suites import demo

    started = time.monotonic()
    seconds = {"dataset": _ensure_dataset(args, demo.DEMO_TASK, demo.DEMO_DATA)}
    plan = _demo_plan(args)
    jobs = _jobs(args, len(plan.todo))
    print(
        f"training {', '.join(plan.spec.methods)} on {demo.DEMO_TASK} for {plan.budget.offline_steps} steps, "
        f"evaluating every {plan.budget.eval_interval} steps ({plan.budget.eval_episodes} episodes); "
        f"{jobs} run(s) at a time; records in {plan.sweep_dir}",
        flush=True,
    )
    tic = time.monotonic()
    code = _train(plan, jobs, progress=not args.no_progress)
    seconds["training and evaluation"] = time.monotonic() - tic
    tic = time.monotonic()
    path = plot_demo(plan.sweep_dir)
    seconds["plot"] = time.monotonic() - tic
    print(demo_table(plan.sweep_dir))
    print(f"learning curves: {path}")
    seconds["total"] = time.monotonic() - started
    print("time: " + ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items()))
    return code


def _demo_plan(args: argparse.Namespace):
    from harness.sweep.options import ExecutorOptions
    from harness.sweep.plan import make_plan
    from harness.sweep.spec import SweepSpec
    from suites import demo

    given = {
        "offline_steps": args.steps,
        "eval_interval": args.eval_interval,
        "eval_episodes": args.eval_episodes,
    }
    budget = {key: value for key, value in given.items() if value is not None}
    steps = budget.get("offline_steps", demo.DEMO_BUDGETS["offline_steps"])
    budget.update(log_interval=max(1, steps // 10), checkpoint_interval=steps)
    spec = SweepSpec(
        name="demo",
        methods=_methods(args, list(demo.DEMO_METHODS)),
        suite="demo",
        tasks=[demo.DEMO_TASK],
        seeds=[0],
        budget=budget,
        out=args.out,
        dataset_dir=args.dataset_dir,
        device=args.device,
        compile=args.compile or demo.DEMO_COMPILE,
        precision=args.precision,
        executor=ExecutorOptions(),
    )
    return make_plan(spec)


def _jobs(args: argparse.Namespace, runs: int) -> int:
    """--jobs, else one process per run up to the CPU count."""
    if args.jobs is not None:
        if args.jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {args.jobs}")
        return args.jobs
    return max(1, min(runs, os.cpu_count() or 1))


def _train(plan, jobs: int, *, progress: bool) -> int:
    """The plan's unfinished runs: in this process one after another (jobs 1) or in `jobs` worker
    processes at once through the sweep's local executor. 0 when every run is done."""
    from harness.run.train import run

    if jobs == 1:
        states = [run(planned.spec, progress=progress) for planned in plan.todo]
        return 0 if all(state == "done" for state in states) else 1
    from harness.sweep.launch import run_sweep

    plan.spec.executor.jobs = jobs
    with _step_bar(plan, enabled=progress):
        return run_sweep(plan, progress=False)  # the step bar instead of the sweep's runs-finished bar


@contextlib.contextmanager
def _step_bar(plan, *, enabled: bool) -> Iterator[Progress]:
    """One bar of the training steps of all the plan's runs, read from their status.json (the
    runs' heartbeat) every few seconds while the worker processes train."""
    total = plan.budget.offline_steps * len(plan.todo)
    bar = progress_bar(total=total, desc="training (all runs)", unit="step", enabled=enabled)
    stop = threading.Event()

    def refresh() -> None:
        steps = {run.variant: _status_step(run.run_dir) for run in plan.todo}
        bar.set_postfix(steps, refresh=False)
        bar.update(sum(steps.values()) - bar.n)

    def watch() -> None:
        while not stop.wait(STATUS_POLL_S):
            refresh()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        refresh()
        bar.close()


def _status_step(run_dir: Path) -> int:
    from harness.run import records

    try:
        return int(records.RunDir(run_dir).read_status().get("step") or 0)
    except (OSError, ValueError):  # not written yet
        return 0


def plot_demo(sweep_dir: Path) -> Path:
    """Mean success per evaluation step of every variant, one panel for the demo's domain."""
    from analysis import records
    from analysis.plots import plot_learning_curves
    from analysis.stats import aggregate

    evals = records.load(sweep_dir)
    curves = aggregate(evals, metrics=("mean",), step="all", by="domain", reps=200, progress=False)
    return plot_learning_curves(curves, sweep_dir / PLOT_NAME, metric="mean")


# --- --quick: every method briefly --------------------------------------------------------
def quick_demo(args: argparse.Namespace) -> int:
    from algorithms import registry
    from harness.run.spec import Budget, RunSpec
    from harness.run.train import run

    _ensure_dataset(args, QUICK_TASK, {key: QUICK[key] for key in ("episodes", "episode_length")})
    steps = args.steps or QUICK["steps"]
    budget = Budget(
        offline_steps=steps,
        eval_interval=args.eval_interval or steps,
        eval_episodes=args.eval_episodes or QUICK["eval_episodes"],
        log_interval=max(1, steps // 4),
        checkpoint_interval=steps,
    )
    states = {}
    for method in _methods(args, registry.names()):
        spec = RunSpec(
            method=method,
            task=QUICK_TASK,
            seed=0,
            out=args.out,
            sweep="demo-quick",
            suite="smoke",
            dataset_dir=args.dataset_dir,
            budget=budget,
            device=args.device,
            compile=args.compile or "auto",
            precision=args.precision,
        )
        states[method] = run(spec, progress=not args.no_progress)
    print(demo_table(Path(args.out) / "demo-quick"))
    return 0 if all(state == "done" for state in states.values()) else 1


# --- shared -------------------------------------------------------------------------------
def _methods(args: argparse.Namespace, default: list[str]) -> list[str]:
    return [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else default


def _ensure_dataset(args: argparse.Namespace, task: str, data: dict) -> float:
    """Generates the task's play data in --dataset-dir unless it is there, with `data`'s episodes,
    episode_length, and optional workers and val_episodes (training never reads the validation
    file); the seconds it took."""
    from harness.datagen import generate
    from harness.run.sources.ogbench_source import base_env_name, dataset_name

    dataset_dir = Path(args.dataset_dir)
    path = dataset_dir / f"{dataset_name(task)}.npz"
    episodes = args.episodes or data["episodes"]
    length = args.episode_length or data["episode_length"]
    if path.exists():
        _say_which_dataset(path, wanted=episodes * (length + 1))
        return 0.0
    print(
        f"generating {episodes} episodes of {length} steps in {dataset_dir} with {data.get('workers', 1)} "
        "process(es) (first run only)",
        flush=True,
    )
    tic = time.monotonic()
    generate(
        base_env_name(task),
        episodes,
        dataset_dir,
        episode_length=length,
        seed=0,
        val_episodes=data.get("val_episodes"),
        workers=data.get("workers", 1),
        progress=not args.no_progress,
    )
    return time.monotonic() - tic


def _say_which_dataset(path: Path, *, wanted: int) -> None:
    """One line when the demo reuses a dataset of another size than it would generate (an earlier
    demo's, or one made with other --episodes): the curves depend on it."""
    import zipfile

    import numpy as np

    try:
        with np.load(path) as arrays:
            transitions = len(arrays["terminals"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return  # the run's loader says what is wrong with the file
    if transitions != wanted:
        print(
            f"using the {transitions} transitions already in {path} (the demo would generate {wanted}; "
            "delete the file to regenerate)",
            flush=True,
        )


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
    if (last["eval_params"] != "").any():  # e.g. QGF's guidance weights: one row per setting
        columns.insert(3, "eval_params")
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    from suites import demo

    budget = demo.DEMO_BUDGETS
    p = sub.add_parser(
        "demo",
        help="QAM and FQL learning cube-single on generated data: a learning-curve PNG in under ten minutes "
        "(--quick: every method briefly, a table)",
        description=f"Generate cube-single play data (first run only), train {' and '.join(demo.DEMO_METHODS)} "
        f"on {demo.DEMO_TASK} with the demo suite's small networks, plot success per step to "
        f"OUT/demo/{PLOT_NAME} and print the final success of each. --quick: every registered method "
        f"for {QUICK['steps']} steps on {QUICK_TASK} with tiny networks, a table only.",
    )
    p.add_argument("--quick", action="store_true", help="the one-minute check: every method briefly, a table")
    p.add_argument(
        "--out", default="results", help="results root; records go to OUT/demo/ (--quick: OUT/demo-quick/)"
    )
    p.add_argument("--dataset-dir", default="data/demo", help="where the generated dataset lives")
    p.add_argument(
        "--episodes",
        type=int,
        help=f"episodes to generate when no dataset is there (default {demo.DEMO_DATA['episodes']}; "
        f"--quick: {QUICK['episodes']})",
    )
    p.add_argument(
        "--episode-length",
        type=int,
        help=f"steps per generated episode (default {demo.DEMO_DATA['episode_length']}; "
        f"--quick: {QUICK['episode_length']})",
    )
    p.add_argument(
        "--steps",
        type=int,
        help=f"training steps per method (default {budget['offline_steps']}; --quick: {QUICK['steps']})",
    )
    p.add_argument(
        "--eval-interval",
        type=int,
        help=f"evaluate every N steps (default {budget['eval_interval']}; --quick: at the end)",
    )
    p.add_argument(
        "--eval-episodes",
        type=int,
        help=f"episodes per evaluation (default {budget['eval_episodes']}; --quick: {QUICK['eval_episodes']})",
    )
    p.add_argument(
        "--methods",
        help=f"comma-separated registry names (default {','.join(demo.DEMO_METHODS)}; --quick: every registered method)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        help="runs at once, each in its own process (default: one per method up to the CPU count; "
        "1: one after another in this process)",
    )
    p.add_argument("--device", default="auto")
    add_compile_flag(
        p,
        default=None,
        default_text=f"{demo.DEMO_COMPILE}; --quick: auto, which leaves its 300-step runs eager",
    )
    add_precision_flag(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
