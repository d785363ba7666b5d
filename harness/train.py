"""One run: (method, task, seed, config) -> records.

The offline phase trains on the dataset, evaluates on a schedule and at its end, logs
training metrics, checkpoints on a schedule and at the end. The online phase (`online_steps` > 0)
follows: the agent acts in its own environment (harness/online.py), each step's transition
joins the replay buffer (dataset + online transitions), and from online step
`online_warmup_steps` on every environment step makes `utd_ratio` updates. Step numbers
continue: online step j is recorded at step offline_steps + j, with phase `online` in evals and
train rows, on the same evaluation, logging and checkpoint schedule. With a sharded (100M)
dataset the shard in the buffer at the switch stays there for the whole online phase.

Running the same command again resumes from the last checkpoint, in either phase: rows written
after that checkpoint are dropped and recomputed, so the records equal those of an
uninterrupted run.
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
from harness.online import Explorer

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
    online_warmup_steps: int = 5_000  # updates begin at this online step (the reference's start_training)
    utd_ratio: int = 1  # updates per online environment step

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("offline_steps", "online_steps", "online_warmup_steps") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise UserError(
                    f"--{f.name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}"
                )
        if 0 < self.online_steps < self.online_warmup_steps:
            raise UserError(
                f"--online-warmup-steps {self.online_warmup_steps} exceeds --online-steps "
                f"{self.online_steps}: the online phase would never update the agent; pass a "
                f"smaller --online-warmup-steps (the protocol's is 5000)"
            )

    @property
    def total_steps(self) -> int:
        return self.offline_steps + self.online_steps


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
    # Override keys named in the variant even where they equal the suite's value, so that a sweep's
    # variant (e.g. a grid's qam[inv_temp=1]) has one name on every task.
    variant_keys: list[str] = field(default_factory=list)


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


def eval_setting(declared: dict[str, float], given: dict[str, float]) -> tuple[dict[str, float], str]:
    """A grid entry completed by the method's declared defaults, and its label (which names every
    declared parameter; empty for a method without any)."""
    params = {**declared, **given}
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
    changed = {k: v for k, v in user.items() if getattr(base, k) != v or k in spec.variant_keys}
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
    labels = [eval_setting(declared, params)[1] for params in grid]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"--eval-param gives the setting {', '.join(repeated)} more than once")


def evaluate_grid(
    agent: Agent, envs: list, *, seed: int, step: int, episodes: int, grid: list[dict[str, float]]
) -> list[tuple[str, EvalResult]]:
    """Evaluate each eval-parameter setting. Episode seeds and the acting noise depend only on
    (run seed, step, setting), so evaluating a setting again later gives the same numbers. Unset
    declared parameters take the agent's defaults (`eval_setting`), also in the label."""
    results = []
    agent.eval()
    for given in grid:
        params, label = eval_setting(agent.eval_params, given)
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
        self.explorer: Explorer | None = None  # the online phase's acting, once it started
        self.online_state: dict[str, Any] | None = None  # from a checkpoint inside the online phase
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
    @property
    def phase(self) -> str:
        return "online" if self.step > self.budget.offline_steps else "offline"

    def run(self) -> str:
        self.restore()
        self.run_dir.write_status("running", step=self.step, phase=self.phase, started_at=time.time())
        start_time = time.perf_counter() - self.elapsed_s
        bar = tqdm(
            total=self.budget.total_steps,
            initial=self.step,
            desc=f"{self.resolved.variant} {self.resolved.task.task} seed{self.seed}",
            unit="step",
            disable=not self.progress,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        with bar:
            state = self.offline_phase(bar, start_time)
            if state is None and self.step < self.budget.total_steps:
                state = self.online_phase(bar, start_time)
        if state is not None:
            return state
        self.flush_train_rows()
        self.run_dir.write_status(
            "done", step=self.step, phase=self.phase, finished_at=time.time(), **self.online_status()
        )
        return "done"

    def offline_phase(self, bar: tqdm, start_time: float) -> str | None:
        """Gradient steps on the dataset up to `offline_steps`; returns a final state when the
        run stops early (diverged, preempted), else None."""
        budget = self.budget
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
        return None

    def online_phase(self, bar: tqdm, start_time: float) -> str | None:
        """Environment steps up to `online_steps`, each followed by `utd_ratio` updates from
        online step `online_warmup_steps` on; returns a final state when the run stops early."""
        budget = self.budget
        explorer = self.start_online()
        self.run_dir.write_status("running", step=self.step, phase="online", **self.online_status())
        metrics: dict[str, Any] = {}
        while self.step < budget.total_steps:
            self.step += 1
            explorer.step()
            if self.step - budget.offline_steps >= budget.online_warmup_steps:
                for _ in range(budget.utd_ratio):
                    metrics = self.agent.update(self.buffer.sample(self.resolved.config.batch_size))
                    finite, bad_metric = is_finite_metrics(metrics)
                    if not finite:
                        return self.diverged(bad_metric, metrics[bad_metric])
            self.elapsed_s = time.perf_counter() - start_time
            if self.step % budget.log_interval == 0:
                self.log_train({**metrics, **explorer.metrics()}, phase="online")
            if self.step % budget.eval_interval == 0 or self.step == budget.total_steps:
                success = self.evaluate(phase="online")
                bar.set_postfix(buffer=self.buffer.size, success=f"{success:.2f}", refresh=False)
            if self.step % budget.checkpoint_interval == 0 or self.step == budget.total_steps:
                self.checkpoint()
            bar.update(1)
            if _stop.is_set():
                return self.preempted()
        return None

    def start_online(self) -> Explorer:
        """The online phase's acting, in an environment of its own: fresh, or as checkpointed.
        The buffer keeps the shard it holds at the switch (no more rotation). A method with
        eval-time parameters acts with the first setting of the eval grid."""
        self.use_shard(self.data.shard_for_step(self.budget.offline_steps))
        explorer = Explorer(
            make_env(self.resolved.task.task),
            self.agent,
            self.buffer,
            seed=self.seed,
            sparse=self.resolved.task.sparse,
            eval_params={**self.agent.eval_params, **(self.resolved.spec.eval_params or [{}])[0]},
        )
        if self.online_state is None:
            explorer.start()
        else:
            explorer.load_state_dict(self.online_state)
            self.online_state = None
        self.explorer = explorer
        return explorer

    def online_status(self) -> dict[str, Any]:
        """status.json fields of the online phase: the replay buffer's size."""
        if self.phase != "online":
            return {}
        if self.explorer is None and self.online_state is not None:  # resumed at the very end
            saved = self.online_state
            return {"buffer_size": saved["offline_size"] + len(saved["transitions"]["actions"])}
        return {"buffer_size": self.buffer.size}

    def rotate_shard(self) -> None:
        self.use_shard(self.data.shard_for_step(self.step))

    def use_shard(self, shard: int) -> None:
        if shard != self.data.current:
            transitions = self.data.load(shard)
            capacity = len(transitions["observations"]) + self.budget.online_steps
            self.buffer.load_offline(transitions, max(capacity, self.buffer.capacity))

    def preempted(self) -> str:
        if self.checkpoint_step != self.step:
            self.checkpoint()
        self.run_dir.write_status(
            "pending", step=self.step, note=f"preempted at step {self.step}; will resume"
        )
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
            "phase": self.phase,
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "online": self.explorer.state_dict() if self.explorer is not None else None,
        }
        records.atomic_write(self.run_dir.ckpt_path, lambda tmp: torch.save(state, tmp))
        self.checkpoint_step = self.step
        self.run_dir.write_status(
            "running", step=self.step, checkpoint_step=self.step, **self.online_status()
        )

    def restore(self) -> None:
        """Continue from the checkpoint, if any, dropping rows written after it."""
        path = self.run_dir.ckpt_path
        checkpoint_step = 0
        if path.exists():
            try:
                # on the CPU: generator states must be CPU tensors; load_state_dict moves the rest
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:
                raise UserError(
                    f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); move it away to "
                    f"restart this run from scratch (its evals.parquet is kept)"
                ) from None
            self.agent.load_state_dict(state["agent"])
            self.buffer.load_state_dict(state["buffer"])
            checkpoint_step = self.step = state["step"]
            self.elapsed_s = state["elapsed_s"]
            self.online_state = state.get("online")
            _say(f"resuming {self.run_dir.path} from step {self.step}", self.progress)
        for kind in ("evals", "train"):
            self.run_dir.truncate_rows(checkpoint_step, kind)
