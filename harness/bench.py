"""`flowarena bench`: how fast one method trains and evaluates here.

    flowarena bench --method qam [--config paper|medium|small] [--compile auto|on|off|both] [--seeds 1] [--json]
    flowarena bench --method all --config medium --eval-episodes 0     # one table, every method
    flowarena bench --method all --config paper --precision fp32,bf16  # bf16 beside float32

Measures, for the method's update at a fixed network and batch configuration:

- updates/s: the training loop's step (sample a batch from the replay buffer on the device, one
  update, its metrics into the device-side NaN tracker, read every 100 steps as in training),
  timed over `--steps` steps after `--warmup` steps, the device synchronised at both ends, the
  best of `--repeats` rounds; with `--seeds S` one step updates S stacked seeds, and
  `seed_updates_per_s` = S x updates/s
- GFLOP/s: floating-point operations of one update counted by torch's FlopCounterMode (matrix
  products; elementwise work is not counted) times updates/s
- compile s: with a compiled update (`--compile on`; `auto`, the default, is what a full-length run
  does on this device: on for a CPU), the time of the first update, which plans its draws and compiles it, less a
  compiled update's time; `both` times the eager and the compiled update back to back, taking
  turns in every round
- peak GFLOP/s: one large matrix product on the same device in each precision (its practical
  peak: float32, or bfloat16 matrices for bf16), and each update's GFLOP/s as a share of it
- `--precision fp32,bf16`: every figure in each precision (algorithms/precision.py), the paths
  taking turns in every round; the first precision gives the main columns, the others a column of
  updates/s, their speed-up over the first and their share of their own peak. A precision the device
  cannot compute (bf16 without bfloat16 units) is refused before anything is timed
- sampler batches/s: the replay buffer's chunk sampler alone
- evaluation episodes/s: `--eval-episodes` episodes of a real OGBench task (`--eval-task`) with
  the untrained policy, `--eval-envs` environments in lockstep, one batched policy call per chunk

`--config paper` is the method's defaults (4 x 512 networks, 10 critics, batch 256) on the QAM
paper's stated shapes: observations of 37, actions of 5, chunks of 5 (cube-double's), on a
synthetic dataset of random transitions (the update's cost does not depend on the data).
`--config medium` is 3 x 256 networks, 2 critics, batch 256 (the shape of most published ablations),
`--config small` the smoke suite's TINY config, both on the same shapes. `--method all` measures
every registered method in turn and prints one table. The evaluation agent is
built for the evaluation task's own shapes, untrained.
Progress goes to stderr; `--json` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.bench_table import format_result, format_table
from harness.errors import UserError
from harness.run.precision import check_here
from harness.run.precision import check_name as check_precision
from harness.timing import (
    TrainingStep,
    _rate,
    path_label,
    peak_gflops,
    precision_figures,
    synthetic_buffer,
    time_alternately,
    update_flops,
)

CONFIGS = ("paper", "medium", "small")
MEDIUM = {"hidden_dims": (256, 256, 256), "num_critics": 2, "batch_size": 256}
BENCH_COMPILE = ("auto", "on", "off", "both")
ALL_METHODS = "all"
FULL_LENGTH_UPDATES = 1_500_000
PAPER_SHAPES = {"obs_dim": 37, "action_dim": 5, "horizon": 5, "discount": 0.99}
DEFAULT_EVAL_TASK = "cube-double-play-singletask-task1-v0"


@dataclass
class BenchSettings:
    method: str
    config: str = "paper"
    device: str = "auto"
    steps: int = 20
    warmup: int = 3
    repeats: int = 1  # rounds of `steps` timed updates; the best round counts
    seeds: int = 1
    sampler_batches: int = 200
    eval_episodes: int = 10
    eval_envs: int | None = None  # None: the training default (harness.run.evaluate.default_eval_envs)
    eval_workers: int = 0  # worker processes stepping the environments (0: this process)
    eval_task: str = DEFAULT_EVAL_TASK
    threads: int | None = None
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)
    compile: str = "auto"  # auto (= on, as a full-length run), on, off, or both back to back
    # products' precisions timed back to back (algorithms/precision.py); the first is the table's main
    precisions: tuple[str, ...] = ("fp32",)

    def validate(self) -> None:
        if self.config not in CONFIGS:
            raise UserError(f"--config must be one of {', '.join(CONFIGS)}, got {self.config!r}")
        if self.compile not in BENCH_COMPILE:
            raise UserError(f"--compile must be one of {', '.join(BENCH_COMPILE)}, got {self.compile!r}")
        if not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise UserError(f"--precision takes distinct precisions, got {','.join(self.precisions)!r}")
        for precision in self.precisions:
            check_precision(precision)
        minimums = {
            "steps": 1,
            "warmup": 0,
            "seeds": 1,
            "repeats": 1,
            "sampler_batches": 0,
            "eval_episodes": 0,
            "eval_workers": 0,
        }
        for name, minimum in minimums.items():
            if getattr(self, name) < minimum:
                raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(self, name)}")
        for name in ("eval_envs", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def bench_config(method: Any, config: str, overrides: dict[str, str]) -> Any:
    """The method's config at `paper` (its defaults), `medium` (MEDIUM) or `small` (the smoke
    suite's TINY)."""
    from algorithms import registry
    from suites.smoke import TINY

    fields = registry.config_fields(method)
    sizes = {"paper": {}, "medium": MEDIUM, "small": TINY}[config]
    values = {k: v for k, v in sizes.items() if k in fields}
    return registry.make_config(method, {**values, **overrides})


def compile_modes(choice: str, device: Any) -> list[bool]:
    """The update paths `--compile` times: eager (False) and/or compiled (True); `auto` as a
    full-length run (the ogbench suite's 1.5M steps) on `device` would update."""
    from harness.run.compile import wants_compile

    if choice == "auto":
        return [wants_compile("auto", FULL_LENGTH_UPDATES, device.type)]
    return {"on": [True], "off": [False], "both": [False, True]}[choice]


def bench_training(settings: BenchSettings, device: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """updates/s (eager and/or compiled, in each of `settings.precisions`), compile time, GFLOP/s
    and sampler batches/s at the paper's shapes. The top-level figures are the first precision's;
    `by_precision` holds every precision's."""
    from algorithms import registry
    from algorithms.base import EnvSpec
    from algorithms.compiled import use_compiled_update
    from algorithms.precision import use_precision

    method = registry.get(settings.method)
    config = bench_config(method, settings.config, settings.overrides)
    spec = EnvSpec(**PAPER_SHAPES)
    seeds: int | list[int] = 0 if settings.seeds == 1 else list(range(settings.seeds))
    stack = () if settings.seeds == 1 else (settings.seeds,)
    buffer = synthetic_buffer(spec, device=device)

    def make_agent(precision: str) -> Any:
        agent = registry.create(method, spec, config, device=device, seed=seeds)
        use_precision(agent, precision)
        return agent

    counted = make_agent(settings.precisions[0])
    n_params = sum(p.numel() for p in counted.parameters() if p.requires_grad)
    say(f"{method.name}: {n_params / 1e6:.2f}M trainable parameters, batch {config.batch_size}, {device}")
    steppers = {}
    for precision in settings.precisions:
        for compiled in compile_modes(settings.compile, device):
            agent = make_agent(precision)
            if compiled:
                use_compiled_update(agent)
                say(
                    f"compiling the {precision} update (minutes on a few CPU cores the first time, seconds from the cache)"
                )
            steppers[precision, compiled] = step = TrainingStep(
                agent, buffer, config.batch_size, stack, settings.seeds, device
            )
            for _ in range(settings.warmup):
                step()
    timings = time_alternately(steppers, settings.steps, settings.repeats, device, say, label=path_label)
    flops = update_flops(counted, buffer.sample(config.batch_size, stack=stack))
    sampler_rate = None
    if settings.sampler_batches:
        say(f"timing {settings.sampler_batches} sampler batches")
        sampler_rate = _rate(
            settings.sampler_batches, lambda: buffer.sample(config.batch_size, stack=stack), device
        )
    by_precision = {p: precision_figures(timings, p, flops, settings.seeds) for p in settings.precisions}
    return {
        "method": method.name,
        "config": settings.config,
        "precision": settings.precisions[0],
        "compiled": (settings.precisions[0], True) in timings,
        "hidden_dims": list(getattr(config, "hidden_dims", [])),
        "num_critics": getattr(config, "num_critics", None),
        "batch_size": config.batch_size,
        "shapes": dict(PAPER_SHAPES),
        "seeds": settings.seeds,
        "parameters": n_params,
        "steps": settings.steps,
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        **by_precision[settings.precisions[0]],
        "gflop_per_update": flops / 1e9,
        "sampler_batches_per_s": sampler_rate,
        "by_precision": by_precision,
    }


def bench_evaluation(settings: BenchSettings, device: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Evaluation episodes/s on a real task with the untrained policy."""
    import suites
    from algorithms import registry
    from algorithms.precision import use_precision
    from harness.run.envs import make_env, make_eval_envs
    from harness.run.evaluate import default_eval_envs, episode_seeds, evaluate
    from harness.run.trainer import env_spec_of

    episodes = settings.eval_episodes
    n_envs = settings.eval_envs or default_eval_envs(episodes)
    task = suites.get_suite("ogbench").task(settings.eval_task)
    env = make_env(task.task)
    spec = env_spec_of(env, task)
    method = registry.get(settings.method)
    config = bench_config(method, settings.config, settings.overrides)
    agent = registry.create(method, spec, config, device=device, seed=0)
    use_precision(agent, settings.precisions[0])
    agent.eval()
    workers = settings.eval_workers
    say(f"evaluating {episodes} episodes of {task.task} on {n_envs} environment(s), {workers} worker(s)")
    envs = make_eval_envs(task.task, n_envs, workers=workers, first=env)
    seeds = episode_seeds(0, 0, 2, n=episodes)
    try:
        start = time.perf_counter()
        result = evaluate(agent, envs, episodes=episodes, seeds=seeds)
        elapsed = time.perf_counter() - start
    finally:
        envs.close()
    return {
        "eval_task": task.task,
        "eval_episodes": episodes,
        "eval_envs": n_envs,
        "eval_workers": workers,
        "eval_success": result.success,
        "eval_episodes_per_s": episodes / elapsed,
        "eval_env_steps_per_s": result.episode_length * episodes / elapsed,
        "eval_episode_length": result.episode_length,
    }


def run_bench(settings: BenchSettings, *, progress: bool = True) -> list[dict[str, Any]]:
    """Every measurement of `settings`, one JSON-ready dict per method (`--method all`: every
    registered method, in registry order)."""
    import torch

    from algorithms import registry
    from harness.run.trainer import pick_device

    settings.validate()
    methods = registry.names() if settings.method == ALL_METHODS else [settings.method]
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        device = pick_device(settings.device)
        for precision in settings.precisions:
            said = check_here(precision, device)
            if said and progress:
                print(f"bench: {said}", file=sys.stderr, flush=True)
        peaks = {precision: peak_gflops(device, precision) for precision in settings.precisions}
        return [
            _measure(dataclasses.replace(settings, method=method), device, peaks, progress)
            for method in methods
        ]
    finally:
        torch.set_num_threads(threads)


def _measure(settings: BenchSettings, device: Any, peaks: dict[str, float], progress: bool) -> dict[str, Any]:
    import torch

    def say(message: str) -> None:
        if progress:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    load = os.getloadavg()
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1m": load[0],
    }
    result.update(bench_training(settings, device, say))
    for precision, figures in result["by_precision"].items():
        figures["peak_gflop_per_s"] = peaks[precision]
        figures["peak_share"] = figures["gflop_per_s"] / peaks[precision]
    result.update(
        peak_gflop_per_s=peaks[result["precision"]],
        peak_share=result["by_precision"][result["precision"]]["peak_share"],
    )
    if settings.eval_episodes:
        result.update(bench_evaluation(settings, device, say))
    return result


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.args import parse_assignments

    settings = BenchSettings(
        method=args.method,
        config=args.config,
        device=args.device,
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.repeats,
        seeds=args.seeds,
        sampler_batches=args.sampler_batches,
        eval_episodes=args.eval_episodes,
        eval_envs=args.eval_envs,
        eval_workers=args.eval_workers,
        eval_task=args.eval_task,
        threads=args.threads,
        overrides=parse_assignments(args.set, "--set"),
        compile=args.compile,
        precisions=tuple(p.strip() for p in args.precision.split(",")),
    )
    results = run_bench(settings, progress=not args.no_progress)
    if args.json:
        print(json.dumps(results if settings.method == ALL_METHODS else results[0]))
    elif settings.method == ALL_METHODS:
        print(format_table(results))
    else:
        print(format_result(results[0]))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="updates/s (eager and compiled), GFLOP/s, sampler batches/s and evaluation episodes/s here",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--method",
        required=True,
        help="registry name (see `flowarena methods`), or all: one table of every method",
    )
    p.add_argument(
        "--config", default="paper", choices=CONFIGS, help="paper (default), medium (3 x 256) or small"
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=BENCH_COMPILE,
        help="time the compiled update (on), the eager one (off), both back to back, or auto (the "
        "default): the one a full-length run on this device uses",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        metavar="P[,P...]",
        help="precision of the products: fp32 (default), tf32 or bf16, or several back to back "
        "(fp32,bf16: the first is the main column, the others are compared with it)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=20, help="timed updates (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates first (default 3)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of --steps timed updates, the best counts; with --compile both the two paths take "
        "turns in each round (default 1)",
    )
    p.add_argument("--seeds", type=int, default=1, help="stacked seeds per update (default 1)")
    p.add_argument("--sampler-batches", type=int, default=200, help="timed sampler batches (0: skip)")
    p.add_argument("--eval-episodes", type=int, default=10, help="evaluation episodes (0: skip)")
    p.add_argument("--eval-envs", type=int, help="environments in lockstep (default: the training default)")
    p.add_argument(
        "--eval-workers", type=int, default=0, help="worker processes stepping the environments (default 0)"
    )
    p.add_argument("--eval-task", default=DEFAULT_EVAL_TASK, help="OGBench task of the evaluation")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_bench)
