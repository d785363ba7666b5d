"""`flowarena bench`: how fast one method trains and evaluates here.

    flowarena bench --method qam [--config paper|small] [--device auto] [--steps 20] [--seeds 1] [--json]

Measures, for the method's update at a fixed network and batch configuration:

- updates/s: the training loop's step (sample a batch from the replay buffer on the device, one
  update, its metrics into the device-side NaN tracker, read every 100 steps as in training),
  timed over `--steps` steps after `--warmup` steps, the device synchronised at both ends;
  with `--seeds S` one step updates S stacked seeds, and `seed_updates_per_s` = S x updates/s
- GFLOP/s: floating-point operations of one update counted by torch's FlopCounterMode (matrix
  products; elementwise work is not counted) times updates/s
- sampler batches/s: the replay buffer's chunk sampler alone
- evaluation episodes/s: `--eval-episodes` episodes of a real OGBench task (`--eval-task`) with
  the untrained policy, `--eval-envs` environments in lockstep, one batched policy call per chunk

`--config paper` is the method's defaults (4 x 512 networks, 10 critics, batch 256) on the QAM
paper's stated shapes: observations of 37, actions of 5, chunks of 5 (cube-double's), on a
synthetic dataset of random transitions (the update's cost does not depend on the data).
`--config small` is the smoke suite's TINY config on the same shapes. The evaluation agent is
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

from harness.errors import UserError

CONFIGS = ("paper", "small")
PAPER_SHAPES = {"obs_dim": 37, "action_dim": 5, "horizon": 5, "discount": 0.99}
DEFAULT_EVAL_TASK = "cube-double-play-singletask-task1-v0"
SYNTHETIC_TRANSITIONS = 20_000
SYNTHETIC_EPISODE_LENGTH = 1_000


@dataclass
class BenchSettings:
    method: str
    config: str = "paper"
    device: str = "auto"
    steps: int = 20
    warmup: int = 3
    seeds: int = 1
    sampler_batches: int = 200
    eval_episodes: int = 10
    eval_envs: int | None = None  # None: the training default (harness.run.evaluate.default_eval_envs)
    eval_workers: int = 0  # worker processes stepping the environments (0: this process)
    eval_task: str = DEFAULT_EVAL_TASK
    threads: int | None = None
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if self.config not in CONFIGS:
            raise UserError(f"--config must be one of {', '.join(CONFIGS)}, got {self.config!r}")
        minimums = {
            "steps": 1,
            "warmup": 0,
            "seeds": 1,
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
    """The method's config at `paper` (its defaults) or `small` (the smoke suite's TINY)."""
    from algorithms import registry
    from suites.smoke import TINY

    fields = registry.config_fields(method)
    values = {k: v for k, v in TINY.items() if k in fields} if config == "small" else {}
    return registry.make_config(method, {**values, **overrides})


def synthetic_buffer(spec: Any, *, device: Any, seed: int = 0) -> Any:
    """A replay buffer of random transitions in episodes of SYNTHETIC_EPISODE_LENGTH steps."""
    import numpy as np

    from harness.run.data import ReplayBuffer

    rng = np.random.default_rng(seed)
    n = SYNTHETIC_TRANSITIONS
    observations = rng.normal(size=(n, spec.obs_dim)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    terminals[SYNTHETIC_EPISODE_LENGTH - 1 :: SYNTHETIC_EPISODE_LENGTH] = 1.0
    data = {
        "observations": observations,
        "actions": rng.uniform(-1, 1, size=(n, spec.action_dim)).astype(np.float32),
        "rewards": -(rng.uniform(size=n) < 0.9).astype(np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": terminals,
        "next_observations": np.roll(observations, -1, axis=0),
    }
    return ReplayBuffer(data, horizon=spec.horizon, discount=spec.discount, device=device, seed=seed)


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(count: int, fn: Callable[[], Any], device: Any) -> float:
    """Calls of `fn` per second over `count` calls."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        fn()
    _synchronize(device)
    return count / (time.perf_counter() - start)


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose global module hooks break
    `torch.autograd.grad` inside the counted code (QAM's lean adjoint, QGF's guidance): every
    count goes to the "Global" total, the only one reported here."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def update_flops(agent: Any, batch: Any) -> int:
    """Floating-point operations of one update (forward and backward), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        agent.update(batch)
    return int(counter.get_total_flops())


def bench_training(settings: BenchSettings, device: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """updates/s, GFLOP/s and sampler batches/s at the paper's shapes."""
    from algorithms import registry
    from algorithms.base import EnvSpec
    from harness.run.members import DIVERGENCE_CHECK_INTERVAL, DivergenceTracker

    method = registry.get(settings.method)
    config = bench_config(method, settings.config, settings.overrides)
    spec = EnvSpec(**PAPER_SHAPES)
    seeds: int | list[int] = 0 if settings.seeds == 1 else list(range(settings.seeds))
    stack = () if settings.seeds == 1 else (settings.seeds,)
    agent = registry.create(method, spec, config, device=device, seed=seeds)
    buffer = synthetic_buffer(spec, device=device)
    n_params = sum(p.numel() for p in agent.parameters() if p.requires_grad)
    say(f"{method.name}: {n_params / 1e6:.2f}M trainable parameters, batch {config.batch_size}, {device}")

    tracker = DivergenceTracker(settings.seeds, device)
    steps = iter(range(1, 1 << 62))

    def step() -> None:  # the training loop's: metrics stay on the device between checks
        index = next(steps)
        tracker.record(index, agent.update(buffer.sample(config.batch_size, stack=stack)))
        if index % DIVERGENCE_CHECK_INTERVAL == 0:
            tracker.check()

    for _ in range(settings.warmup):
        step()
    say(f"timing {settings.steps} updates")
    updates_per_s = _rate(settings.steps, step, device)
    flops = update_flops(agent, buffer.sample(config.batch_size, stack=stack))
    say(f"{updates_per_s:.3g} updates/s; timing {settings.sampler_batches} sampler batches")
    sampler_rate = None
    if settings.sampler_batches:
        sampler_rate = _rate(
            settings.sampler_batches, lambda: buffer.sample(config.batch_size, stack=stack), device
        )
    return {
        "method": method.name,
        "config": settings.config,
        "hidden_dims": list(getattr(config, "hidden_dims", [])),
        "num_critics": getattr(config, "num_critics", None),
        "batch_size": config.batch_size,
        "shapes": dict(PAPER_SHAPES),
        "seeds": settings.seeds,
        "parameters": n_params,
        "steps": settings.steps,
        "warmup": settings.warmup,
        "updates_per_s": updates_per_s,
        "seed_updates_per_s": updates_per_s * settings.seeds,
        "ms_per_update": 1000.0 / updates_per_s,
        "gflop_per_update": flops / 1e9,
        "gflop_per_s": flops * updates_per_s / 1e9,
        "sampler_batches_per_s": sampler_rate,
    }


def bench_evaluation(settings: BenchSettings, device: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Evaluation episodes/s on a real task with the untrained policy."""
    import suites
    from algorithms import registry
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


def run_bench(settings: BenchSettings, *, progress: bool = True) -> dict[str, Any]:
    """Every measurement of `settings`, as one JSON-ready dict."""
    import torch

    from harness.run.trainer import pick_device

    settings.validate()
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _measure(settings, pick_device(settings.device), progress)
    finally:
        torch.set_num_threads(threads)


def _measure(settings: BenchSettings, device: Any, progress: bool) -> dict[str, Any]:
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
    if settings.eval_episodes:
        result.update(bench_evaluation(settings, device, say))
    return result


def format_result(result: dict[str, Any]) -> str:
    """The measurements as aligned lines for a terminal."""
    lines = [
        f"{result['method']} ({result['config']} config: hidden {result['hidden_dims']}, "
        f"{result['num_critics']} critics, batch {result['batch_size']}, seeds {result['seeds']}) "
        f"on {result['device']} ({result['threads']} threads, load {result['load_average_1m']:.2f})",
        f"  updates/s           {result['updates_per_s']:.4g} ({result['ms_per_update']:.4g} ms per update)",
        f"  seed-updates/s      {result['seed_updates_per_s']:.4g}",
        f"  GFLOP per update    {result['gflop_per_update']:.4g}",
        f"  GFLOP/s             {result['gflop_per_s']:.4g}",
    ]
    if result.get("sampler_batches_per_s") is not None:
        lines.append(f"  sampler batches/s   {result['sampler_batches_per_s']:.4g}")
    if "eval_episodes_per_s" in result:
        lines.append(
            f"  eval episodes/s     {result['eval_episodes_per_s']:.4g} ({result['eval_episodes']} episodes, "
            f"{result['eval_envs']} envs, {result['eval_workers']} workers, "
            f"{result['eval_env_steps_per_s']:.4g} env steps/s)"
        )
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.args import parse_assignments

    settings = BenchSettings(
        method=args.method,
        config=args.config,
        device=args.device,
        steps=args.steps,
        warmup=args.warmup,
        seeds=args.seeds,
        sampler_batches=args.sampler_batches,
        eval_episodes=args.eval_episodes,
        eval_envs=args.eval_envs,
        eval_workers=args.eval_workers,
        eval_task=args.eval_task,
        threads=args.threads,
        overrides=parse_assignments(args.set, "--set"),
    )
    result = run_bench(settings, progress=not args.no_progress)
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="updates/s, GFLOP/s, sampler batches/s and evaluation episodes/s of one method here",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", required=True, help="registry name (see `flowarena methods`)")
    p.add_argument("--config", default="paper", choices=CONFIGS, help="paper (default) or small")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=20, help="timed updates (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates first (default 3)")
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
