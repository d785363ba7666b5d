"""`flowarena plan-seeds`: before a sweep, the power of a planned comparison for a few seed counts
and effect sizes (analysis.power, from the released per-seed results) and, given one GPU's
throughput, the GPU-hours of each plan as `flowarena sweep --dry-run` computes them (harness/sweep/plan.py)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import suites
from harness.errors import UserError
from harness.sweep.plan import expand_tasks, gpu_hours, make_plan, plan_steps
from harness.sweep.spec import SweepSpec


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan-seeds",
        help="before a sweep: the power of A vs B per seed count and effect, from the released seeds",
        description="Power of a two-sided test that A and B differ, for each seed count per task and "
        "each effect in success points, simulated from the QAM paper's released per-seed results of "
        "A and B (their seed-to-seed noise on each task); and the seeds per task each effect needs.",
    )
    p.add_argument("a", help="method whose released seed noise stands for side A (e.g. qam)")
    p.add_argument("b", help="method of side B (e.g. fql), run in the sweep or, with --published, not run")
    p.add_argument("--published", action="store_true", help="B is not run: compare with its published seeds")
    p.add_argument("--suite", default="ogbench", help="suite of the planned sweep (default ogbench)")
    p.add_argument("--tasks", help="comma-separated task or domain names (default: the whole suite)")
    p.add_argument(
        "--n-tasks",
        type=int,
        metavar="K",
        help="a sweep of K of those tasks (each simulated sweep draws its own)",
    )
    p.add_argument("--effects", default="2,5,10", help="effects in success points (default 2,5,10)")
    p.add_argument("--seeds", default="3,5,8,12", help="seed counts per task (default 3,5,8,12)")
    p.add_argument("--aggregate", choices=("mean", "iqm"), default="mean")
    p.add_argument("--power", type=float, default=0.8, help="target power (default 0.8)")
    p.add_argument("--alpha", type=float, default=0.05, help="test level (default 0.05)")
    p.add_argument("--phase", choices=("offline", "online"), default="offline")
    p.add_argument("--sims", type=int, default=2000, help="simulated sweeps per seed count (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulation (default 0)")
    p.add_argument(
        "--steps-per-second", type=float, metavar="S", help="one GPU's throughput: adds GPU-hours per row"
    )
    p.set_defaults(func=cmd_plan_seeds)


def _numbers(text: str, flag: str, kind: type) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise UserError(f"{flag} expects positive {kind.__name__}s separated by commas, got {text!r}")
    return values


def cmd_plan_seeds(args: argparse.Namespace) -> int:
    from analysis.power import render_power, seeds_needed

    effects = _numbers(args.effects, "--effects", float)
    counts = _numbers(args.seeds, "--seeds", int)
    if args.steps_per_second is not None and args.steps_per_second <= 0:
        raise UserError(f"--steps-per-second must be positive, got {args.steps_per_second}")
    suite = suites.get_suite(args.suite)
    tasks = expand_tasks(suite, [t.strip() for t in args.tasks.split(",")] if args.tasks else [])
    plan = seeds_needed(
        args.a, args.b, tasks=tasks, published=args.published, effects=effects, seeds=counts,
        aggregate=args.aggregate, power=args.power, alpha=args.alpha, phase=args.phase,
        sims=args.sims, seed=args.seed, n_tasks=args.n_tasks,
    )  # fmt: skip
    hours = None
    if args.steps_per_second:
        methods = [plan.a] if args.published else [plan.a, plan.b]
        chosen = plan.tasks[: plan.n_tasks]  # which K of them: the hours are alike for the tasks of a suite
        hours = {
            n: plan_hours(methods, args.suite, chosen, n, args.phase, args.steps_per_second) for n in counts
        }
    print(render_power(plan, hours), end="")
    if hours:
        print(
            f"GPU-hours: {' + '.join(methods)} on {plan.n_tasks} tasks, as `flowarena sweep --dry-run "
            f"--steps-per-second {args.steps_per_second:g}` computes them (training steps only)"
        )
    return 0


def plan_hours(
    methods: list[str], suite: str, tasks: list[str], seeds: int, phase: str, steps_per_second: float
) -> float:
    """GPU-hours of the sweep of `methods` x `tasks` x `seeds` seeds (offline only unless `phase` is online)."""
    with tempfile.TemporaryDirectory() as out:
        spec = SweepSpec(
            name="plan-seeds",
            methods=list(methods),
            suite=suite,
            tasks=list(tasks),
            seeds=list(range(seeds)),
            budget={"online_steps": 0} if phase == "offline" else {},
            out=str(Path(out)),
        )
        return gpu_hours(plan_steps(make_plan(spec)), steps_per_second)
