"""One run: (method, task, seed, config) -> records.

The offline phase trains on the dataset, evaluates on a schedule and at its end, logs
training metrics, checkpoints on a schedule and at the end. Running the same command again
resumes from the last checkpoint: rows written after that checkpoint are dropped and
recomputed, so the records equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import suites
from algorithms import registry
from algorithms.base import Agent, EnvSpec, is_finite_metrics
from harness import records
from harness.data import OfflineData, ReplayBuffer, make_env
from harness.errors import UserError
from harness.evaluate import EvalResult, derive_seed, episode_seeds, evaluate

CHECKPOINT_FORMAT = 1
_stop = threading.Event()


def request_stop() -> None:
    """Ask the running training loop to checkpoint at the next step boundary and return
    "preempted" (safe to call from a signal handler, e.g. on Slurm preemption)."""
    _stop.set()


def clear_stop() -> None:
    _stop.clear()


@dataclass
class Budget:
    offline_steps: int = 1_000_000
    online_steps: int = 0
    eval_interval: int = 50_000
    eval_episodes: int = 50
    log_interval: int = 5_000
    checkpoint_interval: int = 50_000

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("offline_steps", "online_steps") else 1
            if not isinstance(value, int) or value < minimum:
                raise UserError(
                    f"--{f.name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}"
                )


@dataclass
class RunSpec:
    """Everything that defines a run. `overrides` are the user's config changes (they name
    the variant); the suite supplies per-domain settings and hyperparameters."""

    method: str
    task: str
    seed: int
    out: str = "results"
    sweep: str = "default"
    suite: str = "ogbench"
    overrides: dict[str, Any] = field(default_factory=dict)
    dataset_dir: str | None = None
    budget: Budget = field(default_factory=Budget)
    device: str = "auto"
    eval_params: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ResolvedRun:
    spec: RunSpec
    method: registry.Method
    config: Any
    task: suites.TaskSettings
    variant: str
    path: Path

    def record_spec(self) -> dict[str, Any]:
        """spec.json: all that is needed to rerun."""
        return {
            "method": self.method.name,
            "variant": self.variant,
            "task": self.task.task,
            "domain": self.task.domain,
            "seed": self.spec.seed,
            "sweep": self.spec.sweep,
            "suite": self.spec.suite,
            "overrides": {k: _jsonable(v) for k, v in self.spec.overrides.items()},
            "config": {k: _jsonable(v) for k, v in dataclasses.asdict(self.config).items()},
            "task_settings": {k: _jsonable(v) for k, v in dataclasses.asdict(self.task).items()},
            "budget": dataclasses.asdict(self.spec.budget),
            "eval_params": self.spec.eval_params,
            "dataset_dir": self.spec.dataset_dir,
            "code_version": records.code_version(),
            "packages": records.package_versions(),
        }


IDENTITY_KEYS = ("method", "variant", "task", "seed", "config", "task_settings", "budget", "eval_params")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def variant_name(method: str, overrides: dict[str, Any]) -> str:
    """`qam[inv_temp=3]`: the method plus the overrides that change its config."""
    if not overrides:
        return method
    return f"{method}[{','.join(f'{k}={format_value(v)}' for k, v in sorted(overrides.items()))}]"


def eval_params_label(params: dict[str, float]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in sorted(params.items()))


def eval_setting(agent: Agent, given: dict[str, float]) -> tuple[dict[str, float], str]:
    """A grid entry completed by the agent's declared defaults, and its label (which names every
    declared parameter; empty for a method without any)."""
    params = {**agent.eval_params, **given}
    return params, eval_params_label(params)


def resolve(spec: RunSpec) -> ResolvedRun:
    """Method, config and task settings of a run; raises UserError on bad input."""
    spec.budget.validate()
    method = registry.get(spec.method)
    suite = suites.get_suite(spec.suite)
    task = suite.task(spec.task)
    fields = registry.config_fields(method)
    suite_values = {**suite.config_overrides, **suite.method_overrides(method.name, task.task)}
    base = registry.make_config(method, {k: v for k, v in suite_values.items() if k in fields})
    user = registry.parse_overrides(method, spec.overrides)
    config = dataclasses.replace(base, **user)
    changed = {k: v for k, v in user.items() if getattr(base, k) != v}
    variant = variant_name(method.name, changed)
    _check_eval_params(method, spec.eval_params)
    path = records.run_dir_path(spec.out, spec.sweep, variant, task.task, spec.seed)
    return ResolvedRun(spec, method, config, task, variant, path)


def _check_eval_params(method: registry.Method, grid: list[dict[str, float]]) -> None:
    declared = method.cls.eval_params
    for params in grid:
        for key in params:
            if key not in declared:
                known = ", ".join(declared) or "none"
                raise UserError(f"{method.name} has no evaluation parameter {key!r} (it declares: {known})")


def evaluate_grid(
    agent: Agent, envs: list, *, seed: int, step: int, episodes: int, grid: list[dict[str, float]]
) -> list[tuple[str, EvalResult]]:
    """Evaluate each eval-parameter setting. Episode seeds and the acting noise depend only on
    (run seed, step, setting), so evaluating a setting again later gives the same numbers. Unset
    declared parameters take the agent's defaults (`eval_setting`), also in the label."""
    results = []
    agent.eval()
    for given in grid:
        params, label = eval_setting(agent, given)
        key = zlib.crc32(label.encode())
        agent.act_generator.manual_seed(derive_seed(seed, step, key, 1))
        seeds = episode_seeds(seed, step, 2, n=episodes)
        results.append((label, evaluate(agent, envs, episodes=episodes, seeds=seeds, eval_params=params)))
    agent.train()
    return results


def eval_rows(
    results: list[tuple[str, EvalResult]], keys: dict[str, Any], *, step: int, wall_time_s: float
) -> list[dict[str, Any]]:
    """evals rows of `evaluate_grid` results; `keys` holds sweep, method, variant, task, domain,
    seed and phase."""
    return [
        {
            **keys,
            "step": step,
            "success": result.success,
            "return": result.episode_return,
            "episode_length": result.episode_length,
            "n_episodes": result.n_episodes,
            "eval_params": label,
            "wall_time_s": wall_time_s,
        }
        for label, result in results
    ]


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device {requested!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {requested} asked for CUDA, but torch sees no GPU here (use --device auto or cpu)"
        )
    return device


def run(spec: RunSpec, *, progress: bool = True) -> str:
    """Train, evaluate and record one run; resumes when its directory holds a checkpoint.
    Returns the final state (done or diverged), or "preempted" after `request_stop()`.
    Raises UserError on bad input."""
    resolved = resolve(spec)
    run_dir = records.RunDir(resolved.path)
    if run_dir.exists():
        _check_same_run(run_dir, resolved)
        state = run_dir.read_status().get("state")
        if state in records.FINAL_STATES:
            _say(f"{resolved.path}: already {state}, nothing to do", progress)
            return state
    trainer = Trainer(resolved, run_dir, progress=progress)  # loads data: bad input fails here
    if not run_dir.exists():
        run_dir.write_spec(resolved.record_spec())
    try:
        return trainer.run()
    except BaseException as error:
        run_dir.write_status(
            "failed",
            step=trainer.step,
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(),
        )
        raise


def _check_same_run(run_dir: records.RunDir, resolved: ResolvedRun) -> None:
    saved = run_dir.read_spec()
    wanted = resolved.record_spec()
    differing = [k for k in IDENTITY_KEYS if saved.get(k) != wanted.get(k)]
    if differing:
        raise UserError(
            f"{run_dir.path} holds a run with a different {', '.join(differing)}; "
            f"use another --out or --sweep, or move that directory away (nothing was changed)"
        )


def _say(message: str, enabled: bool = True) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)


class Trainer:
    def __init__(self, resolved: ResolvedRun, run_dir: records.RunDir, *, progress: bool = True) -> None:
        self.resolved, self.run_dir, self.progress = resolved, run_dir, progress
        spec, task, config = resolved.spec, resolved.task, resolved.config
        self.budget = spec.budget
        self.seed = spec.seed
        self.device = pick_device(spec.device)
        self.env = make_env(task.task)
        self.data = OfflineData(
            task.task, spec.dataset_dir, self.env, sparse=task.sparse, shard_dir=task.shard_dir
        )
        transitions = self.data.load(self.data.shard_for_step(1))
        self.env_spec = EnvSpec(
            obs_dim=self.env.observation_space.shape[-1],
            action_dim=self.env.action_space.shape[-1],
            horizon=task.horizon,
            discount=task.discount,
        )
        self.agent: Agent = registry.create(
            resolved.method, self.env_spec, config, device=self.device, seed=self.seed
        )
        capacity = len(transitions["observations"]) + self.budget.online_steps
        self.buffer = ReplayBuffer(
            transitions,
            horizon=task.horizon,
            discount=task.discount,
            device=self.device,
            seed=self.seed,
            capacity=capacity,
        )
        self.eval_envs: list = [self.env]  # reset with a fixed seed before every episode
        self.step = 0
        self.checkpoint_step = -1
        self.elapsed_s = 0.0
        self.pending_train_rows: list[dict[str, Any]] = []
        self.row_keys = {
            "sweep": spec.sweep,
            "method": resolved.method.name,
            "variant": resolved.variant,
            "task": task.task,
            "seed": self.seed,
        }

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> str:
        self.restore()
        self.run_dir.write_status("running", step=self.step, phase="offline", started_at=time.time())
        budget = self.budget
        start_time = time.perf_counter() - self.elapsed_s
        bar = tqdm(
            total=budget.offline_steps,
            initial=self.step,
            desc=f"{self.resolved.variant} {self.resolved.task.task} seed{self.seed}",
            unit="step",
            disable=not self.progress,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        with bar:
            while self.step < budget.offline_steps:
                self.step += 1
                self.rotate_shard()
                metrics = self.agent.update(self.buffer.sample(self.resolved.config.batch_size))
                self.elapsed_s = time.perf_counter() - start_time
                finite, bad_metric = is_finite_metrics(metrics)
                if not finite:
                    return self.diverged(bad_metric, metrics[bad_metric])
                if self.step % budget.log_interval == 0:
                    self.log_train(metrics)
                    bar.set_postfix(loss=f"{metrics['loss']:.3g}", refresh=False)
                if self.step % budget.eval_interval == 0 or self.step == budget.offline_steps:
                    success = self.evaluate()
                    bar.set_postfix(loss=f"{metrics['loss']:.3g}", success=f"{success:.2f}", refresh=False)
                if self.step % budget.checkpoint_interval == 0 or self.step == budget.offline_steps:
                    self.checkpoint()
                bar.update(1)
                if _stop.is_set():
                    return self.preempted()
        self.flush_train_rows()
        self.run_dir.write_status("done", step=self.step, phase="offline", finished_at=time.time())
        return "done"

    def rotate_shard(self) -> None:
        shard = self.data.shard_for_step(self.step)
        if shard != self.data.current:
            self.buffer.load_offline(self.data.load(shard), self.buffer.capacity)

    def preempted(self) -> str:
        if self.checkpoint_step != self.step:
            self.checkpoint()
        self.run_dir.write_status("pending", step=self.step, note=f"preempted at step {self.step}; will resume")
        _say(f"stopped at step {self.step} on request; checkpoint saved", self.progress)
        return "preempted"

    def diverged(self, metric: str, value: Any) -> str:
        self.flush_train_rows()
        self.run_dir.write_status(
            "diverged",
            step=self.step,
            metric=metric,
            error=f"{metric} became {value} at step {self.step}",
            finished_at=time.time(),
        )
        _say(f"diverged: {metric} became {value} at step {self.step}", self.progress)
        return "diverged"

    # --- records ----------------------------------------------------------------------
    def log_train(self, metrics: dict[str, Any], phase: str = "offline") -> None:
        row = {**self.row_keys, "phase": phase, "step": self.step, "wall_time_s": self.elapsed_s}
        self.pending_train_rows.append({**row, **metrics})

    def flush_train_rows(self) -> None:
        self.run_dir.append_rows("train", self.pending_train_rows)
        self.pending_train_rows = []

    def evaluate(self, phase: str = "offline") -> float:
        """Evaluate every eval-parameter setting; returns the success of the first."""
        results = evaluate_grid(
            self.agent,
            self.eval_envs,
            seed=self.seed,
            step=self.step,
            episodes=self.budget.eval_episodes,
            grid=self.resolved.spec.eval_params or [{}],
        )
        keys = {**self.row_keys, "domain": self.resolved.task.domain, "phase": phase}
        rows = eval_rows(results, keys, step=self.step, wall_time_s=self.elapsed_s)
        self.flush_train_rows()
        self.run_dir.append_rows("evals", rows)
        return rows[0]["success"]

    # --- checkpoints --------------------------------------------------------------------
    def checkpoint(self) -> None:
        self.flush_train_rows()
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
        }
        records.atomic_write(self.run_dir.ckpt_path, lambda tmp: torch.save(state, tmp))
        self.checkpoint_step = self.step
        self.run_dir.write_status("running", step=self.step, checkpoint_step=self.step)

    def restore(self) -> None:
        """Continue from the checkpoint, if any, dropping rows written after it."""
        path = self.run_dir.ckpt_path
        checkpoint_step = 0
        if path.exists():
            try:
                state = torch.load(path, map_location=self.device, weights_only=True)
            except Exception as error:
                raise UserError(
                    f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); move it away to "
                    f"restart this run from scratch (its evals.parquet is kept)"
                ) from None
            self.agent.load_state_dict(state["agent"])
            self.buffer.load_state_dict(state["buffer"])
            checkpoint_step = self.step = state["step"]
            self.elapsed_s = state["elapsed_s"]
            _say(f"resuming {self.run_dir.path} from step {self.step}", self.progress)
        for kind in ("evals", "train"):
            self.run_dir.truncate_rows(checkpoint_step, kind)
